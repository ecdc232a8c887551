"""What `foldermirror status` prints: the daemon's `status --json` document as a table.

Runs in the `status` command; the document itself comes from read_model.DaemonView.to_json().
"""

from __future__ import annotations

from typing import Any


# -- rendering (the `status` command) --------------------------------------------------------
def render(snap: dict[str, Any]) -> str:
    head = (f"foldermirror {snap['version']}, pid {snap['pid']}, up {duration(snap['uptime_s'])}, "
            f"{snap['workers']} workers, config {snap['config']}")
    columns = ("FOLDER", "STATE", "PENDING", "IN FLIGHT", "LAG", "MIRRORED", "BYTES", "DELETED", "FAILED",
               "WATCHES")
    rows = [[f["name"], f["state"].replace("_", " "), f"{f['pending']:,}", f"{f['in_flight']:,}",
             duration(f["lag_s"]), f"{f['files_mirrored']:,}", size(f["bytes_mirrored"]), f"{f['deleted']:,}",
             f"{f['failed']:,}", "complete" if f["watches_complete"] else "INCOMPLETE"] for f in snap["folders"]]
    widths = [max(len(r[i]) for r in [list(columns), *rows]) for i in range(len(columns))]
    right = {2, 3, 5, 7, 8}

    def line(cells: list[str]) -> str:
        return "  ".join(c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in enumerate(zip(cells, widths, strict=True)))

    out = [head, "", line(list(columns)).rstrip(), *(line(r).rstrip() for r in rows)]
    notes = []
    for f in snap["folders"]:
        c = f["catch_up"]
        if c is not None:
            total = max(c["to_copy"], c["files_mirrored"])
            walk = "" if c["walk_done"] else ", still comparing"
            done = f"{c['files_mirrored']:,} of {total:,} files copied{walk}"
            notes.append(f"{f['name']}: catching up ({c['reason']}): {done}")
        for problem in f["problems"]:
            notes.append(f"{f['name']}: {problem}")
        link = f.get("link")
        if link is not None and link["state"] == "up":
            rtt = f", round trip {link['rtt_ms']:g} ms" if link["rtt_ms"] is not None else ""
            again = f", {link['reconnects']} reconnects" if link["reconnects"] else ""
            notes.append(f"{f['name']}: host {link['host']} up for {duration(link['since_s'])}{rtt}{again}")
        elif link is not None and link["state"] == "connecting":
            notes.append(f"{f['name']}: connecting to {link['host']}")
        v = f.get("versions")
        if v is not None:
            oldest = f", oldest {v['oldest']}" if v["oldest"] else ""
            counting = "" if v["counted"] else " (the area is still being counted)"
            notes.append(f"{f['name']}: {v['count']:,} versions kept, {size(v['bytes_kept'])}{oldest}{counting}")
        e = f["last_error"]
        if e is not None:
            notes.append(f"{f['name']}: last error {e['time']} {e['path']}: {e['error']}")
    if notes:
        out += ["", *notes]
    if snap["worker_restarts"] or snap["overflow_rescans"]:
        out += ["", f"worker restarts: {snap['worker_restarts']}, overflow rescans: {snap['overflow_rescans']}"]
    return "\n".join(out)


def duration(seconds: float) -> str:
    if seconds < 1:
        return "0s" if seconds <= 0 else f"{seconds * 1000:.0f}ms"
    s = int(seconds)
    if s < 60:
        return f"{seconds:.1f}s" if seconds < 10 else f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 86400}d{s % 86400 // 3600:02d}h"


def size(n: int) -> str:
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{n} B" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{n} B"
