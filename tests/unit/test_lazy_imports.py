"""The daemon's main process imports what only some configs or commands need when they need it.

Each module stays in the idle daemon's memory for good: pathspec (about 30 modules, 0.7 MiB)
only for a folder with exclude patterns, importlib.metadata (and the email package under it)
only for `files` and `install-units` outside a checkout.
"""

from __future__ import annotations

import json
import subprocess
import sys

from helpers import DAEMON_PATH, ENV, SITE_PACKAGES

PROBE = f"""
import json, sys
sys.path[:0] = [{DAEMON_PATH!r}]
sys.path += {SITE_PACKAGES!r}
import foldermirror.cli, foldermirror.service
from foldermirror.filters import Excluder
plain = Excluder(())
plain("a/b", False)
print(json.dumps(sorted(sys.modules)))
Excluder(("*.tmp",))
print(json.dumps(sorted(sys.modules)))
"""


def test_a_daemon_without_excludes_loads_neither_pathspec_nor_importlib_metadata():
    # -S: no site, so no .pth file has imported either of them before the probe looks.
    r = subprocess.run([sys.executable, "-S", "-c", PROBE], capture_output=True, text=True, env=ENV,
                       timeout=60, stdin=subprocess.DEVNULL)
    assert r.returncode == 0, r.stderr
    without, with_excludes = (set(json.loads(line)) for line in r.stdout.splitlines())
    assert "foldermirror.service" in without
    assert not {m for m in without if m.partition(".")[0] == "pathspec"}
    assert "importlib.metadata" not in without
    assert "pathspec" in with_excludes  # the probe can see it when it is there
