"""`sync --dry-run`: what a catch-up would do to each target, changing nothing.

The same comparison as the real catch-up (reconcile.diff_tree), with stale temp files
counted instead of removed. A catch-up never replays renames (only live watching sees
them), so a file that looks renamed — an extra target file with the size, mtime and first
64 KiB of a missing one — is listed as a probable rename but counted as the copy and
delete it will be.

`render` prints the plans for people; `ndjson` gives one JSON object per path for scripts
(`sync --dry-run --json`), and `in_sync` is what `--exit-code` answers.
"""

from __future__ import annotations

import json
import os
import stat
from collections.abc import Iterator
from dataclasses import dataclass, field

from foldermirror.catchup.compare import WalkStats, diff_tree
from foldermirror.config import Config, FolderConfig
from foldermirror.paths import Excluder
from foldermirror.tempnames import RESERVED_REASON

VERBS = ("copy", "replace", "update", "conflict", "delete", "keep", "skip")
# What a sync would change (or fail on): a target with only kept extras and skipped specials is as
# close to its source as a catch-up makes it.
CHANGES = frozenset({"copy", "replace", "update", "conflict", "delete"})
_MEANING = {
    "copy": "missing in the target: copied",
    "replace": "differs (content, size, mode or mtime): copied over the target",
    "update": "directory whose mode differs: mode set",
    "conflict": "the target has a different type here and delete: false keeps it: fails",
    "delete": "only in the target: deleted (delete: true)",
    "keep": "only in the target: kept (delete: false)",
    "skip": "FIFO, socket, device or reserved name: not mirrored",
}


@dataclass
class Action:
    verb: str
    path: str
    detail: str = ""
    reason: str = ""           # the comparison's: missing | differs | extra | special | reserved
    kind: str | None = None    # file, directory, symlink, FIFO, socket, device (of the target's entry for
                               # an extra, else the source's); None: unknown (gone, or on a remote target)
    bytes: int | None = None   # a regular file's size (what a copy sends, what a delete frees)


@dataclass
class Plan:
    folder: FolderConfig
    actions: list[Action] = field(default_factory=list)
    renames: list[tuple[str, str]] = field(default_factory=list)   # (old target name, new source name)
    stale_temps: int = 0
    unreadable: list[str] = field(default_factory=list)
    source_missing: bool = False
    unreachable: str | None = None  # a remote target that could not be compared: why

    def count(self, verb: str) -> int:
        return sum(1 for a in self.actions if a.verb == verb)


def plan(config: Config) -> list[Plan]:
    return [plan_folder(f) if f.remote is None else plan_remote(f, config) for f in config.folders]


def plan_remote(f: FolderConfig, config: Config) -> Plan:
    """A remote pair, compared by rsync's own dry run over one ssh connection of its own."""
    from foldermirror.remote.compare import LinkDown, diff_remote
    from foldermirror.remote.links import remote_spec

    p = Plan(f)
    if not os.path.isdir(f.source):
        p.source_missing = True
        return p
    stats = WalkStats()
    excluded = Excluder(f.excludes)
    try:
        for diff in diff_remote(str(f.source), remote_spec(f, config.ssh, sockets=()), sub="", delete=True,
                                excluded=excluded, stats=stats):
            verb = {"extra": "delete" if f.delete else "keep", "missing": "copy"}.get(diff.reason, "replace")
            s = None if diff.reason == "extra" else _lstat(os.path.join(f.source, diff.path))
            p.actions.append(Action(verb, diff.path, reason=diff.reason, kind=_kind_or_none(s), bytes=_size(s)))
    except (LinkDown, OSError) as exc:
        p.unreachable = str(exc)
    p.actions.sort(key=lambda a: a.path)
    return p


def plan_folder(f: FolderConfig) -> Plan:
    """Compare one pair read-only and say what a catch-up would do."""
    p = Plan(f)
    assert f.remote is None
    source, target = str(f.source), str(f.target)
    if not os.path.isdir(source):
        p.source_missing = True
        return p
    stats = WalkStats()
    # delete=True to see extras even when they are kept: worth knowing before turning delete on.
    # Hard links: a name whose mirror is another file than its inode's other names' is listed too.
    links = (lambda inode, path: None) if "hardlinks" in f.preserve else None
    for diff in diff_tree(source, target, Excluder(f.excludes), True, "dry-run", stats=stats, clean_temps=False,
                          preserve=f.preserve, links=links):
        p.actions.append(_action(f, diff.path, diff.reason))
    p.stale_temps = stats.stale_temps
    p.unreadable = list(stats.unreadable or ())
    p.actions.sort(key=lambda a: a.path)
    p.renames = _probable_renames(f, p.actions)
    return p


def _action(f: FolderConfig, path: str, reason: str) -> Action:
    s = _lstat(os.path.join(f.source, path))
    t = _lstat(os.path.join(str(f.target), path))
    a = _verb(f, path, reason, s, t)
    entry = t if reason == "extra" else s
    a.reason, a.kind, a.bytes = reason, _kind_or_none(entry), _size(entry)
    return a


def _verb(f: FolderConfig, path: str, reason: str, s: os.stat_result | None, t: os.stat_result | None) -> Action:
    if reason == "special":
        return Action("skip", path, _kind(s))
    if reason == "reserved":
        return Action("skip", path, f"{_kind(s)}, {RESERVED_REASON}")
    if reason == "extra":
        detail = _kind(t) + (f", {_entries(os.path.join(str(f.target), path))} entries inside" if _isdir(t) else "")
        return Action("delete" if f.delete else "keep", path, detail)
    if reason == "missing" or t is None:
        return Action("copy", path, _describe(s))
    if s is not None and stat.S_IFMT(s.st_mode) != stat.S_IFMT(t.st_mode):
        verb = "replace" if f.delete else "conflict"
        return Action(verb, path, f"{_kind(t)} in the target, {_kind(s)} in the source")
    if reason == "metadata":
        return Action("update", path, "metadata only: " + _metadata_change(s, t))
    if s is not None and _isdir(s):
        return Action("update", path, f"mode {stat.S_IMODE(t.st_mode):o} → {stat.S_IMODE(s.st_mode):o}")
    return Action("replace", path, _describe(s))


def _metadata_change(s: os.stat_result | None, t: os.stat_result) -> str:
    """What differs between two entries whose bytes match: mode, owner, or else attributes."""
    if s is None:
        return "gone meanwhile"
    said = []
    if stat.S_IMODE(s.st_mode) != stat.S_IMODE(t.st_mode):
        said.append(f"mode {stat.S_IMODE(t.st_mode):o} → {stat.S_IMODE(s.st_mode):o}")
    if (s.st_uid, s.st_gid) != (t.st_uid, t.st_gid):
        said.append(f"owner {t.st_uid}:{t.st_gid} → {s.st_uid}:{s.st_gid}")
    return ", ".join(said) or "extended attributes or ACLs"


def _probable_renames(f: FolderConfig, actions: list[Action]) -> list[tuple[str, str]]:
    extras: dict[tuple[int, int, bytes], list[str]] = {}
    for a in actions:
        if a.verb in ("delete", "keep"):
            key = _fingerprint(os.path.join(str(f.target), a.path))
            if key is not None:
                extras.setdefault(key, []).append(a.path)
    out = []
    for a in actions:
        if a.verb == "copy" and extras:
            key = _fingerprint(os.path.join(f.source, a.path))
            if key is not None and extras.get(key):
                out.append((extras[key].pop(0), a.path))
    return out


def _fingerprint(path: str) -> tuple[int, int, bytes] | None:
    """Size, mtime and first 64 KiB of a regular file (mtimes alone collide within a clock tick)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            return None
        return (st.st_size, st.st_mtime_ns, os.read(fd, 65536))
    except OSError:
        return None
    finally:
        os.close(fd)


def _lstat(path: str) -> os.stat_result | None:
    try:
        return os.lstat(path)
    except OSError:
        return None


def _isdir(st: os.stat_result | None) -> bool:
    return st is not None and stat.S_ISDIR(st.st_mode)


def _kind(st: os.stat_result | None) -> str:
    if st is None:
        return "gone"
    mode = st.st_mode
    for test, name in ((stat.S_ISREG, "file"), (stat.S_ISDIR, "directory"), (stat.S_ISLNK, "symlink"),
                       (stat.S_ISFIFO, "FIFO"), (stat.S_ISSOCK, "socket")):
        if test(mode):
            return name
    return "device"


def _kind_or_none(st: os.stat_result | None) -> str | None:
    return None if st is None else _kind(st)


def _size(st: os.stat_result | None) -> int | None:
    return st.st_size if st is not None and stat.S_ISREG(st.st_mode) else None


def _describe(st: os.stat_result | None) -> str:
    if st is not None and stat.S_ISREG(st.st_mode):
        return f"file, {st.st_size:,} bytes"
    return _kind(st)


def _entries(path: str) -> int:
    return sum(len(dirs) + len(files) for _, dirs, files in os.walk(path))


def _show(path: str) -> str:
    """A path as one safe line: names with control characters are shown JSON-quoted."""
    return path if path.isprintable() else json.dumps(path)


def render(plans: list[Plan]) -> str:
    out: list[str] = []
    totals = dict.fromkeys(VERBS, 0)
    for p in plans:
        f = p.folder
        out.append(f"folder {f.name}: {f.source} → {f.target} (delete: {str(f.delete).lower()})")
        if p.source_missing:
            out.append(f"  the source {f.source} does not exist: a catch-up would do nothing here")
            out.append("")
            continue
        if p.unreachable is not None:
            out.append(f"  the target could not be compared: {p.unreachable}")
            out.append("")
            continue
        width = max((len(a.verb) for a in p.actions), default=0)
        for a in p.actions:
            out.append(f"  {a.verb.ljust(width)}  {_show(a.path)}" + (f"  ({a.detail})" if a.detail else ""))
        for old, new in p.renames:
            out.append(f"  probable rename: {_show(old)} → {_show(new)} (same size, mtime and first bytes; "
                       f"copied anew{' and the old name deleted' if f.delete else ''})")
        for rel in p.unreadable:
            out.append(f"  unreadable: {_show(rel or '.')} (cannot be listed, so it is not compared)")
        if p.stale_temps:
            out.append(f"  stale temp files: {p.stale_temps} (removed by the catch-up)")
        counts = {v: p.count(v) for v in VERBS}
        for v, n in counts.items():
            totals[v] += n
        out.append("  " + _summary(counts, len(p.renames)) if p.actions else "  in sync: nothing to do")
        out.append("")
    out.append("total: " + _summary(totals, sum(len(p.renames) for p in plans)))
    out += [f"  {v}: {_MEANING[v]}" for v in VERBS if totals[v]]
    out.append("Renames cannot be known offline: a catch-up copies a renamed file anew (and deletes the old "
               "name with delete: true); only a running daemon replays renames it sees happen.")
    out.append("dry run: nothing was changed.")
    return "\n".join(out)


def _summary(counts: dict[str, int], renames: int) -> str:
    parts = [f"{counts['copy']:,} to copy", f"{counts['replace'] + counts['update']:,} to replace",
             f"{counts['delete']:,} to delete"]
    if renames:
        parts.append(f"{renames:,} probable rename{'s' if renames != 1 else ''}")
    for v, label in (("conflict", "conflicts"), ("keep", "kept (delete: false)"), ("skip", "skipped")):
        if counts[v]:
            parts.append(f"{counts[v]:,} {label}")
    return ", ".join(parts)


def in_sync(p: Plan) -> bool:
    """Nothing a sync would change, and everything could be compared."""
    return (not p.source_missing and p.unreachable is None and not p.unreadable
            and not any(a.verb in CHANGES for a in p.actions))


def ndjson(plans: list[Plan]) -> Iterator[str]:
    """One JSON object per path: folder, action, path, kind, bytes, reason (and a copy that looks
    like a rename says of what)."""
    for p in plans:
        renamed = {new: old for old, new in p.renames}
        for a in p.actions:
            obj: dict[str, object] = {"folder": p.folder.name, "action": a.verb, "path": a.path, "kind": a.kind,
                                      "bytes": a.bytes, "reason": a.reason}
            if a.path in renamed:
                obj["probable_rename_of"] = renamed[a.path]
            yield json.dumps(obj)


def problems(plans: list[Plan]) -> Iterator[str]:
    """What kept a folder from being compared in full, one line each (stderr, beside the NDJSON)."""
    for p in plans:
        f = p.folder
        if p.source_missing:
            yield f"folder {f.name}: the source {f.source} does not exist: a catch-up would do nothing here"
        if p.unreachable is not None:
            yield f"folder {f.name}: the target could not be compared: {p.unreachable}"
        for rel in p.unreadable:
            yield f"folder {f.name}: unreadable: {_show(rel or '.')} (cannot be listed, so it is not compared)"
