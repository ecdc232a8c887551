"""The code that runs in pool workers stays on the standard library.

Each worker (and the fork server) is an interpreter of its own: whatever importing the copier
pulls in is paid in memory once per worker (README, "Idle memory") and must import in every one
of them. So importing foldermirror.pipeline.worker (the Pool's initializer and task) loads no
third-party module, and of this package only the modules listed here: adding one to the worker
side is a decision, made here.
"""

from __future__ import annotations

import json
import subprocess
import sys

from helpers import DAEMON_PATH, ENV, SITE_PACKAGES

WORKER_MODULE = "foldermirror.pipeline.worker"
# Our modules a worker may import, each stdlib-only itself.
ALLOWED_OWN = {
    "foldermirror",
    "foldermirror.pipeline",
    "foldermirror.pipeline.worker",
    "foldermirror.pipeline.copier",
    "foldermirror.pipeline.records",
    "foldermirror.pipeline.targets",
    "foldermirror.pipeline.versions",
    "foldermirror.pipeline.fidelity",  # xattrs, ACLs, holes, owners (preserve:)
    "foldermirror.tempnames",
    "foldermirror.faults",
}
THIRD_PARTY = ("watchdog", "yaml", "structlog", "prometheus_client")

# -S: no site, so no .pth file imports anything first (one on the bench machine imports certifi)
# and every module loaded after the baseline is one the import itself brought in.
PROBE = f"""
import json, sys
sys.path[:0] = [{DAEMON_PATH!r}]
sys.path += {SITE_PACKAGES!r}
before = set(sys.modules)
import {WORKER_MODULE}
print(json.dumps(sorted(set(sys.modules) - before)))
"""


def loaded_by_importing_the_worker() -> list[str]:
    r = subprocess.run([sys.executable, "-S", "-c", PROBE], capture_output=True, text=True, env=ENV,
                       timeout=60, stdin=subprocess.DEVNULL)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def test_the_worker_side_imports_only_the_standard_library_and_the_listed_modules():
    new = loaded_by_importing_the_worker()
    own = {m for m in new if m == "foldermirror" or m.startswith("foldermirror.")}
    assert own <= ALLOWED_OWN, (f"{WORKER_MODULE} now imports {sorted(own - ALLOWED_OWN)}: keep the worker side "
                                f"small, or add them to ALLOWED_OWN if they are stdlib-only and meant to be there")
    assert WORKER_MODULE in own  # the probe did import it (and fresh: it was not loaded before)
    foreign = sorted(m for m in set(new) - own if m.partition(".")[0] not in sys.stdlib_module_names)
    assert not foreign, f"{WORKER_MODULE} imports modules outside the standard library: {foreign}"
    named = sorted(m for m in new if m.partition(".")[0] in THIRD_PARTY)
    assert not named, named


FROZEN_IN_A_WORKER = f"""
import gc, multiprocessing, sys
sys.path[:0] = [{DAEMON_PATH!r}]
from foldermirror.pipeline.pool import FORK_SERVER_PRELOAD
ctx = multiprocessing.get_context("forkserver")
ctx.set_forkserver_preload(list(FORK_SERVER_PRELOAD))
with ctx.Pool(1) as pool:
    print(pool.apply(gc.get_freeze_count))
"""


def test_workers_are_forked_with_the_preloaded_modules_frozen_out_of_the_collector():
    # The fork server imports FORK_SERVER_PRELOAD in order; fork_freeze must come last, or
    # what is imported after it is collected (and its pages copied) in every worker again.
    from foldermirror.pipeline.pool import FORK_SERVER_PRELOAD
    assert FORK_SERVER_PRELOAD[-1] == "foldermirror.pipeline.fork_freeze"
    r = subprocess.run([sys.executable, "-c", FROZEN_IN_A_WORKER], capture_output=True, text=True, env=ENV,
                       timeout=60, stdin=subprocess.DEVNULL)
    assert r.returncode == 0, r.stderr
    frozen = int(r.stdout)
    assert frozen > 10_000, f"a worker inherited only {frozen} frozen objects from the fork server"
