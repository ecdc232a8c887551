"""What the main loop waits on: the signals its handlers record, and wake-ups from other threads.

A signal handler only puts its number here (as gunicorn's arbiter); the loop acts on it.
Other threads call wake() when they hand the loop new work, which cuts its sleep short, but
only while it sleeps: a busy loop looks again within a tick anyway, and a flood of changes
must not become a flood of wake-ups.
"""

from __future__ import annotations

import queue

WAKE = 0  # on the queue: not a signal, "look again"


class Wakeup:
    def __init__(self) -> None:
        self._queue: queue.SimpleQueue[int] = queue.SimpleQueue()
        self.sleeping = False       # the loop waits for a deadline: wake() interrupts it
        self.sleeping_long = False  # ...one further off than the status line's pace: so does a change

    def signal(self, signum: int) -> None:
        """The signal handlers' only action."""
        self._queue.put(signum)

    def arm(self, long: bool = True) -> None:
        """Before the loop looks for work: whatever is handed over meanwhile wakes the wait."""
        self.sleeping, self.sleeping_long = True, long

    def disarm(self) -> None:
        self.sleeping = self.sleeping_long = False

    def wait(self, timeout: float | None) -> int | None:
        """The next signal or WAKE, or None when `timeout` passes first."""
        try:
            return self._queue.get(timeout=timeout)
        except queue.Empty:
            return None
        finally:
            self.disarm()

    def wake(self) -> None:
        """Any thread: the loop has something new to look at."""
        if self.sleeping:
            self.disarm()
            self._queue.put(WAKE)

    def change(self) -> None:
        """A new pending path: it only changes the status line, which may wait for the next
        pass if that comes soon, so only a long sleep is cut short."""
        if self.sleeping_long:
            self.wake()

    def drain(self) -> list[int]:
        """What is queued, without waiting (for tests)."""
        out = []
        while True:
            try:
                out.append(self._queue.get_nowait())
            except queue.Empty:
                return out
