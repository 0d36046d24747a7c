"""The process's memory as the OS sees it: its resident size, and handing the C heap's
free pages back (shared by the memory guard and the checkpointer)."""

from __future__ import annotations

import ctypes
import ctypes.util
from collections.abc import Callable

import psutil


def process_rss_mb() -> float:
    return float(psutil.Process().memory_info().rss) / 2**20


def _malloc_trim() -> Callable[[int], int] | None:
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        fn: Callable[[int], int] = libc.malloc_trim
    except (OSError, AttributeError):  # not glibc (musl, macOS): nothing to call
        return None
    return fn


_TRIM = _malloc_trim()


def release_free_memory() -> None:
    """Hand the C heap's free pages back to the OS (glibc ``malloc_trim``): glibc keeps
    a written checkpoint's freed pages mapped otherwise (docs/design.md, "Memory")."""
    if _TRIM is not None:
        _TRIM(0)
