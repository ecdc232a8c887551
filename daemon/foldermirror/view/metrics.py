"""Prometheus metrics, opt-in (`metrics: {listen: host:port}`), served by prometheus-client.

Counters and gauges are read from the read model's snapshot at scrape time (one source of
truth, shared with `status` and STATUS=); only the latency histogram is recorded as results
come in. A registry of our own, not the library's global one, keeps reloads and tests
independent; it carries the library's standard process, platform and GC collectors too.
Names follow Prometheus's conventions (`promtool check metrics` is clean, and a test runs
it): base units as the last word, `_total` on counters, labels named for what they hold.
Each one is listed in the README ("Metrics").
"""

from __future__ import annotations

import os
import socket
import threading
from collections.abc import Callable, Iterator
from multiprocessing.connection import wait
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, make_server

from prometheus_client import CollectorRegistry, GCCollector, Histogram, PlatformCollector, ProcessCollector
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import ThreadingWSGIServer, make_wsgi_app

from foldermirror.config import MetricsConfig
from foldermirror.view.read_model import DaemonView, FolderView, Health

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 1800.0)


class Metrics:
    def __init__(self, snapshot: Callable[[], DaemonView]) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.latency = Histogram("foldermirror_mirror_latency_seconds",
                                 "Time from a change being seen to its mirror being done", ["folder"],
                                 buckets=LATENCY_BUCKETS, registry=self.registry)
        self.registry.register(_Collector(snapshot))
        # What the library's global registry would have: process_* (of the main process only, not
        # the workers), python_info and python_gc_*.
        ProcessCollector(registry=self.registry)
        PlatformCollector(registry=self.registry)
        GCCollector(registry=self.registry)
        self._server: Any = None
        self._thread: threading.Thread | None = None
        self._wake: tuple[int, int] | None = None
        self.address: str | None = None

    def observe(self, folder: str, seconds: float) -> None:
        self.latency.labels(folder).observe(seconds)

    def start(self, listen: MetricsConfig) -> str:
        """Serve /metrics; returns host:port actually bound (port 0 picks a free one)."""
        family = socket.getaddrinfo(listen.host, listen.port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0][0]
        server_class = type("MetricsServer", (ThreadingWSGIServer,), {"address_family": family})
        self._server = make_server(listen.host, listen.port, make_wsgi_app(self.registry), server_class,
                                   handler_class=_QuietHandler)
        self._server.timeout = 0  # handle_request() is called only when a connection waits
        self._wake = os.pipe()
        self._thread = threading.Thread(target=self._serve, name="metrics", daemon=True)
        self._thread.start()
        port = self._server.server_port
        self.address = f"[{listen.host}]:{port}" if ":" in listen.host else f"{listen.host}:{port}"
        return self.address

    def _serve(self) -> None:
        # Not serve_forever(): it wakes every 0.5 s to look for shutdown(); this sleeps
        # until a scrape comes or stop() writes to the wake pipe.
        assert self._server is not None and self._wake is not None
        while self._wake[0] not in wait([self._server.socket, self._wake[0]]):
            self._server.handle_request()

    def stop(self) -> None:
        if self._server is not None and self._wake is not None and self._thread is not None:
            os.write(self._wake[1], b"\0")
            self._thread.join(5)
            self._server.server_close()
            self._server = None
            for fd in self._wake:
                os.close(fd)
            self._wake = None


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base class's name
        pass  # a scrape is not worth a log line


class _Collector:
    def __init__(self, snapshot: Callable[[], DaemonView]) -> None:
        self.snapshot = snapshot

    def describe(self) -> list[Metric]:
        return []  # families are only known at collect time

    def collect(self) -> Iterator[Metric]:
        snap = self.snapshot()
        folders = snap.folders

        def per_folder(cls: Any, name: str, doc: str, value: Callable[[FolderView], float | None]) -> Metric:
            """One sample per folder; a folder whose value is None has none."""
            m = cls(name, doc, labels=["folder"])
            for f in folders:
                v = value(f)
                if v is not None:
                    m.add_metric([f.name], v)
            return m

        build = GaugeMetricFamily("foldermirror_build_info", "Always 1; the version of foldermirror running",
                                  labels=["version"])
        build.add_metric([snap.version], 1)
        yield build
        # Counters: CounterMetricFamily adds _total to the name it is given.
        yield per_folder(CounterMetricFamily, "foldermirror_mirrored_files",
                         "Files and symlinks mirrored since start (directories are not counted)",
                         lambda f: f.files_mirrored)
        yield per_folder(CounterMetricFamily, "foldermirror_mirrored_bytes", "Bytes copied since start",
                         lambda f: f.bytes_mirrored)
        yield per_folder(CounterMetricFamily, "foldermirror_deletions", "Paths deleted from the target since start",
                         lambda f: f.deleted)
        failures = CounterMetricFamily("foldermirror_failures", "Failed mirror attempts by errno name (or other)",
                                       labels=["folder", "errno"])
        for f in folders:
            for name, count in sorted(f.failures.items()):
                failures.add_metric([f.name, name], count)
        yield failures
        yield CounterMetricFamily("foldermirror_overflow_rescans",
                                  "Full rescans after the kernel's inotify queue overflowed",
                                  value=snap.overflow_rescans)
        yield CounterMetricFamily("foldermirror_worker_restarts",
                                  "Times the worker pool was replaced after a worker died",
                                  value=snap.worker_restarts)
        yield per_folder(GaugeMetricFamily, "foldermirror_pending_paths", "Changed paths waiting to be mirrored",
                         lambda f: f.pending)
        yield per_folder(GaugeMetricFamily, "foldermirror_in_flight_paths", "Paths being mirrored by a worker now",
                         lambda f: f.in_flight)
        yield per_folder(GaugeMetricFamily, "foldermirror_failing_paths",
                         "Paths whose last attempt failed and that have not been mirrored since", lambda f: f.failing)
        yield per_folder(GaugeMetricFamily, "foldermirror_lag_seconds",
                         "Age of the oldest change not yet mirrored (0 when none is pending)", lambda f: f.lag_s)
        yield per_folder(GaugeMetricFamily, "foldermirror_last_full_comparison_timestamp_seconds",
                         "Unix time the last catch-up ended whose comparison covered the whole folder "
                         "(none until the first since start)", lambda f: f.last_full_comparison)
        yield per_folder(GaugeMetricFamily, "foldermirror_versions",
                         "Versions kept in the folder's versions area (folders with versions on only)",
                         lambda f: None if f.versions is None else f.versions.count)
        yield per_folder(GaugeMetricFamily, "foldermirror_versions_bytes",
                         "Bytes of the versions kept in the folder's versions area",
                         lambda f: None if f.versions is None else f.versions.bytes)
        yield per_folder(GaugeMetricFamily, "foldermirror_versions_oldest_timestamp_seconds",
                         "Unix time the oldest version kept left the mirror (none while there is none)",
                         lambda f: None if f.versions is None or f.versions.oldest_ns is None
                         else f.versions.oldest_ns / 1e9)
        yield per_folder(GaugeMetricFamily, "foldermirror_catchup_running",
                         "1 while a catch-up (a comparison and mirroring what it found) runs, else 0",
                         lambda f: int(f.catch_up is not None))
        yield per_folder(GaugeMetricFamily, "foldermirror_catchup_comparing",
                         "1 while the running catch-up is still comparing the folder with its target, else 0",
                         lambda f: int(f.catch_up is not None and not f.catch_up.walk_done))
        yield per_folder(GaugeMetricFamily, "foldermirror_catchup_copied_files",
                         "Files and symlinks the running catch-up has copied so far (0 when none runs)",
                         lambda f: 0 if f.catch_up is None else f.catch_up.files_mirrored)
        yield per_folder(GaugeMetricFamily, "foldermirror_catchup_files_to_copy",
                         "Files and symlinks the running catch-up's comparison found to copy "
                         "(0 while it is comparing and when none runs)",
                         lambda f: 0 if f.catch_up is None else f.catch_up.to_copy)
        yield per_folder(GaugeMetricFamily, "foldermirror_watched_directories",
                         "Source directories found by the last full comparison (each needs an inotify watch)",
                         lambda f: f.watched_directories or 0)
        watches = GaugeMetricFamily("foldermirror_inotify_max_user_watches",
                                    "fs.inotify.max_user_watches: the inotify watches one user may hold, "
                                    "across all its processes (none when it cannot be read)")
        if snap.max_user_watches is not None:
            watches.add_metric([], snap.max_user_watches)
        yield watches
        links = {f.link.host: f.link for f in folders if f.link is not None}
        up = GaugeMetricFamily("foldermirror_remote_up", "1 while the ssh connection to a remote target's host is up",
                               labels=["host"])
        reconnects = CounterMetricFamily("foldermirror_remote_reconnects",
                                         "Times the connection to a host was made again after it was lost",
                                         labels=["host"])
        rtt = GaugeMetricFamily("foldermirror_remote_rtt_seconds",
                                "Round trip of a session through the host's connection, when it was made",
                                labels=["host"])
        for host, link in sorted(links.items()):
            up.add_metric([host], 1 if link.state == "up" else 0)
            reconnects.add_metric([host], link.reconnects)
            if link.rtt_ms is not None:
                rtt.add_metric([host], link.rtt_ms / 1000)
        yield up
        yield reconnects
        yield rtt
        state = GaugeMetricFamily("foldermirror_folder_state", "1 for the folder's current state, 0 for the others",
                                  labels=["folder", "state"])
        for f in folders:
            for s in Health:
                state.add_metric([f.name, str(s)], 1 if f.state is s else 0)
        yield state
