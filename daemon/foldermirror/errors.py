"""Error classes that carry a user-facing message and the exit code they map to.

Exit codes live here and nowhere else.
"""

from __future__ import annotations

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_CONFIG = 78  # EX_CONFIG; the unit's RestartPreventExitStatus=78 relies on it


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


class StartupError(FoldermirrorError):
    """The daemon could not start for a reason other than the config's shape."""
