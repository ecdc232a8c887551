"""foldermirror benchmark: the real daemon beside `cp -a` and `rsync -a`, same data, same run.

    python3 -m tests.bench                       # the local scenarios, 3 runs each
    python3 -m tests.bench --quick               # small sizes, 1 run: a smoke test of the script
    python3 -m tests.bench --only burst,latency --runs 5 --json bench.json
    python3 -m tests.bench --only remote         # the remote_* scenarios (ssh:// targets)
    python3 -m tests.bench --only overwrite_versions   # 20,000 overwrites, versions off then on
    python3 -m tests.bench --only loglines --baseline ../old   # µs per file_mirrored JSON line, against another checkout
    python3 -m tests.bench --only latency_load   # a save every 100 ms during a burst and a catch-up
    python3 -m tests.bench --only scale --runs 1 --dir /dev/shm/x   # a million files (--scale-files N)

The remote scenarios mirror to an ssh:// target on a throwaway OpenSSH server on 127.0.0.1
(tests/sshd.py), beside `rsync -a` over the same ssh and lsyncd's default.rsyncssh (delay 0):
see remote_* below and README "Performance".

Prints medians and ranges and writes JSON. Not a pytest test: numbers, not pass/fail.
Finished trees are moved aside and deleted at the end (deleting a big tree slows file
creation for minutes on these machines: the inode allocator skips the freed inodes one by one); the cost of creating a file is
recorded at the start and end of each run, and a run waits (up to --fs-wait seconds) while
it is over 100 µs.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import functools
import json
import os
import platform
import re
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
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, NamedTuple

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:  # `python3 tests/bench.py` as well as `python3 -m tests.bench`
    sys.path.insert(0, str(REPO))
if str(REPO / "daemon") not in sys.path:  # what the bench imports itself is this checkout's code
    sys.path.insert(1, str(REPO / "daemon"))
from tests.sshd import SshServer, missing_tools, ssh_config_block  # noqa: E402

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
        self.copy_bytes: dict[str, list[int]] = {}  # per path, the bytes of each file_mirrored line
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
            rec["_t"] = time.monotonic()  # when it was read: a remote scenario times daemon_ready
            with self.cond:
                ev = rec.get("event")
                if ev == "file_mirrored" and rec.get("kind") != "dir":
                    self.mirrored.add(rec["path"])
                    self.copies[rec["path"]] = self.copies.get(rec["path"], 0) + 1
                    self.copy_bytes.setdefault(rec["path"], []).append(rec.get("bytes", 0))
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


def compile_bytecode(daemon_path: str) -> None:
    """Write the checkout's .pyc files, as pip does when it installs the package. Where
    PYTHONDONTWRITEBYTECODE is set (as on the machines this was measured on), every daemon
    started would compile each of its modules from source again (about 0.3 s of the main
    process's CPU at this size, growing with the code), counted in every scenario's figures."""
    subprocess.run([sys.executable, "-m", "compileall", "-q", daemon_path], check=True,
                   stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)


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
        usage = shutil.disk_usage(self.dir)
        if usage.free < usage.total * 0.3:  # a tmpfs fills up in one --baseline run: delete now, not at the end
            print(f"bench: {usage.free / 2**30:.1f} GiB free on {self.dir}: emptying the trash now", flush=True)
            for entry in os.scandir(self.dir):
                shutil.rmtree(entry.path, ignore_errors=True)


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

    def wait_for(self, name: str, timeout: float, done: Callable[[], bool] | None = None) -> float:
        """When `name` was renamed into place (and `done()` held then, if given: a rename of a
        partial copy, as lsyncd makes of a file rsynced while still open, does not count)."""
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
                if fname == want and mask & self.IN_MOVED_TO and (done is None or done()):
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


def _start_time(pid: int) -> int | None:
    """When a process started (clock ticks since boot), or None when it is gone."""
    try:
        data = Path(f"/proc/{pid}/stat").read_bytes()
    except OSError:
        return None
    return int(data[data.rindex(b")") + 2:].split()[19])


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


def _overwrite_burst(base: Path, trash: Trash, files: int, folders: int, versions: bool) -> tuple[float, int]:
    """Seconds from the first overwrite of `files` mirrored files until each is mirrored again, and how
    many versions were kept (with versions on: one per file)."""
    tag = "on" if versions else "off"
    src, dst = base / f"over-{tag}-src", base / f"over-{tag}-dst"
    area = base / f".over-{tag}-dst.versions"
    src.mkdir()
    make_tree(src, files, 4 * KIB, folders)
    d = Daemon(write_config(base, src, dst, delete=True, **({"versions": {"path": str(area)}} if versions else {})))
    d.wait(lambda s: s.has("sync_finished", reason="startup"), 600)
    first = dict(d.copies)
    t0 = time.monotonic()
    make_tree(src, files, 4 * KIB, folders)  # new bytes (a new payload), same names: every file replaced
    t_done = d.wait(lambda s: sum(s.copies.get(p, 0) > first.get(p, 0) for p in first) >= files, 600)
    d.stop()
    kept = sum(len(names) for _, _, names in os.walk(area)) if versions else 0
    trash.put(src, dst, *([area] if versions else []))
    return t_done - t0, kept


_OVERWRITE_RUNS = [0]


def scenario_overwrite_versions(base: Path, trash: Trash, files: int, folders: int) -> dict[str, Any]:
    """The burst of overwrites with versions off and on (a hard link per replaced file): the cost of versions.

    The order alternates from run to run: on these machines the file system's speed drifts within a
    run (see file_create_cost), and whichever goes second would otherwise carry the drift.
    """
    _OVERWRITE_RUNS[0] += 1
    on_first = _OVERWRITE_RUNS[0] % 2 == 0
    if on_first:
        on_s, kept = _overwrite_burst(base, trash, files, folders, versions=True)
        off_s, _ = _overwrite_burst(base, trash, files, folders, versions=False)
    else:
        off_s, _ = _overwrite_burst(base, trash, files, folders, versions=False)
        on_s, kept = _overwrite_burst(base, trash, files, folders, versions=True)
    return {"versions_off_s": off_s, "versions_on_s": on_s, "ratio_versions": on_s / off_s, "versions_kept": kept,
            "on_first": on_first}


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


def _saves_while(d: Daemon, watch: TargetWatch, src: Path, loaded: Callable[[], bool], gap_ms: float,
                 limit_s: float) -> list[float]:
    """Save one 4 KiB file in the source root every `gap_ms` while `loaded()` holds: close → renamed
    into place in the mirror's root, in ms (a save that lands after the load ended is not counted)."""
    samples: list[float] = []
    payload = os.urandom(4 * KIB)
    deadline = time.monotonic() + limit_s
    i = 0
    while loaded() and time.monotonic() < deadline:
        name = f"save{i:05}.txt"
        i += 1
        t_start = time.perf_counter()
        fd = os.open(src / name, os.O_WRONLY | os.O_CREAT, 0o644)
        os.write(fd, payload)
        os.close(fd)
        t_close = time.perf_counter()
        t_seen = watch.wait_for(name, 30)
        if loaded():
            samples.append((t_seen - t_close) * 1000)
        time.sleep(max(0.0, gap_ms / 1000 - (time.perf_counter() - t_start)))  # sleep-ok: the pace of saves
    return samples


def scenario_latency_load(base: Path, trash: Trash, files: int, folders: int, catchup_files: int,
                          gap_ms: float) -> dict[str, Any]:
    """A person saving a document while a bulk copy is in flight: one small file saved in the
    source root every `gap_ms`, close → visible in the mirror, (1) during a burst of `files`
    new files written into `folders` subfolders of the watched source, (2) during the
    start-up catch-up of `catchup_files` files. Only saves that land while the load is in
    flight count."""
    out: dict[str, Any] = {}
    src, dst = base / "ll-src", base / "ll-dst"
    src.mkdir()
    d = Daemon(write_config(base, src, dst))
    d.wait(lambda s: s.has("sync_finished", reason="startup"), 60)
    watch = TargetWatch(dst)
    bulk = tree_paths(files, folders)
    writer = threading.Thread(target=make_tree, args=(src, files, 4 * KIB, folders))
    t0 = time.monotonic()
    writer.start()

    def bursting() -> bool:
        with d.cond:
            return not bulk <= d.mirrored

    samples = _saves_while(d, watch, src, bursting, gap_ms, 600)
    writer.join()
    out["burst_s"] = d.wait(lambda s: bulk <= s.mirrored, 600) - t0
    watch.close()
    d.stop()
    out.update(_percentiles(samples, "burst_"), burst_saves=len(samples))
    trash.put(src, dst)

    src, dst = base / "llc-src", base / "llc-dst"
    make_tree(src, catchup_files, 4 * KIB, folders)
    dst.mkdir()
    sync_caches()
    watch = TargetWatch(dst)
    t0 = time.monotonic()
    d = Daemon(write_config(base, src, dst))
    d.wait(lambda s: len(s.mirrored) > 0, 300)  # the catch-up is copying

    def catching_up() -> bool:
        with d.cond:
            return not d.has("sync_finished", reason="startup")

    samples = _saves_while(d, watch, src, catching_up, gap_ms, 900)
    out["catchup_s"] = d.wait(lambda s: s.has("sync_finished", reason="startup"), 900) - t0
    watch.close()
    d.stop()
    out.update(_percentiles(samples, "catchup_"), catchup_saves=len(samples))
    trash.put(src, dst)
    return out


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
    from watchdog.events import (DirAttribEvent, DirCreatedEvent, DirDeletedEvent, DirMovedEvent,
                                 FileAttribEvent, FileClosedEvent, FileCreatedEvent, FileDeletedEvent,
                                 FileModifiedEvent, FileMovedEvent)
    EVENTS = [FileCreatedEvent, DirCreatedEvent, FileModifiedEvent, FileAttribEvent, DirAttribEvent,
              FileClosedEvent, FileDeletedEvent, DirDeletedEvent, FileMovedEvent, DirMovedEvent]

    class Count(FileSystemEventHandler):
        def dispatch(self, event):
            count[0] += 1

    observer = Observer()
    observer.schedule(Count(), src, recursive=True, event_filter=EVENTS)
    observer.start()
elif mode == "intake":
    from foldermirror.pipeline.intake import SOURCE_MASK, Intake

    class Counter:
        def handle(self, kind, path, is_dir, dest):
            count[0] += 1

    reader = Intake(on_overflow=lambda: None)
    reader.start()
    reader.schedule(src, Counter(), recursive=True, mask=SOURCE_MASK)
else:
    import ctypes, struct
    libc = ctypes.CDLL("libc.so.6", use_errno=True)
    fd = libc.inotify_init1(os.O_CLOEXEC)
    mask = 0x2 | 0x4 | 0x8 | 0x40 | 0x80 | 0x100 | 0x200 | 0x400 | 0x800  # what the intake asks for
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
    """CPU to receive a burst's inotify events: watchdog's observer (with the event filter the
    daemon used before its own intake, and a handler that only counts), the daemon's intake
    (pipeline/intake.py, the same), and a plain read of the inotify fd."""
    out: dict[str, Any] = {}
    for mode in ("watchdog", "intake", "raw"):
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
        out[f"{mode}_us_per_file"] = (float(cpu) - base_cpu) / files * 1e6  # the intake merges a file's events
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


def make_deep_tree(root: Path, files: int, dirs: int, size: int) -> list[str]:
    """`files` files of `size` bytes spread over `dirs` directories two levels deep
    (t0000/s000/…), each written once; returns their paths, relative."""
    payload = os.urandom(size)
    top = max(1, round(dirs ** 0.5))
    per_top = max(1, dirs // top)
    leaves = [f"t{t:04}/s{s:04}" for t in range(top) for s in range(per_top)]
    for leaf in leaves:
        (root / leaf).mkdir(parents=True, exist_ok=True)
    out = []
    for i in range(files):
        rel = f"{leaves[i % len(leaves)]}/f{i:07}"
        fd = os.open(root / rel, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        os.write(fd, payload)
        os.close(fd)
        out.append(rel)
    return out


def count_dirs(root: Path) -> int:
    return sum(1 for _ in os.walk(root))


def inotify_watches(pid: int) -> int:
    """inotify watches the process holds (the `inotify wd:` lines of its fds' fdinfo)."""
    n = 0
    for fd in os.listdir(f"/proc/{pid}/fdinfo"):
        with contextlib.suppress(OSError), open(f"/proc/{pid}/fdinfo/{fd}") as f:
            n += sum(1 for line in f if line.startswith("inotify wd:"))
    return n


def inotifywait_ready_s(root: Path, timeout: float = 900) -> float | None:
    """Seconds `inotifywait -r -m` takes to establish its watches on `root` (None without it)."""
    if not shutil.which("inotifywait"):
        return None
    t0 = time.monotonic()
    child = subprocess.Popen(["inotifywait", "-r", "-m", "-e", "close_write,create,delete,moved_to,attrib,modify",
                              "--format", "%w%f", str(root)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                             text=True)
    deadline = t0 + timeout
    try:
        assert child.stderr is not None
        while time.monotonic() < deadline:  # "Setting up watches. …", then "Watches established."
            ready, _, _ = select.select([child.stderr], [], [], deadline - time.monotonic())
            line = child.stderr.readline() if ready else ""
            if "established" in line.lower():
                return time.monotonic() - t0
            if not line:
                return None
        return None
    finally:
        child.kill()
        child.wait()


def scenario_scale(base: Path, trash: Trash, files: int, dirs: int, burst: int) -> dict[str, Any]:
    """A big tree: `files` files of 2 KiB in `dirs` directories (two levels).

    - catch-up: start with an empty target → daemon_ready (every watch set) and sync_finished,
      beside `rsync -a` of the same tree;
    - idle: PSS of the process tree and the inotify watches it holds (one per directory, and one
      on the target's root);
    - rescan when in sync: `foldermirror rescan` → sync_finished;
    - a burst of `burst` rewrites spread over the tree → every one mirrored again;
    - in-sync start: a second start → daemon_ready and sync_finished, beside `rsync -a --dry-run`
      and the time `inotifywait -r` takes to set up its watches on the same tree.
    """
    out: dict[str, Any] = {"files": files, "dirs": dirs}
    src, dst, rs_dst = base / "sc-src", base / "sc-dst", base / "sc-rsync"
    t0 = time.monotonic()
    paths = make_deep_tree(src, files, dirs, 2 * KIB)
    out["make_tree_s"] = time.monotonic() - t0
    out["source_dirs"] = n_dirs = count_dirs(src)
    sync_caches()
    out["rsync_s"] = timed(["rsync", "-a", f"{src}/", f"{rs_dst}/"])
    shutil.rmtree(rs_dst)  # a tmpfs gives the memory back at once
    cfg = write_config(base, src, dst)
    t0 = time.monotonic()
    d = Daemon(cfg)
    out["catchup_ready_s"] = d.wait(lambda s: s.has("daemon_ready"), 1800) - t0
    out["catchup_s"] = d.wait(lambda s: s.has("sync_finished", reason="startup"), 3600) - t0
    out["ratio_catchup_vs_rsync"] = out["catchup_s"] / out["rsync_s"]
    time.sleep(2.0)  # sleep-ok: the catch-up's own clean-up (memory handed back) is not idleness
    rss, pss, procs = tree_memory(d.proc.pid)
    out.update(idle_rss_MiB=rss, idle_pss_MiB=pss, processes=procs, watches=inotify_watches(d.proc.pid))
    out["watches_minus_dirs"] = out["watches"] - n_dirs
    t0 = time.monotonic()
    subprocess.run([sys.executable, "-m", "foldermirror", "rescan", "--config", str(cfg)], env=daemon_env(),
                   check=True, stdout=subprocess.DEVNULL, timeout=60)
    out["rescan_s"] = d.wait(lambda s: s.has("sync_finished", reason="requested"), 1800) - t0
    first = dict(d.copies)
    step = max(1, len(paths) // burst)
    chosen = paths[::step][:burst]
    payload = os.urandom(2 * KIB)
    t0 = time.monotonic()
    for rel in chosen:
        fd = os.open(src / rel, os.O_WRONLY | os.O_TRUNC)
        os.write(fd, payload)
        os.close(fd)
    seen_before = len(d.events)
    out["burst_s"] = d.wait(lambda s: all(s.copies.get(p, 0) > first.get(p, 0) for p in chosen), 1800) - t0
    with d.cond:
        during = d.events[seen_before:]
    out["burst_overflows"] = sum(1 for e in during if e.get("event") == "overflow_rescan")
    out["burst_walks"] = sum(1 for e in during if e.get("event") == "sync_finished")
    d.stop()
    out["missing"] = _compare_count(src, dst)
    out["rsync_dry_run_s"] = timed(["rsync", "-a", "--dry-run", f"{src}/", f"{dst}/"])
    t0 = time.monotonic()
    d = Daemon(cfg)
    out["in_sync_ready_s"] = d.wait(lambda s: s.has("daemon_ready"), 1800) - t0
    out["in_sync_start_s"] = d.wait(lambda s: s.has("sync_finished", reason="startup"), 3600) - t0
    out["copied_when_in_sync"] = len(d.mirrored)
    d.stop()
    out["ratio_in_sync_vs_rsync_dry_run"] = out["in_sync_start_s"] / out["rsync_dry_run_s"]
    out["inotifywait_ready_s"] = iw = inotifywait_ready_s(src)
    out["ratio_ready_vs_inotifywait"] = _ratio(out["in_sync_ready_s"], iw)
    shutil.rmtree(src)
    shutil.rmtree(dst)
    return out


# -- remote targets: foldermirror, rsync -a and lsyncd over ssh to a throwaway sshd ------
# The "remote" is this machine: an OpenSSH server on 127.0.0.1 (tests/sshd.py) with keys and
# known_hosts of its own, one for the whole bench. Its sessions get an empty HOME of their own
# (SshServer(user_rc=False)): the remote user's ~/.bashrc runs for every command otherwise (a
# pyenv one adds about 200 ms to each here), which a dedicated remote user whose shell is
# /bin/sh does not pay, and which would swamp what is measured. --ssh-user-rc measures with
# it; remote_shell measures that overhead on its own.
class Remote:
    server: SshServer | None = None
    user_rc = False          # --ssh-user-rc
    lsyncd_wanted = True     # --no-lsyncd turns it off; the baseline daemon's runs skip it
    lsyncd_now = True
    lsyncd_master = False    # --lsyncd-master: lsyncd's ssh and rsync share a ControlMaster
    lsyncd_version: str | None = None
    lsyncd_missing_said = False

    @classmethod
    def get(cls) -> SshServer:
        if cls.server is None:
            missing = missing_tools() + [t for t in ("rsync",) if shutil.which(t) is None]
            if missing:
                raise RuntimeError(f"the remote scenarios need OpenSSH's server and client and rsync: {missing} missing"
                                   " (Debian: apt-get install openssh-server openssh-client rsync)")
            cls.server = SshServer(user_rc=cls.user_rc, log_level="INFO").start()
        return cls.server

    @classmethod
    def close(cls) -> None:
        if cls.server is not None:
            cls.server.close()
            cls.server = None

    @classmethod
    def lsyncd(cls) -> bool:
        """lsyncd is here to compare with (installed with apt-get when missing and root)."""
        if not (cls.lsyncd_wanted and cls.lsyncd_now):
            return False
        if cls.lsyncd_version is None and shutil.which("lsyncd") is None and os.geteuid() == 0 \
                and shutil.which("apt-get") and not cls.lsyncd_missing_said:
            print("lsyncd is not installed: apt-get install -y lsyncd (for its column; --no-lsyncd skips it)",
                  file=sys.stderr, flush=True)
            subprocess.run(["apt-get", "install", "-y", "--no-install-recommends", "lsyncd"], check=False,
                           stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                           env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"})
        if shutil.which("lsyncd") is None:
            if not cls.lsyncd_missing_said:
                print("lsyncd is not installed (apt-get install lsyncd): its columns stay empty", file=sys.stderr,
                      flush=True)
                cls.lsyncd_missing_said = True
            return False
        if cls.lsyncd_version is None:
            out = subprocess.run(["lsyncd", "--version"], capture_output=True, text=True).stdout
            cls.lsyncd_version = out.strip().removeprefix("Version: ")
        return True


def remote_config(base: Path, src: Path, dst: Path, **opts: Any) -> Path:
    """A config mirroring src to dst on the bench's sshd: target ssh://root@127.0.0.1:PORT/dst."""
    import yaml
    server = Remote.get()
    cfg = base / "bench-remote.yaml"
    cfg.write_text(yaml.safe_dump({"ssh": ssh_config_block(server), "folders": [
        {"name": "bench", "source": str(src), "target": server.url(dst), **opts}]}))
    return cfg


@contextlib.contextmanager
def ssh_master(server: SshServer, name: str = "bench-m", options: tuple[str, ...] = ()) -> Iterator[list[str]]:
    """An `ssh -N -M` master to `server`, as the daemon keeps one per host; yields the ssh
    options of a client that goes through it (no login of its own). `options`: -o NAME=VALUE
    for the master's connection (the cipher, say)."""
    sock = server.socket_path(name)
    extra = [word for option in options for word in ("-o", option)]
    master = subprocess.Popen(server.ssh_argv(*extra, "-N", "-M", "-S", str(sock), "-o", "ControlPersist=no"),
                              stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    through = ["-S", str(sock), "-o", "ControlMaster=no"]
    try:
        deadline = time.monotonic() + 30
        while subprocess.run(server.ssh_argv(*through, "-O", "check"), capture_output=True,
                             stdin=subprocess.DEVNULL).returncode != 0:
            if master.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"no ssh master to {server.destination}:{server.port}")
            time.sleep(0.02)  # sleep-ok: poll interval of a deadline-bounded wait
        yield through
    finally:
        master.terminate()
        master.wait()


def rsync_over_ssh(src: Path, dst: Path, *, master: bool, options: tuple[str, ...] = ()) -> float:
    """Seconds of one `rsync -a src/ host:dst/` over the bench's sshd: with `master`, through an
    ssh master opened beforehand (the transfer alone, as the daemon's batches go through its
    master; `options` for its connection), else logging in itself (what a daemon starting from
    nothing pays too)."""
    server = Remote.get()
    if not master:
        return timed(["rsync", "-a", "-e", server.rsh(), f"{src}/", f"{server.destination}:{dst}/"])
    with ssh_master(server, options=options) as through:
        return timed(["rsync", "-a", "-e", server.rsh(*through), f"{src}/", f"{server.destination}:{dst}/"])


def _lua(text: str) -> str:
    return json.dumps(text)  # a double-quoted string Lua reads the same (ASCII: the paths here are)


class Lsyncd:
    """lsyncd 2.2's default.rsyncssh with delay 0, in the foreground, source → dst on the bench's sshd.

    The ssh options go through its `ssh` table: rsyncssh passes identityFile, port and options
    both to its own ssh calls (moves) and, as one `--rsh=ssh -i … -o K=V … -p PORT` string, to
    rsync (so no value may hold a space). There is no `-F`: /etc/ssh/ssh_config applies, as
    for the daemon. Out of the box every rsync it starts logs in anew; --lsyncd-master adds
    ControlMaster=auto with ControlPersist, which lsyncd's docs leave to the user.

    What it has mirrored is read from its log (stdout, level Normal): each "Calling rsync with
    filter-list" names the paths of one rsync, and its "Finished (list): 0" says they are there.
    maxProcesses is 1 for rsyncssh, so lists never overlap.
    """

    running: list[Lsyncd] = []
    _HEADER = re.compile(r"^\d\d:\d\d:\d\d (\w+): (.*)$")

    def __init__(self, base: Path, src: Path, dst: Path) -> None:
        server = Remote.get()
        self.control = server.socket_path("lsyncd-%C") if Remote.lsyncd_master else None
        options = {"UserKnownHostsFile": str(server.known_hosts), "StrictHostKeyChecking": "yes",
                   "BatchMode": "yes", "IdentitiesOnly": "yes"}
        if self.control is not None:
            options.update(ControlMaster="auto", ControlPath=str(self.control), ControlPersist="60")
        opts = ", ".join(f"{k} = {_lua(v)}" for k, v in options.items())
        self.config = base / "lsyncd.lua"
        self.config.write_text(f"""settings {{ nodaemon = true, insist = false, inotifyMode = "CloseWrite" }}
sync {{
    default.rsyncssh,
    source = {_lua(str(src))},
    host = {_lua(server.destination)},
    targetdir = {_lua(str(dst))},
    delay = 0,
    delete = false,
    rsync = {{ archive = true }},
    ssh = {{ identityFile = {_lua(str(server.client_key))}, port = {server.port}, options = {{ {opts} }} }},
}}
""")
        self.cond = threading.Condition()
        self.log: list[str] = []
        self.startup: tuple[float, int] | None = None  # when its startup rsync finished, and its exit code
        self.done: set[str] = set()                     # paths of the lists that finished with 0
        self.carried: dict[str, int] = {}               # per path: how many finished lists named it
        self.started = self.finished = 0                # lists
        self.last_finished = 0.0
        self._list: list[str] | None = None             # paths of the list being logged / in flight
        self._collecting = False
        # Line-buffered: lsyncd's stdio holds its log in a full buffer on a pipe, and its last
        # "Finished" line would wait there until it logs something else.
        line_buffered = ["stdbuf", "-oL"] if shutil.which("stdbuf") else []
        self.proc = subprocess.Popen([*line_buffered, "lsyncd", str(self.config)], stdin=subprocess.DEVNULL,
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()
        Lsyncd.running.append(self)

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for raw in self.proc.stdout:
            now = time.monotonic()
            line = raw.decode(errors="replace").rstrip("\n")
            with self.cond:
                self.log.append(line)
                m = self._HEADER.match(line)
                if m is None:
                    if self._collecting and self._list is not None and line.strip("/"):
                        self._list.append(line.strip("/"))
                    continue
                self._collecting = False
                kind, text = m.groups()
                if text.startswith("Calling rsync with filter-list"):
                    self._list, self._collecting = [], True
                    self.started += 1
                elif text.startswith("Finished (list): "):
                    if text.endswith(": 0"):
                        for path in self._list or []:
                            self.done.add(path)
                            self.carried[path] = self.carried.get(path, 0) + 1
                    self.finished += 1
                    self.last_finished = now
                    self._list = None
                elif text.startswith("Startup of ") and " finished: " in text:
                    self.startup = (now, int(text.rsplit(": ", 1)[1]))
                elif kind == "Error" or "ailure" in text:
                    self.startup = self.startup or (now, -1)
                self.cond.notify_all()

    def tail(self, n: int = 30) -> str:
        with self.cond:
            return "\n".join(self.log[-n:])

    def wait_startup(self, timeout: float) -> float:
        """When its startup rsync (the whole source) finished."""
        deadline = time.monotonic() + timeout
        with self.cond:
            while self.startup is None and self.proc.poll() is None:
                if not self.cond.wait(max(0.0, deadline - time.monotonic())):
                    raise TimeoutError(f"lsyncd's startup did not finish within {timeout}s:\n{self.tail()}")
            if self.startup is None or self.startup[1] != 0:
                raise RuntimeError(f"lsyncd's startup failed:\n{self.tail()}")
            return self.startup[0]

    def wait_mirrored(self, paths: set[str], check: Callable[[], bool], timeout: float) -> float:
        """When the last of `paths` was there: the end of the list that brought it, once
        `check()` (what the target holds) agrees. A list that ran during the check makes the
        check's end the time instead (an upper bound)."""
        deadline = time.monotonic() + timeout
        seen = -1
        while True:
            with self.cond:
                # Each time it is idle after a list ended, what the target holds decides: its
                # lists' own exit codes are no proof either way (an exit 24 list may still have
                # carried the last paths, which the paths-of-lists-that-ended-0 rule waited for forever).
                while not (self.finished > seen and self.started == self.finished):
                    if self.proc.poll() is not None:
                        raise RuntimeError(f"lsyncd exited ({self.proc.returncode}):\n{self.tail()}")
                    if not self.cond.wait(max(0.0, min(0.5, deadline - time.monotonic()))) \
                            and time.monotonic() >= deadline:
                        raise TimeoutError(f"lsyncd did not mirror {len(paths - self.done)} of {len(paths)} paths "
                                           f"within {timeout}s:\n{self.tail()}")
                seen, started, at = self.finished, self.started, self.last_finished
            ok = check()
            with self.cond:
                if ok:
                    return at if self.started == started else time.monotonic()

    def stop(self) -> None:
        if self in Lsyncd.running:
            Lsyncd.running.remove(self)
        tree = {p: _start_time(p) for p in process_tree(self.proc.pid) if p != self.proc.pid}
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        for pid, start in tree.items():  # an rsync or ssh it left running (none once it is idle)
            if start is not None and _start_time(pid) == start:  # never a reused pid
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        if self.control is not None and Remote.server is not None:
            server = Remote.server
            subprocess.run([*server.ssh_argv("-o", f"ControlPath={self.control}", "-O", "exit")],
                           capture_output=True, timeout=10, stdin=subprocess.DEVNULL)
        self.reader.join(5)


def tree_paths(files: int, folders: int) -> set[str]:
    """The files make_tree(files, folders) writes, relative."""
    return {f"d{i % folders:03}/f{i:06}" for i in range(files)}


def complete(dst: Path, paths: set[str], size: int) -> bool:
    """Every path is at dst with `size` bytes (rsync renames a file into place once written)."""
    try:
        return all(os.stat(dst / p).st_size == size for p in paths)
    except OSError:
        return False


def missing_or_short(dst: Path, paths: set[str], size: int) -> int:
    n = 0
    for p in paths:
        try:
            n += os.stat(dst / p).st_size != size
        except OSError:
            n += 1
    return n


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def _percentiles(samples: list[float], prefix: str) -> dict[str, float | None]:
    if len(samples) < 2:
        return {f"{prefix}{k}_ms": None for k in ("p50", "p90", "p99", "max")}
    q = statistics.quantiles(samples, n=100, method="inclusive")  # never past the largest sample
    return {f"{prefix}p50_ms": statistics.median(samples), f"{prefix}p90_ms": q[89], f"{prefix}p99_ms": q[98],
            f"{prefix}max_ms": max(samples)}


def _ssh_command_ms(server: SshServer, n: int) -> tuple[float, float]:
    """Median ms of `ssh host true`: through a ControlMaster (what the daemon pays per remote
    command), and logging in anew (what an rsync of its own pays, as lsyncd's do)."""
    with ssh_master(server) as options:
        through = [timed([*server.ssh_argv(*options), "true"]) for _ in range(n)]
    login = [timed([*server.ssh_argv(), "true"]) for _ in range(max(3, n // 3))]
    return statistics.median(through) * 1000, statistics.median(login) * 1000


def scenario_remote_shell(base: Path, trash: Trash, commands: int) -> dict[str, Any]:
    """What one remote command costs over ssh, and the share of the remote user's shell rc files:
    the bench's server (HOME of its own unless --ssh-user-rc) against one where they run."""
    cmd_ms, login_ms = _ssh_command_ms(Remote.get(), commands)
    with SshServer(user_rc=not Remote.user_rc, log_level="INFO") as other:
        other_cmd_ms, other_login_ms = _ssh_command_ms(other, commands)
    with_rc, without = ((cmd_ms, other_cmd_ms) if Remote.user_rc else (other_cmd_ms, cmd_ms))
    return {"command_ms": cmd_ms, "login_ms": login_ms, "other_command_ms": other_cmd_ms,
            "other_login_ms": other_login_ms, "rc_overhead_ms": with_rc - without, "user_rc": Remote.user_rc}


def scenario_remote_latency(base: Path, trash: Trash, writes: int, gap_ms: float) -> dict[str, Any]:
    """One 4 KiB file at a time, `gap_ms` after the last one landed: close → renamed into place on
    the remote (inotify on the target folder, no polling floor; a partial copy does not count)."""
    out: dict[str, Any] = {}
    payload = os.urandom(4 * KIB)
    for tool in ("daemon", "lsyncd"):
        if tool == "lsyncd" and not Remote.lsyncd():
            out.update({f"lsyncd_{k}": None for k in ("p50_ms", "p90_ms", "p99_ms", "max_ms")})
            continue
        src, dst = base / f"rlat-{tool}-src", base / f"rlat-{tool}-dst"
        src.mkdir()
        dst.mkdir()
        runner: Daemon | Lsyncd
        if tool == "daemon":
            runner = d = Daemon(remote_config(base, src, dst))
            d.wait(lambda s: s.has("sync_finished", reason="startup"), 60)
        else:
            runner = lsy = Lsyncd(base, src, dst)
            lsy.wait_startup(60)
        watch = TargetWatch(dst)
        samples = []
        try:
            for i in range(writes):
                name = f"l{i:04}"
                fd = os.open(src / name, os.O_WRONLY | os.O_CREAT, 0o644)
                os.write(fd, payload)
                os.close(fd)
                t_close = time.perf_counter()
                t_seen = watch.wait_for(name, 30, functools.partial(complete, dst, {name}, len(payload)))
                samples.append((t_seen - t_close) * 1000)
                time.sleep(gap_ms / 1000)  # sleep-ok: spacing, so each write is a change on its own
        finally:
            watch.close()
            runner.stop()
        out.update(_percentiles(samples, "" if tool == "daemon" else "lsyncd_"))
        trash.put(src, dst)
    out["lsyncd_p50_vs_daemon"] = _ratio(out["lsyncd_p50_ms"], out["p50_ms"])
    return out


def scenario_remote_burst(base: Path, trash: Trash, files: int, folders: int) -> dict[str, Any]:
    """files × 4 KiB written as fast as possible into the watched source: first write → all
    complete on the remote (the daemon: its file_mirrored lines; lsyncd: its finished lists,
    checked on the target), against one `rsync -a` of the same tree over the same ssh, alone,
    through a master opened beforehand (the daemon's master is up before the first write)."""
    paths, size = tree_paths(files, folders), 4 * KIB
    src, dst = base / "rburst-src", base / "rburst-dst"
    src.mkdir()
    d = Daemon(remote_config(base, src, dst))
    d.wait(lambda s: s.has("sync_finished", reason="startup"), 60)
    t0 = time.monotonic()
    make_tree(src, files, size, folders)
    t_written = time.monotonic()
    t_done = d.wait(lambda s: len(s.mirrored) >= files, 900)
    cpu = cpu_split(d.proc.pid)
    d.stop()
    out: dict[str, Any] = {"daemon_s": t_done - t0, "daemon_after_writes_s": t_done - t_written,
                           "write_s": t_written - t0, "missing": missing_or_short(dst, paths, size), **cpu}
    rs_dst = base / "rburst-rsync"
    sync_caches()
    out["rsync_s"] = rsync_over_ssh(src, rs_dst, master=True)
    trash.put(src, dst, rs_dst)
    out["lsyncd_s"] = out["lsyncd_after_writes_s"] = out["lsyncd_write_s"] = out["lsyncd_missing"] = None
    out["lsyncd_rsyncs"] = None
    if Remote.lsyncd():
        src, dst = base / "rburst-lsyncd-src", base / "rburst-lsyncd-dst"
        src.mkdir()
        lsy = Lsyncd(base, src, dst)
        try:
            lsy.wait_startup(60)
            t0 = time.monotonic()
            make_tree(src, files, size, folders)
            t_written = time.monotonic()
            t_done = lsy.wait_mirrored(paths, lambda: complete(dst, paths, size), 1800)
            out.update(lsyncd_s=t_done - t0, lsyncd_after_writes_s=t_done - t_written,
                       lsyncd_write_s=t_written - t0, lsyncd_rsyncs=lsy.finished,
                       lsyncd_missing=missing_or_short(dst, paths, size))
        finally:
            lsy.stop()
        trash.put(src, dst)
    out["ratio_vs_rsync"] = _ratio(out["daemon_s"], out["rsync_s"])
    out["lsyncd_ratio_vs_rsync"] = _ratio(out["lsyncd_s"], out["rsync_s"])
    return out


def scenario_remote_catchup(base: Path, trash: Trash, files: int, folders: int) -> dict[str, Any]:
    """files present before the start, the remote target empty: start → complete on the remote
    (the daemon's startup sync_finished; lsyncd's startup rsync), beside one `rsync -a` over ssh
    that logs in itself (each of them starts from nothing); then the daemon's and rsync's
    run on a target already in sync."""
    paths, size = tree_paths(files, folders), 4 * KIB
    src = base / "rcu-src"
    make_tree(src, files, size, folders)
    sync_caches()
    rs_dst, dst = base / "rcu-rsync", base / "rcu-dst"
    out: dict[str, Any] = {"rsync_s": rsync_over_ssh(src, rs_dst, master=False),
                           "rsync_in_sync_s": rsync_over_ssh(src, rs_dst, master=False)}
    cfg = remote_config(base, src, dst)
    t0 = time.monotonic()
    d = Daemon(cfg)
    t_done = d.wait(lambda s: s.has("sync_finished", reason="startup"), 1800)
    ready = next((e["_t"] for e in d.events if e.get("event") == "daemon_ready"), None)
    cpu = cpu_split(d.proc.pid)
    d.stop()
    out.update(daemon_s=t_done - t0, daemon_ready_s=None if ready is None else ready - t0,
               missing=missing_or_short(dst, paths, size), **cpu)
    # a second start with everything in sync: the cost of the comparison (rsync's dry run) alone
    t1 = time.monotonic()
    d2 = Daemon(cfg)
    t_idle = d2.wait(lambda s: s.has("sync_finished", reason="startup"), 600)
    out.update(in_sync_start_s=t_idle - t1, copied_when_in_sync=len(d2.mirrored))
    d2.stop()
    trash.put(dst, rs_dst)
    out["lsyncd_s"] = out["lsyncd_missing"] = None
    if Remote.lsyncd():
        ls_dst = base / "rcu-lsyncd"
        t0 = time.monotonic()
        lsy = Lsyncd(base, src, ls_dst)
        try:
            out["lsyncd_s"] = lsy.wait_startup(1800) - t0
        finally:
            lsy.stop()
        out["lsyncd_missing"] = missing_or_short(ls_dst, paths, size)
        trash.put(ls_dst)
    trash.put(src)
    out["ratio_vs_rsync"] = _ratio(out["daemon_s"], out["rsync_s"])
    out["lsyncd_ratio_vs_rsync"] = _ratio(out["lsyncd_s"], out["rsync_s"])
    return out


def _wait_size(path: Path, size: int, timeout: float) -> float:
    """When `path` has `size` bytes (a 2 ms stat poll: a floor far below a big file's transfer)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            if os.stat(path).st_size == size:
                return time.monotonic()
        except FileNotFoundError:
            pass
        if time.monotonic() > deadline:
            raise TimeoutError(f"{path} never had {size} bytes")
        time.sleep(0.002)  # sleep-ok: poll interval of a deadline-bounded wait


def _write_big(path: Path, size_mib: int) -> float:
    chunk = os.urandom(1 << 20)
    with open(path, "wb") as f:
        for _ in range(size_mib):
            f.write(chunk)
    return time.monotonic()


class _BigCopy(NamedTuple):
    writer_s: float      # open → close of the big file
    close_to_done_s: float
    sent: list[int]      # the bytes of each file_mirrored line of it, in order


def _daemon_big_copy(base: Path, src: Path, dst: Path, size_mib: int, **opts: Any) -> _BigCopy:
    """The daemon (folder settings `opts`) mirroring one big file written into src to dst on
    the bench's sshd, until a file_mirrored line of it says every byte."""
    size = size_mib << 20
    src.mkdir()
    d = Daemon(remote_config(base, src, dst, **opts))
    try:
        d.wait(lambda s: s.has("sync_finished", reason="startup"), 60)
        t_open = time.monotonic()
        t_closed = _write_big(src / "big.bin", size_mib)
        t_done = _wait_size(dst / "big.bin", size, 1800)
        d.wait(lambda s: size in s.copy_bytes.get("big.bin", []), 60)
    finally:
        d.stop()
    return _BigCopy(t_closed - t_open, t_done - t_closed, d.copy_bytes["big.bin"])


def scenario_remote_bigfile(base: Path, trash: Trash, size_mib: int) -> dict[str, Any]:
    """One big file written into the watched source: close → complete on the remote (its name
    there with every byte: rsync renames it into place), as MB/s, beside `rsync -a` of the same
    file over the same ssh through a master opened beforehand (as the daemon's is)."""
    size = size_mib << 20
    src, dst = base / "rbig-src", base / "rbig-dst"
    # A write that lasts longer than max_delay (5 s) gets a copy of what the file had by
    # then (a busy copy), and the copy after close waits for it to end.
    copy = _daemon_big_copy(base, src, dst, size_mib)
    out: dict[str, Any] = {"daemon_MBps": size / copy.close_to_done_s / 1e6, "close_to_done_s": copy.close_to_done_s,
                           "copies": len(copy.sent), "busy_copies": sum(1 for n in copy.sent if n < size),
                           "writer_s": copy.writer_s}
    rs_dst = base / "rbig-rsync"
    out["rsync_MBps"] = size / rsync_over_ssh(src, rs_dst, master=True) / 1e6
    trash.put(rs_dst)
    # rsync with the ciphers the daemon offers its masters (AES-GCM first on a CPU with AES
    # instructions, remote/ssh.py): the same transfer engine, the same cipher.
    from foldermirror.remote.ssh import AES_FIRST
    rs_dst = base / "rbig-rsync-aes"
    out["rsync_aes_MBps"] = size / rsync_over_ssh(src, rs_dst, master=True, options=(f"Ciphers={AES_FIRST}",)) / 1e6
    trash.put(src, dst, rs_dst)
    # The same with max_delay: 0 (no copy before close, whatever the writer's pace): the
    # transfer alone.
    src, dst = base / "rbig-src0", base / "rbig-dst0"
    out["no_busy_MBps"] = size / _daemon_big_copy(base, src, dst, size_mib, max_delay="0s").close_to_done_s / 1e6
    trash.put(src, dst)
    out["lsyncd_MBps"] = out["lsyncd_close_to_done_s"] = out["lsyncd_rsyncs"] = None
    if Remote.lsyncd():
        src, dst = base / "rbig-lsyncd-src", base / "rbig-lsyncd-dst"
        src.mkdir()
        lsy = Lsyncd(base, src, dst)
        try:
            lsy.wait_startup(60)
            t_closed = _write_big(src / "big.bin", size_mib)
            t_done = _wait_size(dst / "big.bin", size, 1800)
            lsy.wait_mirrored({"big.bin"}, lambda: complete(dst, {"big.bin"}, size), 600)
            out.update(lsyncd_MBps=size / (t_done - t_closed) / 1e6, lsyncd_close_to_done_s=t_done - t_closed,
                       lsyncd_rsyncs=lsy.carried.get("big.bin", 0))
        finally:
            lsy.stop()
        trash.put(src, dst)
    out["ratio_vs_rsync"] = _ratio(out["daemon_MBps"], out["rsync_MBps"])
    out["no_busy_ratio_vs_rsync"] = _ratio(out["no_busy_MBps"], out["rsync_MBps"])
    out["no_busy_ratio_vs_rsync_aes"] = _ratio(out["no_busy_MBps"], out["rsync_aes_MBps"])
    out["lsyncd_ratio_vs_rsync"] = _ratio(out["lsyncd_MBps"], out["rsync_MBps"])
    return out


# The targets for the remote scenarios: (key, "<=" or ">=", bound), met by the median.
TARGETS: dict[str, list[tuple[str, str, float]]] = {
    "overwrite_versions": [("ratio_versions", "<=", 1.2)],
    "scale": [("ratio_catchup_vs_rsync", "<=", 1.2), ("ratio_in_sync_vs_rsync_dry_run", "<=", 1.2),
              ("ratio_ready_vs_inotifywait", "<=", 1.2)],
    "latency_load": [("burst_p99_ms", "<=", 100.0), ("catchup_p99_ms", "<=", 100.0)],
    "remote_latency": [("p50_ms", "<=", 80.0), ("p99_ms", "<=", 200.0)],
    "remote_burst": [("ratio_vs_rsync", "<=", 1.5)],
    "remote_catchup": [("ratio_vs_rsync", "<=", 1.2)],
    "remote_bigfile": [("ratio_vs_rsync", ">=", 0.9)],
}
REMOTE_SCENARIOS = ("remote_shell", "remote_latency", "remote_burst", "remote_catchup", "remote_bigfile")


def targets_met(name: str, summary: dict[str, Any]) -> list[dict[str, Any]]:
    out = []
    for key, op, bound in TARGETS.get(name, []):
        value = summary.get(key, {}).get("median") if isinstance(summary.get(key), dict) else None
        met = None if value is None else (value <= bound if op == "<=" else value >= bound)
        out.append({"key": key, "target": f"{op} {bound:g}", "median": value, "met": met})
    return out


# -- driver -----------------------------------------------------------------------------
def scenario_records(base: Path, trash: Trash, items: int) -> dict[str, Any]:
    """What naming the records costs: pickling a batch of WorkItems and their results as the
    pool and the workers do, against the same values as the plain tuples they replaced."""
    import pickle

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


_LOGLINES_CHILD = r"""
import io, sys, time
from foldermirror import logs
out = io.StringIO()
logs.configure_logging("info", "json", out)
log, n, best = logs.get_logger(), int(sys.argv[1]), float("inf")
for _ in range(5):
    t0 = time.perf_counter()
    for _ in range(n // 32):  # as the recorder writes them: one batch per worker message
        with logs.batch():
            for _ in range(32):
                log.info("file_mirrored", folder="photos", path="2026/12/dir07/IMG_004211.jpg", kind="file",
                         bytes=4096, duration_ms=0.214, latency_ms=12.532, worker_pid=4242)
    best = min(best, (time.perf_counter() - t0) / (n // 32 * 32) * 1e6)
    out.seek(0)
    out.truncate()
print(best)
"""


def scenario_loglines(base: Path, trash: Trash, lines: int) -> dict[str, Any]:
    """The main process's cost of one file_mirrored JSON line (the best of 5 rounds), in a
    child with the checkout's (or the baseline's) daemon on its path."""
    env = {**os.environ, "PYTHONPATH": _DAEMON_PATH[0]}
    out = subprocess.run([sys.executable, "-c", _LOGLINES_CHILD, str(lines)], env=env, check=True,
                         capture_output=True, text=True).stdout
    return {"us_per_line": float(out.split()[-1])}


def _tag_tree(root: Path) -> None:
    """A user.* attribute on every file and directory of a tree (what a tagged photo library has)."""
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            os.setxattr(os.path.join(dirpath, name), "user.tag", b"bench")


def _compare_us(src: Path, dst: Path, files: int, preserve: tuple[str, ...], rounds: int = 3) -> float:
    """Microseconds per file of one in-process comparison of src with its (in-sync) mirror."""
    from foldermirror.catchup.compare import diff_tree
    from foldermirror.paths import Excluder

    best = float("inf")
    for _ in range(rounds):
        t0 = time.perf_counter()
        found = sum(1 for _ in diff_tree(str(src), str(dst), Excluder(()), True, "bench", preserve=preserve))
        best = min(best, time.perf_counter() - t0)
        assert found == 0, f"{found} differences in a tree in sync"
    return best / files * 1e6


def scenario_preserve(base: Path, trash: Trash, files: int, folders: int, sparse_mib: int) -> dict[str, Any]:
    """What keeping xattrs, ACLs, holes and owners costs (preserve:, README "What a mirror keeps").

    - The comparison, in this process, per file, of a tree in sync: preserve: [] against the
      default, on files without and with a user.* attribute each (the best of 3 walks).
    - The daemon's catch-up of the tagged tree into an empty target: preserve: [] against the
      default (start → sync_finished).
    - One sparse file (`sparse_mib` MiB, 1 MiB of data in 4 islands) copied by the daemon
      with and without `sparse`: seconds and the blocks it takes in the mirror.
    """
    out: dict[str, Any] = {}
    src = base / "pr-src"
    make_tree(src, files, 4 * KIB, folders)
    for label, preserve in (("none", []), ("default", None)):
        dst = base / f"pr-dst-{label}"
        opts = {} if preserve is None else {"preserve": preserve}
        if label == "default":
            _tag_tree(src)
        t0 = time.monotonic()
        d = Daemon(write_config(base, src, dst, **opts))
        t_done = d.wait(lambda s: s.has("sync_finished", reason="startup"), 900)
        d.stop()
        out[f"catchup_{label}_s"] = t_done - t0
    untagged = base / "pr-untagged"
    shutil.copytree(src, untagged, symlinks=True)  # copytree keeps xattrs: strip them
    for dirpath, dirnames, filenames in os.walk(untagged):
        for name in dirnames + filenames:
            os.removexattr(os.path.join(dirpath, name), "user.tag")
    plain_dst = base / "pr-dst-none"  # mirrored with preserve: [], so without attributes
    out["compare_plain_none_us"] = _compare_us(untagged, plain_dst, files, ())
    out["compare_plain_default_us"] = _compare_us(untagged, plain_dst, files, ("xattrs", "acls", "sparse", "owner"))
    tagged_dst = base / "pr-dst-default"
    out["compare_tagged_none_us"] = _compare_us(src, tagged_dst, files, ())
    out["compare_tagged_default_us"] = _compare_us(src, tagged_dst, files, ("xattrs", "acls", "sparse", "owner"))
    sp_src = base / "pr-sparse-src"
    sp_src.mkdir()
    with open(sp_src / "disk.img", "wb") as f:
        f.truncate(sparse_mib << 20)
        for i in range(4):
            f.seek(i * (sparse_mib << 20) // 4)
            f.write(os.urandom(256 * KIB))
    out["sparse_source_blocks"] = os.stat(sp_src / "disk.img").st_blocks
    for label, preserve in (("dense", []), ("sparse", ["sparse"])):
        dst = base / f"pr-sparse-{label}"
        sync_caches()
        t0 = time.monotonic()
        d = Daemon(write_config(base, sp_src, dst, preserve=preserve))
        t_done = d.wait(lambda s: s.has("sync_finished", reason="startup"), 300)
        d.stop()
        out[f"sparse_copy_{label}_s"] = t_done - t0
        out[f"sparse_mirror_{label}_blocks"] = os.stat(dst / "disk.img").st_blocks
        trash.put(dst)
    trash.put(src, untagged, sp_src, *(base / f"pr-dst-{x}" for x in ("none", "default")))
    return out


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
    p.add_argument("--only", default="burst,events,bigfile,latency,catchup,idle",
                   help="scenarios, comma-separated; `remote` stands for " + ",".join(REMOTE_SCENARIOS))
    p.add_argument("--quick", action="store_true", help="small sizes and one run: checks the script works")
    p.add_argument("--json", default="bench-results.json", help="where to write the results")
    p.add_argument("--dir", default=None, help="work folder (default: a temp folder under /var/tmp)")
    p.add_argument("--baseline", default=None, metavar="CHECKOUT",
                   help="also measure the daemon of another checkout (e.g. a git worktree of an older commit), "
                        "run for run in turn with this one, and report both")
    p.add_argument("--fs-wait", type=float, default=300.0,
                   help=f"seconds to wait before a run while creating a file costs over {SLOW_CREATE_US:.0f} µs")
    p.add_argument("--bigfile-mib", type=int, default=None,
                   help="the big file's size for bigfile and remote_bigfile (default 2048, 64 with --quick)")
    p.add_argument("--scale-files", type=int, default=None,
                   help="the scale scenario's file count (default 1,000,000, in a tenth as many directories; "
                        "run it with --dir on a tmpfs: it writes two trees of that size)")
    p.add_argument("--ssh-user-rc", action="store_true",
                   help="remote scenarios: let the remote user's shell rc files run for every command (as the "
                        "test suite's sshd does) instead of giving the sessions an empty HOME")
    p.add_argument("--no-lsyncd", action="store_true", help="remote scenarios: leave lsyncd out")
    p.add_argument("--lsyncd-master", action="store_true",
                   help="remote scenarios: lsyncd's ssh and rsync share a ControlMaster (ControlPersist) instead "
                        "of logging in for every rsync as it does out of the box")
    args = p.parse_args(argv)
    q = args.quick
    Remote.user_rc, Remote.lsyncd_wanted, Remote.lsyncd_master = args.ssh_user_rc, not args.no_lsyncd, \
        args.lsyncd_master
    big_mib = args.bigfile_mib or (64 if q else 2048)
    runs = 1 if q else args.runs
    sizes = {
        "burst": dict(files=2000 if q else 20000, folders=50),
        "bigfile": dict(size_mib=big_mib),
        "latency": dict(writes=50 if q else 200),
        "latency_load": dict(files=4000 if q else 20000, folders=50, catchup_files=10000 if q else 100000,
                             gap_ms=100),
        "catchup": dict(files=5000 if q else 100000, folders=100),
        "idle": dict(folders=500 if q else 10000, per_folder=10, seconds=3 if q else 10),
        "events": dict(files=2000 if q else 20000, folders=50),
        "overwrite_versions": dict(files=2000 if q else 20000, folders=50),
        "records": dict(items=64),
        "loglines": dict(lines=3200 if q else 32000),
        "scale": dict(files=args.scale_files or (20000 if q else 1000000), burst=2000 if q else 20000,
                      dirs=(args.scale_files or (20000 if q else 1000000)) // 10),
        "preserve": dict(files=1000 if q else 10000, folders=20, sparse_mib=64 if q else 1024),
        "remote_shell": dict(commands=10 if q else 30),
        "remote_latency": dict(writes=30 if q else 200, gap_ms=50),
        "remote_burst": dict(files=1000 if q else 20000, folders=50),
        "remote_catchup": dict(files=2000 if q else 100000, folders=100),
        "remote_bigfile": dict(size_mib=big_mib),
    }
    fns: dict[str, Callable[..., dict[str, Any]]] = {"burst": scenario_burst, "events": scenario_events,
           "overwrite_versions": scenario_overwrite_versions, "bigfile": scenario_bigfile, "latency": scenario_latency,
           "latency_load": scenario_latency_load, "scale": scenario_scale,
           "catchup": scenario_catchup, "idle": scenario_idle, "records": scenario_records,
           "loglines": scenario_loglines,
           "preserve": scenario_preserve,
           "remote_shell": scenario_remote_shell, "remote_latency": scenario_remote_latency,
           "remote_burst": scenario_remote_burst, "remote_catchup": scenario_remote_catchup,
           "remote_bigfile": scenario_remote_bigfile}
    names = [n for s in args.only.split(",") if s for n in (REMOTE_SCENARIOS if s == "remote" else [s])]
    unknown = [n for n in names if n not in fns]
    if unknown:
        p.error(f"unknown scenario(s) {', '.join(unknown)}; known: {', '.join(fns)}, remote")
    daemons = [("", str(REPO / "daemon"))]
    if args.baseline:
        daemons.append(("baseline ", str(Path(args.baseline).resolve() / "daemon")))
    for _, path in daemons:
        compile_bytecode(path)
    base = Path(args.dir or tempfile.mkdtemp(prefix="fm-bench-", dir="/var/tmp"))
    base.mkdir(parents=True, exist_ok=True)
    trash = Trash(base)
    results: dict[str, Any] = {"machine": {"cpus": os.cpu_count(), "kernel": platform.release(),
                                           "python": platform.python_version()},
                               "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    try:
        for name in names:
            per_run: dict[str, list[dict[str, Any]]] = {label: [] for label, _ in daemons}
            for i in range(runs):
                for label, path in daemons if name not in ("records", "remote_shell") else daemons[:1]:
                    _DAEMON_PATH[0] = path
                    Remote.lsyncd_now = not label  # lsyncd once a run, beside this checkout's daemon
                    before = wait_for_fast_creates(base, 0 if q else args.fs_wait)
                    r = fns[name](base, trash, **sizes[name])
                    r["create_us_before"], r["create_us_after"] = before, file_create_cost(base)
                    per_run[label].append(r)
                    print(f"{label}{name} run {i + 1}: " + ", ".join(f"{k}={_fmt(v)}" for k, v in r.items()),
                          flush=True)
            for label, done in per_run.items():
                if not done:
                    continue
                summary = summarise(done)
                results[label + name] = {"params": sizes[name], "runs": done, "summary": summary}
                print(f"== {label}{name}: " + ", ".join(
                    f"{k}={_fmt(v['median'])} [{_fmt(v['min'])}..{_fmt(v['max'])}]"
                    for k, v in summary.items() if isinstance(v, dict)), flush=True)
                if name in TARGETS:
                    met = results[label + name]["targets"] = targets_met(name, summary)
                    print(f"   {label}{name} targets: " + ", ".join(
                        f"{t['key']} {t['target']}: {_fmt(t['median'])} "
                        f"{'met' if t['met'] else 'not met' if t['met'] is False else 'n/a'}" for t in met), flush=True)
            if name.startswith("remote_"):
                results["machine"]["remote"] = remote_facts()
    finally:
        for d in list(Daemon.running):
            d.stop()
        for lsy in list(Lsyncd.running):
            lsy.stop()
        Remote.close()
        Path(args.json).write_text(json.dumps(results, indent=2))
        print(f"results written to {args.json}")
        shutil.rmtree(base, ignore_errors=True)
    return 0


def remote_facts() -> dict[str, Any]:
    """What the remote scenarios ran with: versions, and how the remote user's shell was started."""
    def first_line(cmd: list[str]) -> str | None:
        try:
            r = subprocess.run(cmd, capture_output=True, text=True, timeout=10, stdin=subprocess.DEVNULL)
        except OSError:
            return None
        return (r.stdout or r.stderr).strip().splitlines()[0] if (r.stdout or r.stderr).strip() else None

    return {"rsync": first_line(["rsync", "--version"]), "ssh": first_line(["ssh", "-V"]),
            "lsyncd": Remote.lsyncd_version, "user_rc": Remote.user_rc, "lsyncd_master": Remote.lsyncd_master,
            "sshd_home": None if Remote.server is None or Remote.server.home is None else "empty, the server's"}


def _fmt(v: Any) -> str:
    return f"{v:.3g}" if isinstance(v, float) else str(v)


if __name__ == "__main__":
    sys.exit(main())
