"""Error classes that carry a user-facing message and the exit code they map to.

Exit codes live here and nowhere else.
"""

from __future__ import annotations

import errno
import os

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_CONFIG = 78  # EX_CONFIG; the unit's RestartPreventExitStatus=78 relies on it
EXIT_NOT_RUNNING = 3  # `status`: no daemon answers (the LSB code for "program is not running")
EXIT_DIFFERENCES = 1  # `sync --dry-run --exit-code`: a sync would change something (as `git diff --exit-code`)
EXIT_INTERRUPTED = 130  # `sync` stopped by Ctrl-C: 128 + SIGINT, what a shell reports for it


class FoldermirrorError(Exception):
    """An error the operator can act on; str() is the message shown to them."""

    exit_code = EXIT_FAILURE


class ConfigError(FoldermirrorError):
    """The configuration file is missing, unreadable or invalid."""

    exit_code = EXIT_CONFIG

    def __init__(self, file: str, message: str, *, line: int | None = None,
                 column: int | None = None, key: str | None = None) -> None:
        self.file = file
        self.line = line
        self.column = column
        self.key = key
        self.cause = message
        where = file
        if line is not None:
            where += f":{line}"
            if column is not None:
                where += f":{column}"
        text = f"{where}: {key}: {message}" if key else f"{where}: {message}"
        super().__init__(text)


class NoConfigError(FoldermirrorError):
    """No config file was named and none stands at the default path."""

    exit_code = EXIT_CONFIG


class StartupError(FoldermirrorError):
    """The daemon could not start for a reason other than the config's shape."""


class NotRunningError(FoldermirrorError):
    """`status` or `rescan` found no daemon answering for this config."""

    exit_code = EXIT_NOT_RUNNING


# Failures no retry can help: the daemon does not retry them, and their fix is the whole story.
PERMANENT_ERRNOS = frozenset({errno.ENAMETOOLONG, errno.EILSEQ, errno.EEXIST})


def error_kind(err_no: int) -> str:
    """A short, stable name for a failure's cause: the errno name, or "other"."""
    return errno.errorcode.get(err_no, "other") if err_no else "other"


def fix_for(err_no: int, will_retry: bool) -> str:
    """What the operator can do about a copy that failed with `err_no`.

    `will_retry` is the mirror_failed line's: only a copy that is tried again says so. A daemon
    retries every failure it can (so will_retry false there means a failure no retry helps);
    `sync` retries none.
    """
    if err_no in (errno.EACCES, errno.EPERM):
        fix = (f"give the service user (uid {os.geteuid()}) read access to the source path and write "
               "access to its folder in the target (check chmod/chown, ACLs, chattr +i)")
    else:
        fix = _FIXES.get(err_no, "see the error: the path in the source or in the target needs attention")
    if err_no in PERMANENT_ERRNOS:
        return fix
    return fix + ("; the copy is retried with backoff" if will_retry else "; then run sync again")


_FIXES = {
    errno.ENOSPC: "free space on the target's file system (df -h on the target)",
    errno.EDQUOT: "raise the service user's disk quota on the target's file system, or free space there",
    errno.EROFS: "remount the target file system read-write",
    errno.EEXIST: "remove or rename what stands at that path in the target, or set delete: true for this folder",
    errno.ENAMETOOLONG: "shorten the name in the source: the target file system does not accept it",
    errno.EILSEQ: "rename the file in the source: the target file system does not accept the bytes of its name",
    errno.EIO: "check the disk and the kernel log (journalctl -k): an I/O error is a device or file-system fault",
    errno.EMFILE: "raise the service's open-file limit (LimitNOFILE= in the unit)",
    errno.ENFILE: "raise the system's open-file limit (fs.file-max)",
}
