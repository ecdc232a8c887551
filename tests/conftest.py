"""Fixtures for every level of tests; the helpers they use are in helpers.py.

pytest puts daemon/ and tests/ on sys.path (`pythonpath` in pyproject.toml), so
`import foldermirror` is this checkout's package and `from helpers import ...` works from
tests/unit/, tests/daemon/ and tests/system/ alike.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import pytest

pytest.register_assert_rewrite("helpers")  # before the import: its asserts explain themselves too

from helpers import ENV, Daemon  # noqa: E402
from sshd import SshServer, missing_tools  # noqa: E402

# Processes this one starts without going through ENV, above all multiprocessing's fork server
# (an in-process WorkerPool in tests/unit): without this they would import foldermirror from
# wherever it is pip-installed, which may be another checkout.
os.environ["PYTHONPATH"] = ENV["PYTHONPATH"]


@pytest.fixture
def daemon_factory() -> Iterator[Callable[..., Daemon]]:
    started: list[Daemon] = []

    def start(config: Path, *args: str, env: dict[str, str] | None = None, prefix: Sequence[str] = ()) -> Daemon:
        d = Daemon(config, *args, env=env, prefix=prefix)
        started.append(d)
        return d

    yield start
    for d in started:
        if d.proc.poll() is None:
            d.proc.kill()
            d.proc.wait()
        d.close()
    # internal_error is a bug the daemon survived: whatever the test was about, it fails.
    bugs = [r for d in started for r in d.events("internal_error")]
    assert not bugs, bugs


@pytest.fixture
def sshd() -> Iterator[SshServer]:
    """A started OpenSSH server on 127.0.0.1 for this test alone (tests/sshd.py), closed after it.

    Skips where OpenSSH is not installed; CI installs it (.ci/run), so there it runs.
    """
    missing = missing_tools()
    if missing:
        pytest.skip(f"OpenSSH is not installed ({', '.join(missing)} missing; apt-get install "
                    "openssh-server openssh-client, as .ci/run does)")
    with SshServer() as server:
        yield server
        # Printed at teardown, so pytest shows it with a failing test only.
        print(f"--- sshd log ({server.log_path}) ---\n{server.log()}")
