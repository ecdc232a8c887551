"""The main loop's deadlines (Service._next_wait) and its wake-up, on a Service that is
constructed but never run: nothing is admitted, forked or watched, and the ChangeQueue runs
on a fake clock.
"""

from __future__ import annotations

import multiprocessing
import threading
from pathlib import Path

import pytest

from fakes import Clock
from foldermirror.catchup.compare import Request
from foldermirror.config import parse_config
from foldermirror.folderstate import CatchUp, FolderState
from foldermirror.notify import Notifier
from foldermirror.paths import Excluder
from foldermirror.pipeline.folder_stats import Tally
from foldermirror.pipeline.target_health import LocalTargetHealth
from foldermirror.service import PROGRESS_INTERVAL, TICK, Service
from foldermirror.wakeup import WAKE


def make_service(tmp_path: Path, rescan: str = "0") -> tuple[Service, Clock]:
    (tmp_path / "src").mkdir()
    text = f"workers: 1\nrescan_interval: {rescan}\nfolders:\n  - {{name: data, source: src, target: dst}}\n"
    service = Service(parse_config(text, str(tmp_path / "config.yaml")), notifier=Notifier(""))
    clock = Clock()
    service.changes.clock = clock
    service._ping_every = None  # whatever WATCHDOG_USEC the test runner has
    service._last_status = service._status_text()  # the status line was sent: no progress deadline
    return service, clock


def signals(service: Service) -> list[int]:
    return service.wakeup.drain()


def test_constructing_a_service_starts_no_thread_and_no_process(tmp_path: Path):
    threads = set(threading.enumerate())
    make_service(tmp_path)
    assert set(threading.enumerate()) == threads
    assert multiprocessing.active_children() == []


def test_idle_with_no_deadline_it_sleeps_until_woken(tmp_path: Path):
    service, clock = make_service(tmp_path)
    assert service._next_wait(clock.now) is None
    assert service.wakeup.sleeping and service.wakeup.sleeping_long


def test_a_change_due_now_sets_the_working_pace(tmp_path: Path):
    service, clock = make_service(tmp_path)
    service.changes.touch("data", "a", settle=0.25, ready=True)
    assert service._next_wait(clock.now) == TICK
    assert not service.wakeup.sleeping


def test_a_settling_change_sets_the_working_pace(tmp_path: Path):
    service, clock = make_service(tmp_path)
    service.changes.touch("data", "a", settle=0.25)
    assert service._next_wait(clock.now) == TICK


def test_a_retry_backoff_is_slept_out(tmp_path: Path):
    service, clock = make_service(tmp_path)
    service.changes.touch("data", "a", settle=0.25, ready=True, not_before=clock.now + 7)
    assert service._next_wait(clock.now) == pytest.approx(7)


def test_a_pending_catch_up_request_sets_the_working_pace(tmp_path: Path):
    service, clock = make_service(tmp_path)
    service.catch_ups.reconciler.request(Request("data", "", "rescan", ready=True))
    assert service._next_wait(clock.now) == TICK


def test_a_running_catch_up_sets_the_working_pace(tmp_path: Path):
    service, clock = make_service(tmp_path)
    f = service.config.folders[0]
    service.folders["data"] = FolderState(f, Excluder(f.exclude), LocalTargetHealth(str(f.target), "test"), catch_up=CatchUp("startup", clock.now, Tally()))
    service._last_status = service._status_text()
    assert service._next_wait(clock.now) == TICK
    assert not service.wakeup.sleeping


def test_the_rescan_interval_bounds_the_sleep(tmp_path: Path):
    service, clock = make_service(tmp_path, rescan="30s")
    service._next_rescan = clock.now + 30
    assert service._next_wait(clock.now) == pytest.approx(30)
    assert service._next_wait(clock.now + 20) == pytest.approx(10)


def test_the_watchdog_ping_bounds_the_sleep(tmp_path: Path):
    service, clock = make_service(tmp_path, rescan="30s")
    service._next_rescan = clock.now + 30
    service._ping_every = 5.0
    service._last_ping = clock.now - 1
    assert service._next_wait(clock.now) == pytest.approx(4)


def test_a_deadline_already_past_is_looked_at_at_the_working_pace(tmp_path: Path):
    service, clock = make_service(tmp_path)
    service._ping_every = 5.0
    service._last_ping = clock.now - 6  # a ping withheld while unhealthy
    assert service._next_wait(clock.now) == TICK


def test_a_changed_status_line_is_sent_within_the_progress_interval(tmp_path: Path):
    service, clock = make_service(tmp_path)
    service._last_status = "something else"
    service._last_progress = clock.now
    assert service._next_wait(clock.now) == pytest.approx(PROGRESS_INTERVAL)


def test_a_change_made_during_a_long_sleep_wakes_it(tmp_path: Path):
    service, clock = make_service(tmp_path)
    assert service._next_wait(clock.now) is None
    service.changes.touch("data", "a", settle=0.25)
    assert signals(service) == [WAKE]
    service.changes.touch("data", "b", settle=0.25)
    assert signals(service) == []  # once: the flags are down until the loop sleeps again


def test_a_change_made_during_a_short_sleep_waits_for_its_end(tmp_path: Path):
    service, clock = make_service(tmp_path)
    service._ping_every = 0.5
    service._last_ping = clock.now
    assert service._next_wait(clock.now) == pytest.approx(0.5)
    service.changes.touch("data", "a", settle=0.25)
    assert signals(service) == []
    service._wake()  # new work of another kind cuts any sleep short
    assert signals(service) == [WAKE]


def test_a_wake_while_the_loop_is_not_sleeping_queues_nothing(tmp_path: Path):
    service, _ = make_service(tmp_path)
    service._wake()
    service.changes.touch("data", "a", settle=0.25)
    assert signals(service) == []


def test_the_end_of_the_wait_ends_the_sleep(tmp_path: Path):
    service, clock = make_service(tmp_path)
    assert service._next_wait(clock.now) is None
    assert service.wakeup.wait(0) is None  # the deadline came
    assert not service.wakeup.sleeping and not service.wakeup.sleeping_long
    service.changes.touch("data", "a", settle=0.25)
    assert signals(service) == []  # awake: the loop sees it on this pass
