"""The sshd fixture (tests/sshd.py) works, and the OpenSSH facts remote targets build on hold.

A real sshd on 127.0.0.1 with real ssh and rsync clients: login only with the generated key
and known_hosts; a ControlMaster carries commands and rsync, and once it is gone a client
with ControlMaster=no and a failing ProxyCommand fails at once instead of logging in anew;
a frozen peer is noticed by the master's ServerAlive keepalive (the master exits), while
without it multiplexed sessions just hang; the server comes back on the same port and key.
"""

from __future__ import annotations

import os
import pwd
import shutil
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

import sshd as sshd_module
from helpers import tree_diff, wait_until
from sshd import SshServer, SshServerError, missing_tools, ssh_config_block

pytestmark = pytest.mark.timeout(30)

Spawn = Callable[[list[str]], subprocess.Popen[str]]


@pytest.fixture
def spawn() -> Iterator[Spawn]:
    """Popen for clients (ssh masters, hanging commands) that outlive one call; killed at teardown."""
    started: list[subprocess.Popen[str]] = []

    def start(argv: list[str]) -> subprocess.Popen[str]:
        p = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True)
        started.append(p)
        return p

    yield start
    for p in started:
        if p.poll() is None:
            p.kill()
        p.communicate()


def master_check(server: SshServer, sock: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(server.ssh_argv("-o", f"ControlPath={sock}", "-O", "check"), capture_output=True,
                          text=True, timeout=10, stdin=subprocess.DEVNULL)


def start_master(server: SshServer, spawn: Spawn, name: str, *opts: str) -> tuple[subprocess.Popen[str], Path]:
    """`ssh -N -M` on a socket of its own, returned once `ssh -O check` says it runs."""
    sock = server.socket_path(name)
    master = spawn(server.ssh_argv("-N", "-M", "-o", f"ControlPath={sock}", "-o", "ControlPersist=no", *opts))
    wait_until(lambda: master.poll() is not None or (sock.exists() and master_check(server, sock).returncode == 0),
               10, f"master {name} never answered -O check")
    assert master.poll() is None, master.communicate()[1]
    return master, sock


def through(sock: Path) -> tuple[str, ...]:
    """Options of a client that uses the master at `sock` or fails: never a login of its own."""
    return ("-o", "ControlMaster=no", "-o", f"ControlPath={sock}", "-o", "ProxyCommand=/bin/false")


def test_login_needs_the_generated_key_and_known_hosts(sshd: SshServer, tmp_path: Path) -> None:
    r = sshd.run("id -un; echo $SSH_CONNECTION")
    assert r.returncode == 0, r.stderr
    user, connection = r.stdout.splitlines()
    assert user == sshd.user
    assert connection.endswith(f"127.0.0.1 {sshd.port}")
    assert sshd.known_hosts.read_text() == f"[127.0.0.1]:{sshd.port} {sshd.host_public}\n"
    assert ssh_config_block(sshd) == {"identity_file": str(sshd.client_key), "known_hosts": str(sshd.known_hosts)}
    assert sshd.url("/srv/a b") == f"ssh://{sshd.user}@127.0.0.1:{sshd.port}/srv/a b"

    # Another key for the same [host]:port: ssh refuses, it does not ask or learn.
    wrong = tmp_path / "known_hosts"
    wrong.write_text(f"[127.0.0.1]:{sshd.port} {sshd_module._keygen(tmp_path / 'other_key', 'other')}\n")
    r = sshd.run("true", "-o", f"UserKnownHostsFile={wrong}")  # extra options come first, so they win
    assert r.returncode == 255, r
    assert "Host key verification failed" in r.stderr, r.stderr
    assert wrong.read_text().count("\n") == 1  # nothing learnt


def test_user_rc_false_gives_the_sessions_a_home_of_their_own() -> None:
    """The benchmark's server: HOME is an empty folder of the server's (no ~/.bashrc of the
    user's runs), while the session still starts in the user's real home directory."""
    if missing_tools():
        pytest.skip(f"OpenSSH is not installed ({', '.join(missing_tools())} missing)")
    with SshServer(user_rc=False) as server:
        r = server.run('printf "%s\\n" "$HOME" "$PWD"')
        assert r.returncode == 0, r.stderr
        assert server.home is not None and server.home.is_dir() and not any(server.home.iterdir())
        assert r.stdout.splitlines() == [str(server.home), pwd.getpwuid(os.geteuid()).pw_dir], r.stdout


@pytest.mark.parametrize("how", ["exit", "sigkill"])
def test_control_master_carries_commands_and_its_loss_fails_fast(sshd: SshServer, spawn: Spawn, how: str) -> None:
    """Gone by `ssh -O exit` (socket removed) or SIGKILL (socket left behind, connect refused).

    Not SIGTERM here: OpenSSH 9.2's client loop checks its signal flag and then calls poll()
    with no signal mask, so a SIGTERM landing between the two waits for the next poll timeout
    (seen: a master idle in a 300 s poll, about 1 run in 15-40 right after a session).
    """
    master, sock = start_master(sshd, spawn, "m")
    logins = sshd.logins()
    r = sshd.run("echo over-the-master", *through(sock))
    assert (r.returncode, r.stdout) == (0, "over-the-master\n"), r.stderr
    assert sshd.logins() == logins

    if how == "exit":
        r = subprocess.run(sshd.ssh_argv("-o", f"ControlPath={sock}", "-O", "exit"), capture_output=True, text=True,
                           timeout=10, stdin=subprocess.DEVNULL)
        assert r.returncode == 0, r.stderr
    else:
        master.kill()
    master.communicate(timeout=10)
    assert sock.exists() == (how == "sigkill")
    started = time.monotonic()
    r = sshd.run("echo over-the-master", *through(sock))
    took = time.monotonic() - started
    assert r.returncode == 255, r
    if how == "sigkill":  # the stale socket refuses; with no socket at all ssh says nothing of it
        assert f"Control socket connect({sock}): Connection refused" in r.stderr, r.stderr
    assert took < 2, f"the failure took {took:.3f}s"
    assert sshd.logins() == logins
    assert master_check(sshd, sock).returncode == 255

    # Why the failing ProxyCommand: without it the same client silently logs in anew.
    r = sshd.run("echo logged-in-anew", "-o", "ControlMaster=no", "-o", f"ControlPath={sock}")
    assert (r.returncode, r.stdout) == (0, "logged-in-anew\n"), r.stderr
    assert sshd.logins() == logins + 1


def test_rsync_over_the_master(sshd: SshServer, spawn: Spawn, tmp_path: Path) -> None:
    if shutil.which("rsync") is None:
        pytest.skip("rsync is not installed")
    src, dst = tmp_path / "src", tmp_path / "dst"
    (src / "sub" / "deeper").mkdir(parents=True)
    (src / "a.txt").write_bytes(b"alpha\n")
    (src / "empty").write_bytes(b"")
    (src / "sub" / "run.sh").write_bytes(b"#!/bin/sh\necho hi\n")
    (src / "sub" / "run.sh").chmod(0o750)
    (src / "sub" / "deeper" / "big.bin").write_bytes(os.urandom(300_000))
    (src / "sub" / "deeper" / "private").write_bytes(b"secret")
    (src / "sub" / "deeper" / "private").chmod(0o600)
    (src / "link").symlink_to("sub/run.sh")
    (src / "sub").chmod(0o710)
    for i, f in enumerate(p for p in src.rglob("*") if p.is_file() and not p.is_symlink()):
        os.utime(f, ns=(1_600_000_000_123_456_789 + i, 1_600_000_000_123_456_789 + i * 1_000_000_007))
    _, sock = start_master(sshd, spawn, "m")
    logins = sshd.logins()

    r = subprocess.run(["rsync", "-a", "-e", sshd.rsh(*through(sock)), f"{src}/", f"{sshd.destination}:{dst}/"],
                       capture_output=True, text=True, timeout=20, stdin=subprocess.DEVNULL)
    assert r.returncode == 0, r.stderr
    assert tree_diff(src, dst) == []  # bytes, modes, mtimes to the nanosecond, link targets
    assert sshd.logins() == logins


def test_frozen_peer_kills_a_master_with_keepalive_and_hangs_one_without(sshd: SshServer, spawn: Spawn) -> None:
    """SIGSTOPped session processes: only the master's ServerAlive keepalive notices.

    Measured (OpenSSH 9.2): the master with ServerAliveInterval=1, ServerAliveCountMax=2 exits
    255 "Timeout, server 127.0.0.1 not responding." 2.0-2.9 s after the freeze (three intervals
    after the server last sent anything), and a command multiplexed over it then ends at once
    (255: it loses the master, and its fallback, the ProxyCommand, fails). Without keepalive the master stays and its sessions hang (TCP is
    still acknowledged by the kernel, so TCPKeepAlive sees nothing) until the peer resumes,
    after which they complete.
    """
    alive, alive_sock = start_master(sshd, spawn, "ka", "-o", "ServerAliveInterval=1", "-o", "ServerAliveCountMax=2")
    plain, plain_sock = start_master(sshd, spawn, "plain")
    assert len(sshd.session_pids()) == 2

    frozen_at = time.monotonic()
    paused = sshd.pause_sessions()
    assert set(sshd.session_pids()) <= set(paused)
    over_alive = spawn([*sshd.ssh_argv(*through(alive_sock)), "echo via-keepalive"])
    over_plain = spawn([*sshd.ssh_argv(*through(plain_sock)), "echo via-plain"])

    wait_until(lambda: alive.poll() is not None, 10, "the master with keepalive did not notice the frozen peer")
    noticed = time.monotonic() - frozen_at
    assert 1.0 <= noticed <= 6.0, f"the keepalive master exited {noticed:.2f}s after the freeze"
    assert alive.returncode == 255
    assert "Timeout, server 127.0.0.1 not responding." in alive.communicate()[1]
    wait_until(lambda: over_alive.poll() is not None, 2, "a session over the dead master still hangs")
    out, err = over_alive.communicate()
    assert (over_alive.returncode, out) == (255, ""), err
    assert "read from master failed" in err, err
    # Meanwhile, without keepalive, nothing has noticed.
    assert plain.poll() is None and over_plain.poll() is None

    sshd.resume_sessions()
    out, err = over_plain.communicate(timeout=10)
    assert (over_plain.returncode, out) == (0, "via-plain\n"), err
    assert master_check(sshd, plain_sock).returncode == 0
    # The server side of the dead master's connection ends once it runs again.
    wait_until(lambda: len(sshd.session_pids()) == 1, 10, lambda: f"sessions {sshd.session_pids()}")


def test_restart_comes_back_on_the_same_port_and_host_key(sshd: SshServer, spawn: Spawn) -> None:
    port, known = sshd.port, sshd.known_hosts.read_text()
    kept, kept_sock = start_master(sshd, spawn, "kept")
    sshd.restart(sessions=False)  # as restarting an sshd service: the established connection stays
    assert sshd.port == port
    r = sshd.run("echo still-there", *through(kept_sock))
    assert (r.returncode, r.stdout) == (0, "still-there\n"), r.stderr

    sshd.stop()  # the server goes down, connections too
    wait_until(lambda: kept.poll() is not None, 10, "the master outlived the server")
    assert sshd.run("true", "-o", "ConnectTimeout=5").returncode == 255
    sshd.start()
    assert (sshd.port, sshd.known_hosts.read_text()) == (port, known)
    r = sshd.run("echo back")
    assert (r.returncode, r.stdout) == (0, "back\n"), r.stderr
    assert sshd.log().count(f"Server listening on 127.0.0.1 port {port}.") == 3


def test_close_ends_everything_it_started(spawn: Spawn) -> None:
    """Listener, sessions a restart left running, frozen sessions: none outlives close()."""
    if missing_tools():
        pytest.skip(f"OpenSSH is not installed ({', '.join(missing_tools())} missing)")
    with SshServer() as server:
        listener = server.proc
        assert listener is not None
        orphaned, _ = start_master(server, spawn, "orphaned")
        left_running = server.session_pids()
        server.restart(sessions=False)
        frozen, _ = start_master(server, spawn, "frozen")
        ours = [*left_running, *server.pause_sessions()]
        assert len(ours) == 2
        starts = {p: sshd_module._proc_stat(p) for p in ours}
    assert listener.poll() is not None
    assert not server.dir.exists()
    assert not [p for p, st in starts.items() if st is not None and sshd_module._alive(p, st[2])]
    wait_until(lambda: orphaned.poll() is not None and frozen.poll() is not None, 10,
               "a client master outlived the server")


def test_start_failure_raises_with_the_log() -> None:
    if missing_tools():
        pytest.skip(f"OpenSSH is not installed ({', '.join(missing_tools())} missing)")
    server = SshServer(extra_config=["NoSuchKeyword yes"])
    try:
        with pytest.raises(SshServerError, match="Bad configuration option: NoSuchKeyword"):
            server.start(timeout=5)
        assert server.proc is None
    finally:
        server.close()
    assert not server.dir.exists()


def test_a_port_taken_in_the_meantime_means_another_port(monkeypatch: pytest.MonkeyPatch) -> None:
    """The race between finding a free port and sshd binding it, made certain."""
    if missing_tools():
        pytest.skip(f"OpenSSH is not installed ({', '.join(missing_tools())} missing)")
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        taken = squatter.getsockname()[1]
        ports = iter([taken])
        free = sshd_module._free_port
        monkeypatch.setattr(sshd_module, "_free_port", lambda: next(ports, None) or free())
        with SshServer() as server:
            assert server.port != taken
            assert f"port {taken}" in server.log() and "Address already in use" in server.log()
            assert f"Server listening on 127.0.0.1 port {server.port}." in server.log()
            assert server.known_hosts.read_text().startswith(f"[127.0.0.1]:{server.port} ")
