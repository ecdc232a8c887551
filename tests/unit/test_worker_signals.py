"""A pool worker's SIGTERM: it unwinds the copy in progress, whose finally removes the temp file."""

from __future__ import annotations

import signal
import subprocess
import sys

from helpers import DAEMON_PATH, ENV

TERM_DURING_CLEAN_UP = f"""
import signal, sys
sys.path[:0] = [{DAEMON_PATH!r}]
from foldermirror.pipeline import worker
signal.signal(signal.SIGTERM, worker._on_term)  # as init_worker installs it
print("copying", flush=True)
try:
    sys.stdin.readline()  # a copy in progress: the first SIGTERM ends it
finally:
    print("cleaning", flush=True)
    sys.stdin.readline()  # the temp file's removal: the second SIGTERM comes now
    print("cleaned", flush=True)
"""


def test_a_second_sigterm_does_not_cut_a_workers_clean_up_short():
    # A retired generation's workers get SIGTERM twice (Pool.terminate() and pool._retire):
    # a second SystemExit raised inside the first one's finally left a temp file behind.
    with subprocess.Popen([sys.executable, "-c", TERM_DURING_CLEAN_UP], stdin=subprocess.PIPE,
                          stdout=subprocess.PIPE, text=True, env=ENV) as p:
        assert p.stdout is not None and p.stdin is not None
        try:
            assert p.stdout.readline() == "copying\n"
            p.send_signal(signal.SIGTERM)
            assert p.stdout.readline() == "cleaning\n"
            p.send_signal(signal.SIGTERM)
            p.stdin.write("done\n")
            p.stdin.flush()
            assert p.stdout.readline() == "cleaned\n"
            assert p.wait(30) == 0
        finally:
            p.kill()
