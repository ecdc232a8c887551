"""rsync as the engine for remote targets: its command lines, the file list it reads, and what
it says back. Standard library only: this runs in the workers.

A batch of changed paths becomes one transfer pass (`argv(mode=Mode.TRANSFER)` fed
`files_from(...)` on stdin) over the paths that exist in the source, and one delete pass
(`Mode.DELETE`) over those that are gone. Every stdout line goes to `parse_line`; the lines
it rejects, and every stderr line, go to `parse_error`. Neither kind of line is proof: rsync
prints a file's line when the sender sends it, before the receiver has put it in place, so
after a run that did not exit OK the caller asks again with a dry run (`dry_run=True`) which
paths still differ.

Behaviour checked against rsync 3.5.0 (local, and as the receiver), 3.4.3 and 3.2.3 (built
from upstream's tags, as receivers only); tests/unit/test_rsync.py holds the lines captured.
"""

from __future__ import annotations

import errno as errnos
import os
import posixpath
import re
import shlex
from collections.abc import Callable, Iterable, Iterator, Sequence
from enum import StrEnum
from typing import NamedTuple

from foldermirror.tempnames import LOCK_NAME, TEMP_PREFIX, TEMP_SUFFIX, is_reserved

# rsync's --partial-dir, made in the directory of each interrupted file (mode 0700) and used
# to resume it next time. The daemon's temp shape, so tempnames.is_reserved() already knows it
# as ours: never copied from a source, never counted or deleted by a comparison.
PARTIAL_DIR = f"{TEMP_PREFIX}partial{TEMP_SUFFIX}"

# One line per item: the 11-character itemize code, the size, the name. The code has a fixed
# width (it can hold spaces), and the name comes last because it can hold anything else.
OUT_FORMAT = "%i %l %n"

# The daemon's own names in a target: excluded, so that a source never overwrites them and a
# compare (-r --delete) never lists them for deletion. The pattern covers PARTIAL_DIR too.
_EXCLUDES = (LOCK_NAME, f"{TEMP_PREFIX}*{TEMP_SUFFIX}")


class Mode(StrEnum):
    TRANSFER = "transfer"  # send the listed paths that exist
    DELETE = "delete"      # also delete on the remote the listed paths missing in the source
    COMPARE = "compare"    # dry run of -r --delete over a tree: lists what differs


def dest(host: str, path: str, user: str | None = None) -> str:
    """rsync's remote-shell spec `[user@]host:/path`, IPv6 literals in brackets."""
    if not path.startswith("/"):
        raise ValueError(f"the remote path must be absolute: {path!r}")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    # rsync ends the host at the first ':' or '/' unless it is bracketed; ssh would read a
    # leading '-' as an option (rsync refuses those itself, with exit 1).
    if not host or host.startswith("-") or any(c in host for c in "/@[] \t\n"):
        raise ValueError(f"not a host name or address: {host!r}")
    if ":" in host:
        host = f"[{host}]"
    if user is not None:
        # The host starts after the last '@', so a user may hold '@' but not ':' or '/'.
        if not user or user.startswith("-") or any(c in user for c in ":/ \t\n"):
            raise ValueError(f"not a user name: {user!r}")
        host = f"{user}@{host}"
    return f"{host}:{path}"


# The folder's preserve: names rsync keeps with one flag each (owner is -o -g: preserve_owner).
KEEP_FLAGS = {"xattrs": "-X", "acls": "-A", "sparse": "-S"}
# What `rsync --version` lists under "Capabilities:" for the two a build may lack.
_CAPABILITIES = {"xattrs": "xattrs", "acls": "ACLs"}


def lacks(version_text: str) -> list[str]:
    """The preserve: names an rsync cannot keep, from its `--version` text: its Capabilities
    list says "no ACLs" / "no xattrs" (or lacks the word) when it was built without them."""
    before, found, listed = version_text.partition("Capabilities:")
    if not found:
        return []  # not said (an unusual build or version): rsync's own errors will tell
    words = {w.strip() for w in listed.replace("\n", ",").split(",")}
    return [name for name, word in _CAPABILITIES.items() if word not in words]


def argv(
    *,
    mode: Mode,
    source_root: str,
    host: str,
    remote_root: str,
    user: str | None = None,
    base: str = "",
    ssh: Sequence[str] = ("ssh",),
    rsync: str = "rsync",
    rsync_path: Sequence[str] | None = None,
    delete: bool = True,
    dry_run: bool = False,
    preserve_owner: bool = False,
    keep: Sequence[str] = (),
    hardlinks: bool = False,
    checksum: bool = False,
    fsync: bool = False,
    compress: bool = False,
    bwlimit: int | None = None,
    timeout_s: int | None = None,
    partial_dir: str | None = PARTIAL_DIR,
    backup_dir: str | None = None,
    backup_suffix: str = "",
) -> list[str]:
    """The command line of one rsync pass from source_root to remote_root on host.

    base: a folder-relative directory the pass works in. Paths on stdin and the paths rsync
    prints are relative to it; the root when "". TRANSFER and DELETE read the NUL-separated
    list `files_from()` makes on stdin; COMPARE reads nothing and is always a dry run.
    ssh: the remote shell command, one word per item. rsync_path: the remote rsync command,
    one word per item (None: `rsync` on the remote's PATH). delete: the folder's delete
    setting: with it a non-directory may replace a non-empty directory (--force), and COMPARE
    lists what the remote has extra. preserve_owner: -o -g, for a remote user that can keep
    them (root). keep: the folder's preserve: names the remote can keep, as rsync's -X
    (xattrs), -A (acls) and -S (sparse). fsync needs rsync 3.2.4 on both sides: an older
    remote rejects it (exit 12, see rejected_option). bwlimit in KiB/s; timeout_s: rsync's I/O
    timeout. backup_dir: the folder's versions area on the host (absolute): what a TRANSFER or
    DELETE pass replaces or deletes is moved there first, as PATH + backup_suffix (the layout
    of pipeline/versions.py). hardlinks: -H, names of one inode are one inode on the remote,
    among the names of one pass (a --files-from list holds the other names it is to keep linked).
    """
    mode = Mode(mode)
    if mode is Mode.DELETE and not delete:
        raise ValueError("a delete pass for a folder with delete: false")
    for name, words in (("ssh", ssh), ("rsync_path", rsync_path)):
        if isinstance(words, str) or (words is not None and not words):
            raise ValueError(f"{name} must be a non-empty sequence of words, not {words!r}")
    if not source_root.startswith("/"):
        raise ValueError(f"the source root must be absolute: {source_root!r}")
    if base:
        _check_relative(base)
    if partial_dir is not None and (not partial_dir or "/" in partial_dir or partial_dir in (".", "..")):
        raise ValueError(f"the partial dir must be one name: {partial_dir!r}")
    if bwlimit is not None and bwlimit <= 0:
        raise ValueError(f"bwlimit must be positive: {bwlimit}")
    if timeout_s is not None and timeout_s <= 0:
        raise ValueError(f"timeout_s must be positive: {timeout_s}")

    # Not -a: with --files-from it is -lptgoD, and we want neither -D (the local copier does
    # not mirror FIFOs, sockets or devices: rsync says "skipping non-regular file" instead)
    # nor -o -g unless asked. -O: directory mtimes are not kept (nor by the local copier), so
    # a compare does not list every directory whose entries changed.
    cmd = [rsync, "-lptO"]
    if preserve_owner:
        cmd += ["-o", "-g"]
    cmd += [flag for name, flag in KEEP_FLAGS.items() if name in keep]
    if hardlinks:
        cmd.append("-H")
    cmd += [
        "-8",  # names with high-bit bytes printed as they are; control bytes still come as \#ooo
        # The remote path and names go through the protocol, not the remote shell's word
        # splitting. -s is the spelling every rsync since 3.0 takes (--protect-args, later
        # --secluded-args).
        "-s",
        f"--out-format={OUT_FORMAT}",
        "-e", shlex.join(ssh),  # rsync splits it on spaces, honouring '' and "" as shlex writes them
    ]
    if rsync_path is not None:
        cmd.append("--rsync-path=" + shlex.join(rsync_path))  # run by the remote shell
    cmd += [f"--exclude={pattern}" for pattern in _EXCLUDES]
    if partial_dir is not None:
        cmd.append(f"--partial-dir={partial_dir}")
    if checksum:
        cmd.append("--checksum")
    if fsync:
        cmd.append("--fsync")
    if compress:
        cmd.append("-z")
    if bwlimit is not None:
        cmd.append(f"--bwlimit={bwlimit}")
    if timeout_s is not None:
        cmd.append(f"--timeout={timeout_s}")
    if dry_run or mode is Mode.COMPARE:
        cmd.append("-n")
    if backup_dir is not None and mode is not Mode.COMPARE:
        if not backup_dir.startswith("/") or not backup_suffix or "/" in backup_suffix:
            raise ValueError(f"a backup dir must be absolute, with a suffix of one name: {backup_dir!r} {backup_suffix!r}")
        # The paths rsync backs up are relative to the pass's base, as the destination's are.
        cmd += ["--backup", f"--backup-dir={posixpath.join(posixpath.normpath(backup_dir), base).rstrip('/')}",
                f"--suffix={backup_suffix}"]

    remote = posixpath.join(posixpath.normpath(remote_root), base).rstrip("/")
    source = posixpath.join(posixpath.normpath(source_root), base).rstrip("/")
    if mode is Mode.COMPARE:
        cmd += ["-r"]
        if delete:
            cmd.append("--delete")
        # A missing remote subtree is a difference to list (a dry run creates nothing); a
        # missing remote root means the target is not there, so that one must exist (`/.`).
        target = remote + "/" if base else remote + "/."
        return [*cmd, "--", source + "/", dest(host, target, user)]

    # --files-from implies -R (names keep their directories: parents are made with their
    # attributes) and --dirs without -r: a listed directory is made, not recursed into, as
    # its contents are listed themselves. "." or a trailing "/" would send a directory's
    # contents, which is why files_from() refuses both.
    cmd += ["--files-from=-", "--from0"]
    if delete:
        cmd.append("--force")  # a directory in the way goes even when not empty (delete-missing-args needs it too)
    if mode is Mode.DELETE:
        cmd.append("--delete-missing-args")
    # `/.`: rsync makes the last component of a missing destination (an unmounted disk's
    # mount point, say) but cannot make `missing/.`: the pass fails (exit 3 or 11) instead.
    return [*cmd, "--", source + "/", dest(host, remote + "/.", user)]


def files_from(paths: Iterable[str]) -> bytes:
    """The NUL-separated list of folder-relative paths (as from os.fsdecode) rsync reads on stdin.

    Refuses "", ".", "..", absolute paths, empty components and a trailing "/": rsync would
    send a directory's whole contents for "." or "dir/". Refuses the daemon's reserved names
    too: excludes keep them out of a transfer, but not out of a delete pass, which would
    delete a listed lock file on the remote all the same.
    """
    out = bytearray()
    for path in paths:
        _check_relative(path)
        if any(is_reserved(part) for part in path.split("/")):
            raise ValueError(f"a reserved name: {path!r}")
        out += os.fsencode(path) + b"\0"
    return bytes(out)


def _check_relative(path: str) -> None:
    if not path or "\0" in path or path.startswith("/") or any(p in ("", ".", "..") for p in path.split("/")):
        raise ValueError(f"not a folder-relative path: {path!r}")


def deletion_list(missing: Iterable[str], exists: Callable[[str], bool]) -> list[str]:
    """The paths a delete pass lists for these paths missing in the source: for each, its
    topmost ancestor that is missing too (exists(path) tells, for a folder-relative path).

    Listing "d/f" when "d" is gone as well makes the sender look for "d" and say it vanished
    (exit 24); listing "d" deletes the remote tree (--force) and "d/f" with it.
    """
    known: dict[str, bool] = {}  # paths share ancestors: ask about each once
    roots: set[str] = set()
    for path in missing:
        parts = path.split("/")
        for n in range(1, len(parts)):
            head = "/".join(parts[:n])
            if head not in known:
                known[head] = exists(head)
            if not known[head]:
                path = head
                break
        roots.add(path)
    return sorted(p for p in roots if not any(a in roots for a in _ancestors(p)))


def _ancestors(path: str) -> Iterator[str]:
    parts = path.split("/")
    return ("/".join(parts[:n]) for n in range(1, len(parts)))


def by_directory(paths: Iterable[str]) -> dict[str, list[str]]:
    """Paths grouped by their parent directory: {base: names}, for one delete pass per base
    (argv(base=...)) on a remote whose rsync mishandles --delete-missing-args (merges_delete_pass)."""
    groups: dict[str, list[str]] = {}
    for path in paths:
        parent, _, name = path.rpartition("/")
        groups.setdefault(parent, []).append(name)
    return groups


# --- what rsync prints on stdout -------------------------------------------------------------

class Kind(StrEnum):
    FILE = "file"
    DIR = "dir"
    SYMLINK = "symlink"
    DEVICE = "device"
    SPECIAL = "special"  # a FIFO or a socket
    UNKNOWN = "unknown"  # a deleted non-directory: rsync does not say what it was


class Action(StrEnum):
    SENT = "sent"          # the file's data went over (new or updated)
    CREATED = "created"    # made (or remade) on the receiver without data: a directory, symlink, device
    HARDLINK = "hardlink"  # made as a hard link (-H)
    ATTRS = "attrs"        # only attributes (mode, owner, times) changed
    DELETED = "deleted"


class OutLine(NamedTuple):
    code: str    # rsync's itemize string, YXcstpoguax ("*deleting  " for a deletion)
    kind: Kind
    action: Action
    size: int    # bytes for a file, the target's length for a symlink, 0 for a deletion
    path: str    # folder-relative ("" for the root), without a directory's trailing "/"

    @property
    def new(self) -> bool:
        """Nothing stood at the path on the receiver before."""
        return self.code.endswith("+++++++++")


_KINDS = {b"f": Kind.FILE, b"d": Kind.DIR, b"L": Kind.SYMLINK, b"D": Kind.DEVICE, b"S": Kind.SPECIAL}
_ACTIONS = {b"<": Action.SENT, b">": Action.SENT, b"c": Action.CREATED, b"h": Action.HARDLINK, b".": Action.ATTRS}
# Y: < sent (a push), > received (a pull, or a local copy); c made locally; h hard link;
# . attributes only. X: the file type. Then 9 attribute flags, or all "+" when new, "?" when
# unknown (older protocols), spaces when nothing changed (-ii only).
_LINE = re.compile(rb"([<>ch.][fdLDS][.+?cstTpogubnax ]{9}|\*deleting  ) (\d+) (.+)", re.DOTALL)
_ESCAPE = re.compile(rb"\\#([0-7]{3})")


def unescape(raw: bytes) -> bytes:
    """Undo rsync's output escaping: bytes below 0x20 (not tab), and a backslash that would
    read as an escape, come as \\#ooo (octal), even with -8; the remote escapes high-bit
    bytes too, as it does not get -8."""
    return _ESCAPE.sub(lambda m: bytes([int(m.group(1), 8)]), raw)


def parse_line(line: bytes, base: str = "") -> OutLine | None:
    """One stdout line of OUT_FORMAT, or None for anything else rsync prints there
    ("created directory ...", "cannot delete non-empty directory: ...": give those to parse_error).
    base: as given to argv, so the path comes out folder-relative."""
    m = _LINE.fullmatch(line.rstrip(b"\r\n"))
    if m is None:
        return None
    code, size, name = m.group(1), int(m.group(2)), unescape(m.group(3))
    is_dir = name.endswith(b"/")
    path = _under(base, os.fsdecode(name.rstrip(b"/")))
    if code.startswith(b"*"):
        return OutLine(code.decode(), Kind.DIR if is_dir else Kind.UNKNOWN, Action.DELETED, size, path)
    return OutLine(code.decode(), _KINDS[code[1:2]], _ACTIONS[code[0:1]], size, path)


def _under(base: str, rel: str) -> str:
    if rel in ("", "."):
        return base
    return f"{base}/{rel}" if base else rel


# --- per-file errors ---------------------------------------------------------------------------

class FileError(NamedTuple):
    role: str          # sender, receiver, generator, Receiver (before it forks), ...; "" when rsync gives none
    op: str            # what failed: "mkstemp", "link_stat", "rename", "delete_file: unlink", "file has vanished", ...
    path: str          # as rsync printed it: absolute (under a root), or relative to the pass's base
    errno: int | None  # None when rsync gives no errno
    message: str       # strerror's text, or rsync's own words
    temp: bool         # path names rsync's temp file (.NAME.XXXXXX), not the file itself


# rsyserr(): "rsync: [ROLE] WHAT: STRERROR (ERRNO)". strerror's text holds no ':'.
_SYSERR = re.compile(rb"rsync: \[(\w+)\] (.*): ([^:]*) \((\d+)\)", re.DOTALL)
_QUOTED = re.compile(rb'([^"]*?) ?"(.*)"(.*)', re.DOTALL)
_RENAME = re.compile(rb'(rename|copy) "(.*)" -> "(.*)"', re.DOTALL)
_SYMLINK = re.compile(rb'symlink "(.*)" -> ".*" failed', re.DOTALL)
_DELETE = re.compile(rb"delete_file: (\w+)\((.*)\) failed", re.DOTALL)
# rprintf() lines with a path and no errno (prefixless; the non-empty-directory one is on stdout).
_PLAIN: tuple[tuple[re.Pattern[bytes], int | None], ...] = (
    (re.compile(rb'(file|directory) has vanished: "(.*)"', re.DOTALL), errnos.ENOENT),
    (re.compile(rb"(cannot delete non-empty directory): (.*)", re.DOTALL), errnos.ENOTEMPTY),
    (re.compile(rb"(could not make way for new [\w ]+?): (.*)", re.DOTALL), None),
    (re.compile(rb'(skipping non-regular file) "(.*)"', re.DOTALL), None),
)
# Operations whose quoted path is the receiver's temp file.
_TEMP_OPS = {b"mkstemp", b"open", b"close failed on"}
_TEMP_NAME = re.compile(r"\.(.+)\.[A-Za-z0-9]{6}", re.DOTALL)


def parse_error(line: bytes) -> FileError | None:
    """A per-file error rsync printed, or None for a line that names no file ("rsync error:
    ...", "connection unexpectedly closed", "write error: Broken pipe", ...)."""
    line = line.rstrip(b"\r\n")
    m = _SYSERR.fullmatch(line)
    if m is None:
        for pattern, code in _PLAIN:
            p = pattern.fullmatch(line)
            if p is not None:
                op = p.group(1).decode()
                op = "file has vanished" if op in ("file", "directory") else op
                return FileError("", op, _decode(p.group(2)), code, op, False)
        return None
    role, what, message, code = m.group(1).decode(), m.group(2), _decode(m.group(3)), int(m.group(4))
    if r := _RENAME.fullmatch(what):
        # The second name is the final one, relative to the destination: no temp name to undo.
        return FileError(role, r.group(1).decode(), _decode(r.group(3)), code, message, False)
    if s := _SYMLINK.fullmatch(what):
        return FileError(role, "symlink", _decode(s.group(1)), code, message, False)
    if d := _DELETE.fullmatch(what):
        return FileError(role, f"delete_file: {d.group(1).decode()}", _decode(d.group(2)), code, message, False)
    q = _QUOTED.fullmatch(what)
    if q is None:
        return None
    op = q.group(1)
    path = _decode(q.group(2))
    temp = op in _TEMP_OPS and _TEMP_NAME.fullmatch(posixpath.basename(path)) is not None
    return FileError(role, op.decode(), path, code, message, temp)


def _decode(raw: bytes) -> str:
    return os.fsdecode(unescape(raw))


def folder_path(err: FileError, *, source_root: str, remote_root: str, base: str = "",
                listed: Iterable[str] = ()) -> str | None:
    """The folder-relative path an error is about ("" for the root), or None when it names
    nothing under either root. For a push: the sender's paths are under source_root, the
    others under remote_root. base: as given to argv. listed: the pass's paths (relative to
    base), to tell which one a temp name came from; without them the plain rule guesses.
    """
    if not err.path.startswith("/"):
        rel = _under(base, err.path)  # the receiver's, relative to its working directory
    else:
        path = posixpath.normpath(err.path)  # "/root/." (argv's dest) is the root
        sender = err.role == "sender" or err.op == "file has vanished"
        first, second = (source_root, remote_root) if sender else (remote_root, source_root)
        under = _strip_root(path, first)
        if under is None:
            under = _strip_root(path, second)
        if under is None:
            return None
        rel = under
    if err.temp:
        parent, _, tmp = rel.rpartition("/")
        rel = "/".join(filter(None, (parent, _from_temp_name(parent, tmp, base, listed))))
    return rel


def _strip_root(path: str, root: str) -> str | None:
    root = posixpath.normpath(root)
    if path == root:
        return ""
    prefix = root.rstrip("/") + "/"
    return path[len(prefix):] if path.startswith(prefix) else None


def _from_temp_name(parent: str, tmp: str, base: str, listed: Iterable[str]) -> str:
    """The name whose temp file rsync called `tmp` in the folder directory `parent`."""
    stem = os.fsencode(tmp)[1:-7]
    for path in listed:
        p, _, name = path.rpartition("/")
        if _under(base, p) == parent and temp_stem(p, name) == stem:
            return name
    m = _TEMP_NAME.fullmatch(tmp)
    return m.group(1) if m else tmp


def temp_stem(parent: str, name: str) -> bytes:
    """What rsync keeps of `name` in its temp name `.STEM.XXXXXX` (receiver.c, get_tmpname):
    a leading dot dropped (so "x" and ".x" share a stem), cut to fit NAME_MAX (not inside a
    multi-byte character), and one trailing dot dropped. parent: its directory, relative to
    the pass's base (the receiver's working directory)."""
    f = os.fsencode(name)
    if f.startswith(b"."):
        f = f[1:]
    length = len(os.fsencode(parent)) + 1 + 1 if parent else 1  # "parent/" and the leading "."
    maxname = min(4096 - length - 7, 255 - 1 - 7)  # MAXPATHLEN, NAME_MAX, ".XXXXXX"
    stem = f[:maxname - 1]
    if len(f) > len(stem) and f[len(stem)] & 0x80:
        stem = stem.rstrip(bytes(range(0x80, 0x100)))
    return stem[:-1] if stem.endswith(b".") else stem


# --- exit codes ----------------------------------------------------------------------------

class RsyncExit(StrEnum):
    """What an exit code means to the caller."""

    OK = "ok"
    # The run went through; some paths were not mirrored (the errors say which, but lines are
    # no proof either way): ask again with a dry run.
    PARTIAL = "partial"
    # The run stopped part way for a reason on one side (a full disk, a signal, memory): some
    # paths may be mirrored; ask again with a dry run, not at once.
    ABORTED = "aborted"
    # The connection or the remote side's start: ssh, the stream, a timeout, no remote rsync
    # (remote_rsync_missing tells) or one that rejected an option (rejected_option tells).
    LINK = "link"
    # The command, the protocol or the roots are wrong for this pair of rsyncs: retrying does
    # not help until someone changes something.
    FATAL_USAGE = "fatal_usage"
    # A code not known here: treat it as LINK (retry later, mirror nothing as done).
    UNKNOWN = "unknown"


# The rsync man page's words (EXIT VALUES), and log.c's for 124-127.
EXIT_MEANINGS: dict[int, str] = {
    0: "success",
    1: "syntax or usage error",
    2: "protocol incompatibility",
    3: "errors selecting input/output files, dirs",
    4: "requested action not supported: an option the client supports and the server does not, or 64-bit files on a platform without them",
    5: "error starting client-server protocol",
    6: "daemon unable to append to log-file",
    10: "error in socket I/O",
    11: "error in file I/O",
    12: "error in rsync protocol data stream",
    13: "errors with program diagnostics",
    14: "error in IPC code",
    15: "sibling process crashed",
    16: "sibling process terminated abnormally",
    19: "received SIGUSR1",
    20: "received SIGINT, SIGTERM, or SIGHUP",
    21: "some error returned by waitpid()",
    22: "error allocating core memory buffers",
    23: "partial transfer due to error",
    24: "partial transfer due to vanished source files",
    25: "the --max-delete limit stopped deletions",
    30: "timeout in data send/receive",
    35: "timeout waiting for daemon connection",
    124: "remote shell failed",
    125: "remote shell killed",
    126: "remote command could not be run",
    127: "remote command not found",
    # Not rsync's: the exit of the remote shell, which rsync returns when it is larger than its
    # own code. ssh exits 255 when it fails itself (connection, host key, authentication).
    255: "the remote shell (ssh) failed: connection, host key or authentication",
}

_CLASSES: dict[int, RsyncExit] = {
    0: RsyncExit.OK,
    **dict.fromkeys((23, 24, 25), RsyncExit.PARTIAL),
    **dict.fromkeys((11, 13, 15, 16, 19, 20, 21, 22), RsyncExit.ABORTED),
    # 12 is also what a missing remote rsync, a remote rsync rejecting an option, or a
    # missing local ssh gives: the remote side's exit only wins when it has ended already.
    **dict.fromkeys((5, 10, 12, 14, 30, 35, 124, 125, 126, 127, 255), RsyncExit.LINK),
    # 2 also comes from a remote shell that prints on start ("is your shell clean?"), and 3
    # or 11 from a missing remote root (argv's `/.`).
    **dict.fromkeys((1, 2, 3, 4, 6), RsyncExit.FATAL_USAGE),
}


def classify(rc: int) -> RsyncExit:
    """The class of an rsync exit code (a negative one, subprocess's for a signal: ABORTED)."""
    if rc < 0:
        return RsyncExit.ABORTED
    return _CLASSES.get(rc, RsyncExit.UNKNOWN)


def describe(rc: int) -> str:
    """An exit code in words, for a log line."""
    if rc < 0:
        return f"rsync was killed by signal {-rc}"
    return f"rsync exit {rc}: {EXIT_MEANINGS.get(rc, 'a code not known here')}"


# --- diagnoses from stderr ------------------------------------------------------------------

def classify_run(rc: int, stderr: bytes) -> RsyncExit:
    """classify(rc), told by stderr where the code misleads: a remote without rsync, or one
    that refuses an option (--fsync before 3.2.4), exits 12 like a broken link, yet no
    reconnection helps until someone changes the remote or the config."""
    kind = classify(rc)
    if kind is RsyncExit.LINK and (remote_rsync_missing(stderr) or rejected_option(stderr) is not None):
        return RsyncExit.FATAL_USAGE
    return kind


def explain(rc: int, stderr: bytes) -> str:
    """A failed run in words for a log line: its exit code's meaning and rsync's own first
    words about it (a remote without rsync said as such)."""
    if remote_rsync_missing(stderr):
        return "rsync is not installed on the remote host (or ssh.rsync_path is wrong)"
    text = stderr.decode(errors="replace").strip().splitlines()
    detail = next((t for t in text if not t.startswith("rsync error:")), text[-1] if text else "")
    return describe(rc) + (f": {detail}" if detail else "")


# A remote shell's words for a command it cannot start: dash "sh: 1: X: not found", bash
# "bash: line 1: X: command not found" or "...: No such file or directory", zsh "zsh:1:
# command not found: X"; "Permission denied" for one that is not executable. Only from a
# shell (ssh says "No such file or directory" of its own files), and only before rsync said
# a word of its protocol ("0 bytes received so far").
_NOT_STARTED = re.compile(
    rb"^(?:\S*/)?(?:ba|da|z|k|mk|a|tc|c|fi)?sh\b.*(?:not found|no such file or directory|permission denied|unknown command)",
    re.MULTILINE | re.IGNORECASE)
_NO_BYTES = b"connection unexpectedly closed (0 bytes received so far)"
_NOT_FOUND_CODES = (b"remote command not found (code 127)", b"remote command could not be run (code 126)")
_REJECTED = re.compile(rb"rsync: on remote machine: (-[^:\s]+): unknown option")
_MODE_0 = re.compile(rb"invalid file mode 00 for ")
_VERSION = re.compile(rb"rsync\s+version\s+v?(\d+)\.(\d+)(?:\.(\d+))?")


def remote_rsync_missing(stderr: bytes) -> bool:
    """The remote side could not start rsync (not installed, or a wrong --rsync-path)."""
    if any(code in stderr for code in _NOT_FOUND_CODES):
        return True
    return _NO_BYTES in stderr and _NOT_STARTED.search(stderr) is not None


def rejected_option(stderr: bytes) -> str | None:
    """The option an older remote rsync refused (e.g. --fsync before 3.2.4; the run exits 12)."""
    m = _REJECTED.search(stderr)
    return m.group(1).decode() if m else None


def hit_missing_args_bug(stderr: bytes) -> bool:
    """A receiver in the --delete-missing-args regression refused the whole list (exit 2)."""
    return _MODE_0.search(stderr) is not None


def version(output: bytes) -> tuple[int, int, int]:
    """(major, minor, patch) from `rsync --version`'s output; ValueError if it has none."""
    m = _VERSION.search(output)
    if m is None:
        raise ValueError(f"no rsync version in {output[:80]!r}")
    return (int(m.group(1)), int(m.group(2)), int(m.group(3) or 0))


def merges_delete_pass(receiver: tuple[int, int, int]) -> bool:
    """Whether one DELETE pass may carry the existing paths and the missing ones together.

    rsync 3.4.3's receiver (and an older one carrying its security fixes, such as Debian 12's
    3.2.7 updates) rejects a --delete-missing-args entry ("invalid file mode 00", exit 2, nothing
    done) unless every entry before it was missing too; and as the sender always lists a
    path's parent directories first, that is any missing path below the pass's base. Fixed
    in 3.4.4 (upstream #910). A version string cannot tell a patched 3.2.7 from another, so
    below 3.4.4: a TRANSFER pass for what exists, then one DELETE pass per parent directory
    (by_directory, argv(base=...)) for what is gone. receiver: the remote's version (a push).
    """
    return receiver >= (3, 4, 4)
