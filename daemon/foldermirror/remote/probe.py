"""Proving the remote side of a remote target: rsync there, the root writable, the owner kept.

One shell script, run either through the link's master (when the daemon connects) or over a
login of its own (`check`). It creates nothing unless asked (`make`, as `run` does for a
missing target).
"""

from __future__ import annotations

import shlex
import subprocess
from typing import NamedTuple

from foldermirror.remote import rsync

_NO_RSYNC, _CANNOT_MAKE, _NOT_WRITABLE = 97, 98, 99
TIMEOUT_MARGIN = 10.0


class RemoteProof(NamedTuple):
    problem: str | None        # one sentence naming the target and the cause; None: it can be served
    proved: str = ""           # for `check`'s verdict
    root_user: bool = False    # the remote user is root: owners and groups can be kept
    rsync_version: tuple[int, int, int] | None = None
    link_error: str | None = None  # ssh itself failed (host key, refused, timeout): not the remote side


def script(rsync_path: str, path: str, make: bool) -> str:
    rsync = shlex.quote(shlex.split(rsync_path)[0])
    p = shlex.quote(path)
    missing = (f"mkdir -p -- {p} 2>/dev/null || exit {_CANNOT_MAKE}\n" if make else
               f'd={p}; while [ ! -e "$d" ]; do d=$(dirname -- "$d"); done\n'
               f'[ -d "$d" ] && [ -w "$d" ] || {{ echo "$d"; exit {_CANNOT_MAKE}; }}\n'
               f'echo "missing $d"\n')
    return (f"command -v {rsync} >/dev/null 2>&1 || exit {_NO_RSYNC}\n"
            f"if [ ! -d {p} ]; then\n{missing}fi\n"
            f"if [ -d {p} ] && [ ! -w {p} ]; then exit {_NOT_WRITABLE}; fi\n"
            f'echo "version $({rsync} --version 2>/dev/null | head -n 1)"\n'
            'echo "uid $(id -u)"\n')


def run(argv: list[str], host: str, rsync_path: str, path: str, *, make: bool, url: str,
        timeout: float) -> RemoteProof:
    """Run the script with `argv` (an ssh command without its host) and say what it proved."""
    try:
        done = subprocess.run([*argv, "--", host, "sh -s"], input=script(rsync_path, path, make).encode(),
                              capture_output=True, timeout=timeout + TIMEOUT_MARGIN, check=False)
    except FileNotFoundError:
        return RemoteProof(f"target {url}: ssh is not installed here", link_error="ssh is not installed")
    except subprocess.TimeoutExpired:
        return RemoteProof(f"target {url}: {host} did not answer in time", link_error="the host did not answer")
    out = done.stdout.decode(errors="replace").splitlines()
    err = done.stderr.decode(errors="replace").strip()
    if done.returncode == 255:
        last = err.splitlines()[-1] if err else "ssh failed"
        return RemoteProof(f"target {url}: cannot connect: {last}", link_error=last)
    if done.returncode == _NO_RSYNC:
        return RemoteProof(f"target {url}: {rsync_path} is not installed on {host} (or ssh.rsync_path is wrong)")
    if done.returncode == _CANNOT_MAKE:
        where = out[0] if out else path
        return RemoteProof(f"target {url}: cannot create {path} on {host}: {where} is not a writable directory")
    if done.returncode == _NOT_WRITABLE:
        return RemoteProof(f"target {url}: {path} on {host} is not writable by the remote user")
    if done.returncode != 0 or not out:
        return RemoteProof(f"target {url}: the check on {host} failed (exit {done.returncode}): {err}")
    facts = dict(line.partition(" ")[::2] for line in out)
    root = facts.get("uid", "").strip() == "0"
    try:
        version: tuple[int, int, int] | None = rsync.version(facts.get("version", "").encode())
    except ValueError:
        version = None
    keeps = "owners and groups kept" if root else "owners and groups not kept (the remote user is not root)"
    if out[0].startswith("missing "):
        where = f"{path} does not exist yet: run creates it in {out[0][len('missing '):]}"
    else:
        where = f"{path} writable"
    found = "remote rsync " + ".".join(map(str, version)) if version else "remote rsync found"
    return RemoteProof(None, f"{found}, {where}, {keeps}", root, version)
