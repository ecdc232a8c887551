"""Prometheus metrics, opt-in (`metrics: {listen: host:port}`), served by prometheus-client.

Counters and gauges are read from the read model's snapshot at scrape time (one source of
truth, shared with `status` and STATUS=); only the latency histogram is recorded as results come in. A registry of
our own, not the library's global one, keeps reloads and tests independent.
"""

from __future__ import annotations

import os
import socket
import threading
from collections.abc import Callable, Iterator
from multiprocessing.connection import wait
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, make_server

from prometheus_client import CollectorRegistry, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import ThreadingWSGIServer, make_wsgi_app

from foldermirror.config import MetricsConfig
from foldermirror.view.read_model import DaemonView, Health

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 1800.0)


class Metrics:
    def __init__(self, snapshot: Callable[[], DaemonView]) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.latency = Histogram("foldermirror_mirror_latency_seconds",
                                 "Time from a change being seen to its mirror being done", ["folder"],
                                 buckets=LATENCY_BUCKETS, registry=self.registry)
        self.registry.register(_Collector(snapshot))
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

        def per_folder(cls: Any, name: str, doc: str, key: str) -> Metric:
            m = cls(name, doc, labels=["folder"])
            for f in folders:
                value = getattr(f, key)
                m.add_metric([f.name], value if value is not None else 0)
            return m

        yield per_folder(CounterMetricFamily, "foldermirror_files_mirrored",
                         "Files and symlinks mirrored since start (directories are not counted)", "files")
        yield per_folder(CounterMetricFamily, "foldermirror_bytes_mirrored", "Bytes copied since start", "bytes")
        yield per_folder(CounterMetricFamily, "foldermirror_deletions", "Paths deleted from the target since start",
                         "deleted")
        failures = CounterMetricFamily("foldermirror_failures", "Failed mirror attempts by error kind (errno name)",
                                       labels=["folder", "kind"])
        for f in folders:
            for kind, count in sorted(f.failures.items()):
                failures.add_metric([f.name, kind], count)
        yield failures
        yield CounterMetricFamily("foldermirror_overflow_rescans",
                                  "Full rescans after the kernel's inotify queue overflowed",
                                  value=snap.overflow_rescans)
        yield CounterMetricFamily("foldermirror_worker_restarts",
                                  "Times the worker pool was replaced after a worker died",
                                  value=snap.worker_restarts)
        yield per_folder(GaugeMetricFamily, "foldermirror_pending", "Changed paths waiting to be mirrored", "pending")
        yield per_folder(GaugeMetricFamily, "foldermirror_in_flight", "Paths being mirrored by a worker now",
                         "in_flight")
        yield per_folder(GaugeMetricFamily, "foldermirror_lag_seconds",
                         "Age of the oldest change not yet mirrored (0 when none is pending)", "lag_s")
        yield per_folder(GaugeMetricFamily, "foldermirror_watched_directories",
                         "Source directories found by the last full comparison (each needs an inotify watch)",
                         "watched_directories")
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
