"""Path mapping between watched events and folder-relative paths, and exclude matching."""

from __future__ import annotations

import fnmatch
import os
import re

from foldermirror.tempnames import is_reserved


def relative(root: str, path: str) -> str | None:
    """`path` relative to `root` ("" for the root itself), or None when it lies outside."""
    if path == root:
        return ""
    prefix = root if root.endswith("/") else root + "/"
    if not path.startswith(prefix):
        return None
    return os.path.normpath(path[len(prefix):])


class Excluder:
    """Glob patterns on source-relative paths.

    A pattern without "/" matches a name at any depth (and so everything below a matching
    directory); a pattern with "/" matches the relative path from the top, or a prefix of it.
    Our own names (temp files, the lock file) are always excluded.
    """

    def __init__(self, patterns: tuple[str, ...]) -> None:
        names = [fnmatch.translate(p) for p in patterns if "/" not in p]
        paths = [fnmatch.translate(p.strip("/")) for p in patterns if "/" in p]
        self._name = re.compile("|".join(names)) if names else None
        self._path = re.compile("|".join(paths)) if paths else None

    def __call__(self, rel: str) -> bool:
        parts = rel.split("/")
        if is_reserved(parts[-1]):
            return True
        if self._name is not None and any(self._name.match(part) for part in parts):
            return True
        if self._path is not None:
            for i in range(1, len(parts) + 1):
                if self._path.match("/".join(parts[:i])):
                    return True
        return False
