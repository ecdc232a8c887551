"""The ssh command lines: one master per link, and the sessions that go through it.

The main process runs each master (`ssh -N -M`) as its own child, so it lives and dies
inside the service. Everything else (rsync, a rename) goes through the master's socket
with ControlMaster=no and a ProxyCommand that fails: ssh's `auto` would silently log in
anew when the master is gone (a login per batch, and a prompt-less hang under systemd);
this way a missing master fails in milliseconds. Standard library only (workers use it).
"""

from __future__ import annotations

import subprocess
from typing import NamedTuple

from foldermirror.remote.url import Link

KEEPALIVE_COUNT = 3  # unanswered keepalives before ssh gives the connection up

# OpenSSH's default ciphers with AES-GCM first. ssh prefers chacha20-poly1305, the faster one
# on a CPU without AES instructions; with them AES-GCM costs each end less CPU per byte (a
# big file over loopback went faster in each interleaved run: README, Performance). Offered
# only where ssh would offer this very set anyway (see ciphers_in_effect), so the order
# changes and nothing else: no cipher an ssh_config left out comes back.
AES_FIRST = ("aes128-gcm@openssh.com,aes256-gcm@openssh.com,chacha20-poly1305@openssh.com,"
             "aes128-ctr,aes192-ctr,aes256-ctr")


class SshParams(NamedTuple):
    """What ssh needs to know of one link, from the config's ssh block (and its host's keys)."""

    link: Link
    known_hosts: str
    identity_file: str | None
    connect_timeout: float
    keepalive: float
    compress: bool
    options: tuple[str, ...]
    aes_first: bool = False  # offer AES_FIRST: see wants_aes_first


def _common(p: SshParams) -> list[str]:
    out = ["-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=yes",
           "-o", f"UserKnownHostsFile={p.known_hosts}", "-o", "GlobalKnownHostsFile=/dev/null",
           "-o", f"ConnectTimeout={max(1, round(p.connect_timeout))}",
           "-o", f"ServerAliveInterval={max(1, round(p.keepalive))}", "-o", f"ServerAliveCountMax={KEEPALIVE_COUNT}",
           "-o", "LogLevel=ERROR"]
    if p.identity_file:
        out += ["-o", "IdentitiesOnly=yes", "-i", p.identity_file]
    if p.compress:
        out += ["-o", "Compression=yes"]
    for option in p.options:
        out += ["-o", option]
    if p.aes_first and not any(o.partition("=")[0].strip().lower() == "ciphers" for o in p.options):
        out += ["-o", f"Ciphers={AES_FIRST}"]
    if p.link.port:
        out += ["-p", str(p.link.port)]
    if p.link.user:
        out += ["-l", p.link.user]
    return out


def master_argv(p: SshParams, socket: str) -> list[str]:
    """The master: no command, no forwarding, gone when its parent says so (never persisting)."""
    return ["ssh", "-N", "-M", "-S", socket, "-o", "ControlPersist=no", "-o", "ClearAllForwardings=yes",
            "-o", "ExitOnForwardFailure=yes", *_common(p), "--", p.link.host]


def session_argv(p: SshParams, socket: str) -> list[str]:
    """ssh through the master only; the host and the command follow (rsync -e appends them)."""
    return ["ssh", "-S", socket, "-o", "ControlMaster=no", "-o", "ProxyCommand=/bin/false", *_common(p)]


def direct_argv(p: SshParams) -> list[str]:
    """ssh logging in on its own, for one-off commands outside the daemon (`sync --dry-run`)."""
    return ["ssh", "-o", "ControlMaster=no", "-o", "ControlPath=none", *_common(p)]


def cpu_has_aes(cpuinfo: str = "/proc/cpuinfo") -> bool:
    """Whether the CPU has AES instructions: `aes` among x86's flags or arm64's features."""
    try:
        with open(cpuinfo, encoding="ascii", errors="replace") as f:
            for line in f:
                name, _, value = line.partition(":")
                if name.strip() in ("flags", "Features"):
                    return "aes" in value.split()
    except OSError:
        pass
    return False


def ciphers_in_effect(p: SshParams) -> frozenset[str] | None:
    """The ciphers ssh offers this link with its config files and `ssh.options` applied
    (`ssh -G`, which reads them and connects nowhere); None when it cannot tell."""
    try:
        done = subprocess.run(["ssh", "-G", *_common(p._replace(aes_first=False)), "--", p.link.host],
                              stdin=subprocess.DEVNULL, capture_output=True, timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if done.returncode != 0:
        return None
    for line in done.stdout.decode(errors="replace").splitlines():
        name, _, value = line.partition(" ")
        if name.lower() == "ciphers":
            return frozenset(value.strip().split(","))
    return None


def wants_aes_first(p: SshParams, has_aes: bool) -> bool:
    """Whether to offer AES_FIRST: the CPU has AES instructions and ssh would offer the
    same ciphers anyway (a Ciphers= in an ssh_config or in `ssh.options` is left as it is)."""
    return has_aes and ciphers_in_effect(p) == frozenset(AES_FIRST.split(","))
