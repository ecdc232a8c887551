"""Run a command under part of a systemd unit's sandbox, without systemd (tests only).

    python confine.py [--no-caps] [--seccomp SPEC.json] -- COMMAND ...

--no-caps   drops every capability from the bounding set, so a root test process runs
            COMMAND as uid 0 without any privilege: permission bits apply to it as to
            the service's own unprivileged user (and capset/chown fail as they would).
--seccomp   loads the seccomp filters systemd builds from SystemCallFilter=,
            SystemCallErrorNumber=, RestrictAddressFamilies= and MemoryDenyWriteExecute=
            (SPEC: {"allow": [names], "errno": N, "families": [numbers], "mdwe": bool}).
            Each is its own filter, as systemd loads them; libseccomp is called through
            ctypes because there is no standard-library binding.

Then COMMAND is exec'd; forks and the fork server's workers inherit all of it.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import json
import os
import sys

PR_CAPBSET_DROP = 24
CAP_LAST_CAP_FILE = "/proc/sys/kernel/cap_last_cap"

SCMP_ACT_ALLOW = 0x7FFF0000
SCMP_CMP_EQ = 4
SCMP_CMP_GT = 6
SCMP_CMP_MASKED_EQ = 7
PROT_WRITE, PROT_EXEC = 0x2, 0x4
SHM_EXEC = 0o100000
EAFNOSUPPORT = 97
EPERM = 1


def scmp_act_errno(code: int) -> int:
    return 0x00050000 | (code & 0xFFFF)


class ArgCmp(ctypes.Structure):
    _fields_ = [("arg", ctypes.c_uint), ("op", ctypes.c_int),
                ("datum_a", ctypes.c_uint64), ("datum_b", ctypes.c_uint64)]


class Seccomp:
    def __init__(self) -> None:
        name = ctypes.util.find_library("seccomp")
        if not name:
            raise SystemExit("confine: libseccomp is not installed")
        lib = ctypes.CDLL(name, use_errno=True)
        lib.seccomp_init.restype = ctypes.c_void_p
        lib.seccomp_init.argtypes = [ctypes.c_uint32]
        lib.seccomp_syscall_resolve_name.argtypes = [ctypes.c_char_p]
        lib.seccomp_rule_add_array.argtypes = [ctypes.c_void_p, ctypes.c_uint32, ctypes.c_int,
                                               ctypes.c_uint, ctypes.POINTER(ArgCmp)]
        lib.seccomp_load.argtypes = [ctypes.c_void_p]
        lib.seccomp_release.argtypes = [ctypes.c_void_p]
        self.lib = lib

    def number(self, name: str) -> int | None:
        nr = self.lib.seccomp_syscall_resolve_name(name.encode())
        return nr if nr >= 0 else None  # not a syscall of this architecture

    def load(self, default: int, rules: list[tuple[int, str, list[tuple[int, int, int, int]]]]) -> None:
        ctx = self.lib.seccomp_init(default)
        if not ctx:
            raise SystemExit("confine: seccomp_init failed")
        try:
            for action, name, cmps in rules:
                nr = self.number(name)
                if nr is None:
                    continue
                array = (ArgCmp * max(1, len(cmps)))(*[ArgCmp(*c) for c in cmps])
                rc = self.lib.seccomp_rule_add_array(ctx, action, nr, len(cmps), array)
                if rc < 0:
                    raise SystemExit(f"confine: seccomp rule for {name} failed: {os.strerror(-rc)}")
            rc = self.lib.seccomp_load(ctx)
            if rc < 0:
                raise SystemExit(f"confine: seccomp_load failed: {os.strerror(-rc)}")
        finally:
            self.lib.seccomp_release(ctx)


def drop_capabilities() -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    with open(CAP_LAST_CAP_FILE) as f:
        last = int(f.read())
    for cap in range(last + 1):
        if libc.prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) != 0:
            raise SystemExit(f"confine: cannot drop capability {cap}: {os.strerror(ctypes.get_errno())}")


def load_filters(spec: dict) -> None:
    sc = Seccomp()
    if spec.get("mdwe"):
        # systemd's MemoryDenyWriteExecute=: no W+X mappings, no turning memory executable.
        both = PROT_WRITE | PROT_EXEC
        deny = scmp_act_errno(EPERM)
        sc.load(SCMP_ACT_ALLOW, [
            (deny, "mmap", [(2, SCMP_CMP_MASKED_EQ, both, both)]),
            (deny, "mprotect", [(2, SCMP_CMP_MASKED_EQ, PROT_EXEC, PROT_EXEC)]),
            (deny, "pkey_mprotect", [(2, SCMP_CMP_MASKED_EQ, PROT_EXEC, PROT_EXEC)]),
            (deny, "shmat", [(2, SCMP_CMP_MASKED_EQ, SHM_EXEC, SHM_EXEC)]),
        ])
    families = spec.get("families")
    if families:
        # An allow-list, as systemd builds it: socket() with any other family fails with
        # EAFNOSUPPORT (one rule per family below the highest allowed, one for all above it).
        deny = scmp_act_errno(EAFNOSUPPORT)
        top = max(families)
        sc.load(SCMP_ACT_ALLOW, [(deny, "socket", [(0, SCMP_CMP_EQ, f, 0)]) for f in range(top) if f not in families]
                + [(deny, "socket", [(0, SCMP_CMP_GT, top, 0)])])
    allow = spec.get("allow")
    if allow:
        sc.load(scmp_act_errno(spec.get("errno", EPERM)), [(SCMP_ACT_ALLOW, name, []) for name in sorted(allow)])


def main(argv: list[str]) -> None:
    if "--" not in argv:
        raise SystemExit(__doc__)
    sep = argv.index("--")
    opts, command = argv[:sep], argv[sep + 1:]
    spec = None
    if "--seccomp" in opts:
        with open(opts[opts.index("--seccomp") + 1]) as f:
            spec = json.load(f)
    if "--no-caps" in opts:
        drop_capabilities()
    if spec is not None:
        load_filters(spec)
    os.execvp(command[0], command)


if __name__ == "__main__":
    main(sys.argv[1:])
