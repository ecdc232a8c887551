"""The operator's view beside the log: status socket, metrics, per-folder stats, folded failures, traces.

`OperatorView` keeps what `foldermirror status` and the metrics endpoint report (the
per-folder `FolderStats`, fed by every worker outcome), folds repeated failures into
`mirror_failed_repeated` lines, follows traced paths, and runs the control socket and the
metrics server. Both read the read model's snapshot (read_model.py).
"""

from __future__ import annotations

import errno
import logging
import time
from collections.abc import Callable, Mapping
from typing import Any

from foldermirror.config import Config
from foldermirror.folderstate import FolderState
from foldermirror.logs import Repeats, Tracer
from foldermirror.pipeline.changes import ChangeQueue
from foldermirror.pipeline.copier import describe
from foldermirror.pipeline.folder_stats import FolderStats
from foldermirror.pipeline.records import Outcome, Status
from foldermirror.view.control import ControlError, ControlServer, socket_paths
from foldermirror.view.read_model import ReadModel


class OperatorView:
    def __init__(self, *, log: Any, folders: Mapping[str, FolderState], trace: tuple[str, ...]) -> None:
        self.log = log
        self.folders = folders
        self.request_catch_up: Callable[[str, str], None] | None = None  # set by start()
        self.started = time.monotonic()
        self.started_wall = time.time()
        self._folder_stats: dict[str, FolderStats] = {}
        self.repeats = Repeats()
        self.tracer: Tracer | None = None
        self.control: ControlServer | None = None
        self.metrics: Any = None  # metrics.Metrics when configured (prometheus-client is imported only then)
        if log.is_enabled_for(logging.DEBUG):
            self.tracer = Tracer(log, trace)

    def follow(self, changes: ChangeQueue) -> None:
        """At debug level, trace paths through the queue too."""
        if self.tracer is not None:
            changes.tracer = self.tracer.queue_hook

    def folder_stats(self, name: str) -> FolderStats:
        """Counters of one folder since start (kept across a reload that changes the folder)."""
        stats = self._folder_stats.get(name)
        return stats if stats is not None else self._folder_stats.setdefault(name, FolderStats())

    def addresses(self) -> tuple[str | None, str | None]:
        """Where the control socket and the metrics listen (None: not at all)."""
        return (str(self.control.path) if self.control is not None else None,
                self.metrics.address if self.metrics is not None else None)

    def all_stats(self) -> list[FolderStats]:
        """Every folder's counts since start, removed folders' included."""
        return list(self._folder_stats.values())

    def start(self, config: Config, model: ReadModel, request_catch_up: Callable[[str, str], None]) -> None:
        """Open the control socket and (when configured) the metrics server.

        Both report `model`'s snapshot; `request_catch_up` answers a `rescan`.
        """
        self.request_catch_up = request_catch_up
        control = ControlServer({"status": lambda req: {"status": model.snapshot().to_json()}, "rescan": self._rescan_request})
        explicit = config.control_socket is not None
        try:
            skipped = control.bind(socket_paths(config), explicit)
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                # `status` and `rescan` for this config now reach the other daemon, not this one.
                fix = ("another foldermirror listens there: it runs this config or shares its control_socket:. "
                       "Stop one of the two if they run the same config, else give each config its own "
                       "control_socket: (or none: the default is per config), then restart this one; "
                       "mirroring goes on without the socket")
            else:
                fix = ("set control_socket: to a path in a folder the service user can write (with "
                       "systemd: RuntimeDirectory=foldermirror); mirroring goes on without it")
            self.log.error("control_socket_unavailable", error=exc.strerror or str(exc), fix=fix)
        else:
            self.control = control
            control.start()
            self.log.info("control_socket_listening", path=str(control.path),
                          **({"skipped": skipped} if skipped else {}))
        if config.metrics is not None:
            from foldermirror.view.metrics import Metrics

            metrics = Metrics(model.snapshot)
            try:
                address = metrics.start(config.metrics)
            except OSError as exc:
                self.log.error("metrics_unavailable", listen=config.metrics.listen,
                               error=describe(exc),
                               fix="choose a free port in metrics.listen (or stop what uses it), then restart; "
                                   "mirroring goes on without metrics")
            else:
                self.metrics = metrics
                self.log.info("metrics_listening", listen=address)

    def stop(self) -> None:
        if self.control is not None:
            self.control.stop()
        if self.metrics is not None:
            self.metrics.stop()

    def _rescan_request(self, req: dict[str, Any]) -> dict[str, Any]:
        """A `rescan` on the control socket: compare one folder (or all) with its target now."""
        name = req.get("folder")
        if name is not None and name not in self.folders:
            raise ControlError(f"no folder named {name!r}; folders: {', '.join(self.folders)}")
        names = [name] if name is not None else list(self.folders)
        assert self.request_catch_up is not None
        for n in names:
            self.request_catch_up(n, "requested")
        self.log.info("rescan_requested", folders=names)
        return {"rescan": names}

    def observe(self, folder: str, outcome: Outcome, latency_ms: float) -> None:
        """One worker outcome (already counted in its FolderStats): the latency histogram and the trace."""
        if self.metrics is not None and (outcome.status.mirrored or outcome.status is Status.DELETED):
            self.metrics.observe(folder, latency_ms / 1000)
        if self.tracer is not None:
            self.tracer.step("done", folder, outcome.path, status=str(outcome.status), latency_ms=latency_ms)

    def log_repeats(self, flush: bool = False) -> None:
        """A `mirror_failed_repeated` line for each window of folded failures that ended (all, with flush)."""
        for run in self.repeats.due(flush):
            folder, error = run.key
            self.log.error("mirror_failed_repeated", folder=folder, error=error, count=run.count,
                           paths=run.paths, last_path=run.last_path,
                           window_s=round(self.repeats.clock() - run.started, 1),
                           **{k: v for k, v in run.fields.items() if k in ("errno", "fix")})
