"""Giving memory back after a pipeline is let go: Python's garbage, then what the C allocator keeps."""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import logging
import sys

log = logging.getLogger(__name__)


def rss_mb() -> float:
    """This process's resident memory in MiB (any platform)."""
    import psutil

    return float(psutil.Process().memory_info().rss) / 2**20


def release_memory() -> None:
    """Collect garbage, and on glibc return freed heap pages to the system (``malloc_trim``): without it, the
    megabytes a dropped pipeline freed stay in the process's RSS."""
    gc.collect()
    if not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.malloc_trim(0)
    except (OSError, AttributeError):  # not glibc (musl has no malloc_trim): nothing more to do
        log.debug("malloc_trim is not available")
