"""Path mapping between watched events and folder-relative paths; exclude matching is in filters.py."""

from __future__ import annotations

import os

from foldermirror.filters import Excluder

__all__ = ["Excluder", "relative"]


def relative(root: str, path: str) -> str | None:
    """`path` relative to `root` ("" for the root itself), or None when it lies outside."""
    if path == root:
        return ""
    prefix = root if root.endswith("/") else root + "/"
    if not path.startswith(prefix):
        return None
    return os.path.normpath(path[len(prefix):])
