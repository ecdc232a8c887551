"""Give back to the operating system what a burst of work (a catch-up) left behind.

CPython frees objects into its own pools and glibc keeps freed heap pages, so without
this an idle daemon stays as big as its busiest moment.
"""

from __future__ import annotations

import ctypes
import gc


def release() -> None:
    """Collect garbage cycles, then ask glibc to return free heap pages (no-op elsewhere)."""
    gc.collect()
    try:
        trim = ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):  # not glibc (musl, macOS)
        return
    trim(0)
