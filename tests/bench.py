"""foldermirror benchmark: the real daemon beside `cp -a` and `rsync -a`, same data, same run.

    python3 -m tests.bench                       # all scenarios, 3 runs each
    python3 -m tests.bench --quick               # small sizes, 1 run: a smoke test of the script
    python3 -m tests.bench --only burst,latency --runs 5 --json bench.json

Prints medians and ranges and writes JSON. Not a pytest test: numbers, not pass/fail.
Finished trees are moved aside and deleted at the end (deleting a big tree slows file
creation for minutes on these machines: the inode allocator skips the freed inodes one by one); the cost of creating a file is
recorded at the start and end of each run, and a run waits (up to --fs-wait seconds) while
it is over 100 µs.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import platform
import select
import shutil
import signal
import statistics
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
ENV = {**os.environ, "PYTHONPATH": str(REPO / "daemon")}
# The daemon measured: this checkout's, or --baseline's (another checkout's daemon/) in turn with it.
_DAEMON_PATH = [str(REPO / "daemon")]


def daemon_env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": _DAEMON_PATH[0]}
KIB = 1024


# -- helpers ---------------------------------------------------------------------------
class Daemon:
    """The real daemon; counts distinct mirrored files from its JSON log lines.

    Directories are not counted: the comparison is with the files cp and rsync copy.
    """

    running: list[Daemon] = []  # stopped at the end even when a scenario fails

    def __init__(self, config: Path) -> None:
        self.mirrored: set[str] = set()
        self.copies: dict[str, int] = {}
        self.events: list[dict[str, Any]] = []
        self.cond = threading.Condition()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "foldermirror", "run", "--config", str(config), "--log-format", "json"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=daemon_env())
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()
        Daemon.running.append(self)

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for raw in self.proc.stderr:
            try:
                rec = json.loads(raw)
            except ValueError:
                continue
            with self.cond:
                ev = rec.get("event")
                if ev == "file_mirrored" and rec.get("kind") != "dir":
                    self.mirrored.add(rec["path"])
                    self.copies[rec["path"]] = self.copies.get(rec["path"], 0) + 1
                else:
                    self.events.append(rec)
                self.cond.notify_all()

    def wait(self, predicate: Callable[[Daemon], bool], timeout: float) -> float:
        deadline = time.monotonic() + timeout
        with self.cond:
            while not predicate(self):
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError("daemon did not get there in time")
                self.cond.wait(min(left, 0.5))
        return time.monotonic()

    def has(self, event: str, **match: Any) -> bool:
        return any(e.get("event") == event and all(e.get(k) == v for k, v in match.items()) for e in self.events)

    def stop(self) -> None:
        if self in Daemon.running:
            Daemon.running.remove(self)
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def write_config(base: Path, src: Path, dst: Path, **opts: Any) -> Path:
    import yaml
    cfg = base / "bench.yaml"
    cfg.write_text(yaml.safe_dump({"folders": [{"name": "bench", "source": str(src), "target": str(dst), **opts}]}))
    return cfg


def file_create_cost(base: Path, n: int = 200) -> float:
    """Microseconds to create, write and close one small file here (over 100 µs: a big tree was deleted lately)."""
    d = Path(tempfile.mkdtemp(dir=base, prefix="probe-"))
    t = time.perf_counter()
    for i in range(n):
        fd = os.open(d / f"p{i}", os.O_WRONLY | os.O_CREAT, 0o644)
        os.write(fd, b"x")
        os.close(fd)
    cost = (time.perf_counter() - t) / n * 1e6
    shutil.rmtree(d)
    return round(cost, 1)


# Creating a file costs about 25 µs on these machines; far more means a big tree was deleted
# recently, and every number measured then is distorted.
SLOW_CREATE_US = 100.0


def wait_for_fast_creates(base: Path, limit_s: float) -> float:
    """The cost of creating a file, once it is under SLOW_CREATE_US or `limit_s` has passed."""
    deadline = time.monotonic() + limit_s
    cost = file_create_cost(base)
    while cost > SLOW_CREATE_US and time.monotonic() < deadline:
        print(f"creating a file costs {cost:.0f} µs here (a big tree was deleted recently); "
              f"waiting up to {deadline - time.monotonic():.0f} s more before measuring", file=sys.stderr, flush=True)
        time.sleep(15)  # sleep-ok: waiting for the file system to recover, outside any measurement
        cost = file_create_cost(base)
    return cost


def make_tree(root: Path, files: int, size: int, folders: int) -> None:
    payload = os.urandom(size)
    for d in range(folders):
        (root / f"d{d:03}").mkdir(parents=True, exist_ok=True)
    for i in range(files):
        fd = os.open(root / f"d{i % folders:03}" / f"f{i:06}", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        os.write(fd, payload)
        os.close(fd)


def timed(cmd: list[str]) -> float:
    t = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - t


def sync_caches() -> None:
    os.sync()


class Trash:
    """Trees are moved here during the run and deleted at the very end."""

    def __init__(self, base: Path) -> None:
        self.dir = base / "trash"
        self.dir.mkdir(exist_ok=True)
        self.n = 0

    def put(self, *paths: Path) -> None:
        for p in paths:
            if p.exists():
                self.n += 1
                os.rename(p, self.dir / f"{self.n}")


# -- inotify on the target, to time "visible" without a polling floor (a 1 ms poll is a 1 ms floor) ---
class TargetWatch:
    IN_MOVED_TO = 0x80
    IN_CLOSE_WRITE = 0x8
    IN_CREATE = 0x100

    def __init__(self, path: Path) -> None:
        self.libc = ctypes.CDLL("libc.so.6", use_errno=True)
        self.fd = self.libc.inotify_init1(os.O_NONBLOCK | os.O_CLOEXEC)
        mask = self.IN_MOVED_TO | self.IN_CLOSE_WRITE | self.IN_CREATE
        if self.fd < 0 or self.libc.inotify_add_watch(self.fd, str(path).encode(), mask) < 0:
            raise OSError(ctypes.get_errno(), "inotify")

    def wait_for(self, name: str, timeout: float) -> float:
        deadline = time.perf_counter() + timeout
        want = name.encode()
        while True:
            left = deadline - time.perf_counter()
            if left <= 0:
                raise TimeoutError(name)
            r, _, _ = select.select([self.fd], [], [], left)
            if not r:
                continue
            now = time.perf_counter()
            data = os.read(self.fd, 65536)
            off = 0
            while off < len(data):
                _, mask, _, length = struct.unpack_from("iIII", data, off)
                fname = data[off + 16: off + 16 + length].rstrip(b"\0")
                off += 16 + length
                if fname == want and mask & self.IN_MOVED_TO:
                    return now

    def close(self) -> None:
        os.close(self.fd)


def process_tree(pid: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                data = Path(f"/proc/{entry}/stat").read_bytes()
            except OSError:
                continue
            ppid = int(data[data.rindex(b")") + 2:].split()[1])
            children.setdefault(ppid, []).append(int(entry))
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(children.get(p, []))
    return out


def tree_memory(pid: int) -> tuple[float, float, int]:
    """(RSS MiB, PSS MiB, processes) of a process and all its descendants."""
    rss = pss = 0
    pids = process_tree(pid)
    for p in pids:
        try:
            for line in Path(f"/proc/{p}/smaps_rollup").read_text().splitlines():
                if line.startswith("Rss:"):
                    rss += int(line.split()[1])
                elif line.startswith("Pss:"):
                    pss += int(line.split()[1])
        except OSError:
            pass
    return rss / 1024, pss / 1024, len(pids)


def process_cpu(pid: int) -> float:
    """CPU seconds (user + system) one process has used so far."""
    try:
        data = Path(f"/proc/{pid}/stat").read_bytes()
    except OSError:
        return 0.0
    fields = data[data.rindex(b")") + 2:].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def tree_cpu(pid: int) -> float:
    return sum(process_cpu(p) for p in process_tree(pid))


def cpu_split(pid: int) -> dict[str, float]:
    """CPU seconds of the daemon's main process and of its helpers (the pool's workers,
    the fork server, the resource tracker): where the time goes."""
    main = process_cpu(pid)
    return {"cpu_main_s": main, "cpu_workers_s": tree_cpu(pid) - main}


# -- scenarios --------------------------------------------------------------------------
def scenario_burst(base: Path, trash: Trash, files: int, folders: int) -> dict[str, Any]:
    src, dst = base / "burst-src", base / "burst-dst"
    src.mkdir()
    d = Daemon(write_config(base, src, dst))
    d.wait(lambda s: s.has("sync_finished", reason="startup"), 60)
    t0 = time.monotonic()
    make_tree(src, files, 4 * KIB, folders)
    t_written = time.monotonic()
    t_done = d.wait(lambda s: len(s.mirrored) >= files, 600)
    overflow = d.has("overflow_rescan")
    cpu = cpu_split(d.proc.pid)
    d.stop()
    lost = _compare_count(src, dst)
    cp_dst, rs_dst = base / "burst-cp", base / "burst-rsync"
    sync_caches()
    cp = timed(["cp", "-a", str(src), str(cp_dst)])
    rs = timed(["rsync", "-a", f"{src}/", f"{rs_dst}/"]) if shutil.which("rsync") else None
    trash.put(src, dst, cp_dst, rs_dst)
    return {"daemon_s": t_done - t0, "daemon_after_writes_s": t_done - t_written, "write_s": t_written - t0,
            "cp_s": cp, "rsync_s": rs, "ratio_vs_cp": (t_done - t0) / cp, "overflow": overflow, "missing": lost,
            **cpu}


def _compare_count(src: Path, dst: Path) -> int:
    missing = 0
    for dirpath, _, names in os.walk(src):
        rel = os.path.relpath(dirpath, src)
        for n in names:
            if not os.path.exists(os.path.join(dst, rel, n)):
                missing += 1
    return missing


def scenario_bigfile(base: Path, trash: Trash, size_mib: int) -> dict[str, Any]:
    src, dst = base / "big-src", base / "big-dst"
    src.mkdir()
    d = Daemon(write_config(base, src, dst))
    d.wait(lambda s: s.has("sync_finished", reason="startup"), 60)
    chunk = os.urandom(1 << 20)
    with open(src / "big.bin", "wb") as f:
        for _ in range(size_mib):
            f.write(chunk)
    t_closed = time.monotonic()
    t_done = d.wait(lambda s: "big.bin" in s.mirrored and os.path.exists(dst / "big.bin")
                    and os.path.getsize(dst / "big.bin") == size_mib << 20, 600)
    copies = d.copies.get("big.bin", 0)
    d.stop()
    size = size_mib << 20
    cp_dst = base / "big-cp.bin"
    cp = timed(["cp", "--reflink=never", str(src / "big.bin"), str(cp_dst)])
    trash.put(src, dst, cp_dst)
    mbps = size / (t_done - t_closed) / 1e6
    return {"daemon_MBps": mbps, "cp_MBps": size / cp / 1e6, "ratio_vs_cp": mbps / (size / cp / 1e6),
            "copies": copies, "close_to_done_s": t_done - t_closed}


def scenario_latency(base: Path, trash: Trash, writes: int) -> dict[str, Any]:
    src, dst = base / "lat-src", base / "lat-dst"
    src.mkdir()
    dst.mkdir()
    d = Daemon(write_config(base, src, dst))
    d.wait(lambda s: s.has("sync_finished", reason="startup"), 60)
    watch = TargetWatch(dst)
    samples = []
    payload = os.urandom(4 * KIB)
    for i in range(writes):
        name = f"l{i:04}"
        fd = os.open(src / name, os.O_WRONLY | os.O_CREAT, 0o644)
        os.write(fd, payload)
        os.close(fd)
        t_close = time.perf_counter()
        t_seen = watch.wait_for(name, 10)
        samples.append((t_seen - t_close) * 1000)
    watch.close()
    d.stop()
    trash.put(src, dst)
    q = statistics.quantiles(samples, n=100, method="inclusive")  # never past the largest sample
    return {"p50_ms": statistics.median(samples), "p90_ms": q[89], "p99_ms": q[98], "max_ms": max(samples)}


def scenario_catchup(base: Path, trash: Trash, files: int, folders: int) -> dict[str, Any]:
    src = base / "cu-src"
    make_tree(src, files, 4 * KIB, folders)
    sync_caches()
    cp_dst, rs_dst, dst = base / "cu-cp", base / "cu-rsync", base / "cu-dst"
    cp = timed(["cp", "-a", str(src), str(cp_dst)])
    rs = timed(["rsync", "-a", f"{src}/", f"{rs_dst}/"]) if shutil.which("rsync") else None
    cfg = write_config(base, src, dst)
    t0 = time.monotonic()
    d = Daemon(cfg)
    t_done = d.wait(lambda s: s.has("sync_finished", reason="startup"), 900)
    cpu = cpu_split(d.proc.pid)
    d.stop()
    # a second start with everything in sync: the cost of the comparison alone
    t1 = time.monotonic()
    d2 = Daemon(cfg)
    t_idle = d2.wait(lambda s: s.has("sync_finished", reason="startup"), 300)
    copied_again = len(d2.mirrored)
    d2.stop()
    trash.put(src, dst, cp_dst, rs_dst)
    return {"daemon_s": t_done - t0, "cp_s": cp, "rsync_s": rs,
            "ratio_vs_rsync": (t_done - t0) / rs if rs else None,
            "in_sync_start_s": t_idle - t1, "copied_when_in_sync": copied_again, **cpu}


_EVENTS_CHILD = r"""
import os, resource, sys, threading, time
mode, src, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
count = [0]
if mode == "watchdog":
    from watchdog.events import FileSystemEventHandler
    from watchdog.observers import Observer
    from foldermirror.pipeline.watcher import EVENT_FILTER

    class Count(FileSystemEventHandler):
        def dispatch(self, event):
            count[0] += 1

    observer = Observer()
    observer.schedule(Count(), src, recursive=True, event_filter=EVENT_FILTER)
    observer.start()
else:
    import ctypes, struct
    libc = ctypes.CDLL("libc.so.6", use_errno=True)
    fd = libc.inotify_init1(os.O_CLOEXEC)
    mask = 0x2 | 0x4 | 0x8 | 0x40 | 0x80 | 0x100 | 0x200 | 0x400 | 0x800  # what EVENT_FILTER asks for
    paths = {}
    for dirpath, _, _ in os.walk(src):
        paths[libc.inotify_add_watch(fd, dirpath.encode(), mask)] = dirpath

    def read():
        while True:
            data, off = os.read(fd, 65536), 0
            while off < len(data):
                wd, _, _, length = struct.unpack_from("iIII", data, off)
                os.path.join(paths.get(wd, ""), os.fsdecode(data[off + 16:off + 16 + length].rstrip(b"\0")))
                off += 16 + length
                count[0] += 1

    threading.Thread(target=read, daemon=True).start()
print("ready", flush=True)
sys.stdin.readline()  # the files are written now
while True:
    seen = count[0]
    time.sleep(0.3)  # sleep-ok: waiting for the event stream to go quiet
    if count[0] == seen:
        break
usage = resource.getrusage(resource.RUSAGE_SELF)
print(count[0], usage.ru_utime + usage.ru_stime, flush=True)
"""


def scenario_events(base: Path, trash: Trash, files: int, folders: int) -> dict[str, Any]:
    """CPU to receive a burst's inotify events: watchdog's observer (with the daemon's event
    filter and a handler that only counts) against a plain read of the inotify fd."""
    out: dict[str, Any] = {}
    for mode in ("watchdog", "raw"):
        src = base / f"events-{mode}"
        for d in range(folders):
            (src / f"d{d:03}").mkdir(parents=True)
        child = subprocess.Popen([sys.executable, "-c", _EVENTS_CHILD, mode, str(src), str(files)], env=ENV,
                                 stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert child.stdin is not None and child.stdout is not None
        child.stdout.readline()
        base_cpu = process_cpu(child.pid)
        make_tree(src, files, 4 * KIB, folders)
        child.stdin.write("go\n")
        child.stdin.flush()
        events, cpu = child.stdout.readline().split()
        child.wait()
        out[f"{mode}_events"] = int(events)
        out[f"{mode}_cpu_s"] = float(cpu) - base_cpu
        out[f"{mode}_us_per_event"] = (float(cpu) - base_cpu) / max(1, int(events)) * 1e6
        trash.put(src)
    return out


def scenario_idle(base: Path, trash: Trash, folders: int, per_folder: int, seconds: float) -> dict[str, Any]:
    src, dst = base / "idle-src", base / "idle-dst"
    make_tree(src, folders * per_folder, 64, folders)
    d = Daemon(write_config(base, src, dst))
    d.wait(lambda s: s.has("sync_finished", reason="startup"), 900)
    time.sleep(1.0)  # sleep-ok: the catch-up's own clean-up (memory handed back) is not idleness
    cpu0 = tree_cpu(d.proc.pid)
    time.sleep(seconds)  # sleep-ok: the idle period being measured
    cpu = tree_cpu(d.proc.pid) - cpu0
    rss, pss, procs = tree_memory(d.proc.pid)
    d.stop()
    trash.put(src, dst)
    return {"cpu_s": cpu, "rss_MiB": rss, "pss_MiB": pss, "processes": procs, "folders": folders}


# -- driver -----------------------------------------------------------------------------
def scenario_records(base: Path, trash: Trash, items: int) -> dict[str, Any]:
    """What naming the records costs: pickling a batch of WorkItems and their results as the
    pool and the workers do, against the same values as the plain tuples they replaced."""
    import pickle

    sys.path.insert(0, str(REPO / "daemon"))
    from foldermirror.pipeline.records import BatchResults, FolderSpec, ItemResult, Outcome, Status, WorkItem

    spec = FolderSpec("/srv/inbox/photos", "/srv/mirror/photos", True, False, (2049, 131073))
    paths = [f"2026/12/dir{i % 50:02d}/IMG_{i:06d}.jpg" for i in range(items)]
    named_work = [WorkItem(i, spec, p, None, False) for i, p in enumerate(paths)]
    plain_work = [(i, spec.source, spec.target, p, None, True, False, spec.root_id, False) for i, p in enumerate(paths)]
    named_results = BatchResults(1, 7, [ItemResult(i, [Outcome(p, Status.COPIED, "file", 4096)], 41000)
                                        for i, p in enumerate(paths)], 4242)
    plain_results = ("results", 1, 7, [(i, [(p, "copied", "file", 4096, "", 0)], 41000) for i, p in enumerate(paths)],
                     4242)

    def per_item(obj: Any) -> tuple[float, int]:
        data = pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
        rounds = 200
        t0 = time.perf_counter()
        for _ in range(rounds):
            pickle.loads(pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL))
        return (time.perf_counter() - t0) / rounds / items * 1e6, len(data)

    nw_us, nw_b = per_item(named_work)
    pw_us, pw_b = per_item(plain_work)
    nr_us, nr_b = per_item(named_results)
    pr_us, pr_b = per_item(plain_results)
    return {"work_named_us": nw_us, "work_plain_us": pw_us, "work_named_bytes": nw_b / items,
            "work_plain_bytes": pw_b / items, "results_named_us": nr_us, "results_plain_us": pr_us,
            "results_named_bytes": nr_b / items, "results_plain_bytes": pr_b / items}


def summarise(runs: list[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key in runs[0]:
        values = [r[key] for r in runs if isinstance(r.get(key), (int, float)) and not isinstance(r.get(key), bool)]
        if values:
            out[key] = {"median": statistics.median(values), "min": min(values), "max": max(values)}
        else:
            out[key] = [r.get(key) for r in runs]
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--only", default="burst,events,bigfile,latency,catchup,idle")
    p.add_argument("--quick", action="store_true", help="small sizes and one run: checks the script works")
    p.add_argument("--json", default="bench-results.json", help="where to write the results")
    p.add_argument("--dir", default=None, help="work folder (default: a temp folder under /var/tmp)")
    p.add_argument("--baseline", default=None, metavar="CHECKOUT",
                   help="also measure the daemon of another checkout (e.g. a git worktree of an older commit), "
                        "run for run in turn with this one, and report both")
    p.add_argument("--fs-wait", type=float, default=300.0,
                   help=f"seconds to wait before a run while creating a file costs over {SLOW_CREATE_US:.0f} µs")
    args = p.parse_args(argv)
    q = args.quick
    runs = 1 if q else args.runs
    sizes = {
        "burst": dict(files=2000 if q else 20000, folders=50),
        "bigfile": dict(size_mib=64 if q else 2048),
        "latency": dict(writes=50 if q else 200),
        "catchup": dict(files=5000 if q else 100000, folders=100),
        "idle": dict(folders=500 if q else 10000, per_folder=10, seconds=3 if q else 10),
        "events": dict(files=2000 if q else 20000, folders=50),
        "records": dict(items=64),
    }
    fns = {"burst": scenario_burst, "events": scenario_events, "bigfile": scenario_bigfile, "latency": scenario_latency,
           "catchup": scenario_catchup, "idle": scenario_idle, "records": scenario_records}
    daemons = [("", str(REPO / "daemon"))]
    if args.baseline:
        daemons.append(("baseline ", str(Path(args.baseline).resolve() / "daemon")))
    base = Path(args.dir or tempfile.mkdtemp(prefix="fm-bench-", dir="/var/tmp"))
    base.mkdir(parents=True, exist_ok=True)
    trash = Trash(base)
    results: dict[str, Any] = {"machine": {"cpus": os.cpu_count(), "kernel": platform.release(),
                                           "python": platform.python_version()},
                               "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    try:
        for name in [s for s in args.only.split(",") if s]:
            per_run: dict[str, list[dict[str, Any]]] = {label: [] for label, _ in daemons}
            for i in range(runs):
                for label, path in daemons if name != "records" else daemons[:1]:
                    _DAEMON_PATH[0] = path
                    before = wait_for_fast_creates(base, 0 if q else args.fs_wait)
                    r = fns[name](base, trash, **sizes[name])
                    r["create_us_before"], r["create_us_after"] = before, file_create_cost(base)
                    per_run[label].append(r)
                    print(f"{label}{name} run {i + 1}: " + ", ".join(f"{k}={_fmt(v)}" for k, v in r.items()),
                          flush=True)
            for label, done in per_run.items():
                if not done:
                    continue
                results[label + name] = {"params": sizes[name], "runs": done, "summary": summarise(done)}
                print(f"== {label}{name}: " + ", ".join(
                    f"{k}={_fmt(v['median'])} [{_fmt(v['min'])}..{_fmt(v['max'])}]"
                    for k, v in results[label + name]["summary"].items() if isinstance(v, dict)), flush=True)
    finally:
        for d in list(Daemon.running):
            d.stop()
        Path(args.json).write_text(json.dumps(results, indent=2))
        print(f"results written to {args.json}")
        shutil.rmtree(base, ignore_errors=True)
    return 0


def _fmt(v: Any) -> str:
    return f"{v:.3g}" if isinstance(v, float) else str(v)


if __name__ == "__main__":
    sys.exit(main())
