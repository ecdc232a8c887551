"""Proving the remote side of a remote target: rsync there, the root writable, the owner kept.

One shell script, run either through the link's master (when the daemon connects) or over a
login of its own (`check`). It creates nothing unless asked (`make`, as `run` does for a
missing target).
"""

from __future__ import annotations

import os
import shlex
import struct
import subprocess
import tempfile
from typing import NamedTuple

from foldermirror.remote import rsync

_NO_RSYNC, _CANNOT_MAKE, _NOT_WRITABLE = 97, 98, 99
TIMEOUT_MARGIN = 10.0


class RemoteProof(NamedTuple):
    problem: str | None        # one sentence naming the target and the cause; None: it can be served
    proved: str = ""           # for `check`'s verdict
    root_user: bool = False    # the remote user is root: owners and groups can be kept
    rsync_version: tuple[int, int, int] | None = None
    rsync_lacks: tuple[str, ...] = ()  # preserve: names the remote rsync was built without (acls, xattrs)
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
            f'echo "capabilities $({rsync} --version 2>/dev/null | sed -n \'/^Capabilities:/,/^[^ ]/p\' | tr \'\\n\' \' \')"\n'
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
    lacks = tuple(rsync.lacks(facts.get("capabilities", "")))
    return RemoteProof(None, f"{found}, {where}, {keeps}", root, version, lacks)


# An access ACL with a named user (uid 65534: nobody), as the kernel stores it: it cannot be
# folded into the mode, so rsync -A really sends it.
_ACL = (struct.pack("<I", 2) + struct.pack("<HHI", 0x01, 6, 0xFFFFFFFF) + struct.pack("<HHI", 0x02, 4, 65534)
        + struct.pack("<HHI", 0x04, 4, 0xFFFFFFFF) + struct.pack("<HHI", 0x10, 4, 0xFFFFFFFF)
        + struct.pack("<HHI", 0x20, 0, 0xFFFFFFFF))


def refused_attrs(ssh: list[str], host: str, user: str | None, rsync_path: str, path: str, wanted: list[str],
                  name: str, timeout: float) -> tuple[list[str], str]:
    """Which of `wanted` (xattrs, acls) the remote target's file system refuses, by sending it a
    probe file that carries a `user.` attribute and an ACL (rsync -X -A), then removing it;
    with the error rsync gave. ([], "") when everything was kept, or when this side cannot
    make such a file (its own temp folder refuses them: nothing to learn).
    """
    fd, local = tempfile.mkstemp(prefix=".foldermirror-probe-")
    try:
        have = []
        for prop in wanted:
            try:
                if prop == "xattrs":
                    os.setxattr(fd, "user.foldermirror-probe", b"1")
                else:
                    os.setxattr(fd, "system.posix_acl_access", _ACL)
                have.append(prop)
            except OSError:
                pass
        os.close(fd)
        if not have:
            return [], ""
        flags = [rsync.KEEP_FLAGS[p] for p in have]
        dest = f"{user}@{host}" if user else host
        remote = f"{path.rstrip('/')}/{name}"
        argv = ["rsync", "-p", *flags, "-s", "-e", shlex.join(ssh), "--rsync-path=" + rsync_path,
                f"--timeout={max(1, round(timeout))}", local, f"{dest}:{remote}"]
        try:
            done = subprocess.run(argv, capture_output=True, timeout=timeout + TIMEOUT_MARGIN, check=False,
                                  stdin=subprocess.DEVNULL)
            subprocess.run([*ssh, "--", host, f"rm -f -- {shlex.quote(remote)}"], capture_output=True,
                           timeout=timeout + TIMEOUT_MARGIN, check=False, stdin=subprocess.DEVNULL)
        except (OSError, subprocess.TimeoutExpired):
            return [], ""
        return refused_in(done.stderr.decode(errors="replace"), have)
    finally:
        try:
            os.unlink(local)
        except OSError:
            pass


def refused_in(stderr: str, have: list[str]) -> tuple[list[str], str]:
    """What rsync's errors say the receiver could not set: `rsync_xal_set: lsetxattr(...)
    failed: Operation not supported (95)`, `set_acl: sys_acl_set_file(...): Operation not
    supported (95)`, or a receiver built without them."""
    refused: list[str] = []
    said = ""
    for line in stderr.splitlines():
        low = line.lower()
        if "not supported" not in low and "unsupported" not in low:
            continue
        if "acl" in low and "acls" in have and "acls" not in refused:
            refused.append("acls")
            said = said or line.strip()
        elif ("xattr" in low or "xal" in low) and "xattrs" in have and "xattrs" not in refused:
            refused.append("xattrs")
            said = said or line.strip()
    return refused, said
