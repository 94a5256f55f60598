"""CPU allocator tuning for training steps (glibc ``mallopt``); see ``tune_cpu_allocator``."""

from __future__ import annotations

import os
import sys

__all__ = ["tune_cpu_allocator"]

_ALLOCATOR_TUNED = False


def tune_cpu_allocator() -> None:
    """Let glibc keep freed tensor memory in the heap instead of unmapping it.

    A training step allocates and frees the same few MB of activations and gradients every
    step; with glibc's defaults many of them are fresh ``mmap`` pages that are zero-filled
    by page faults on every step (~500 faults per DeepFM step at batch 1024). Raising the
    mmap and trim thresholds (once per process, Linux/glibc only) reuses that memory, the
    effect of running under jemalloc/tcmalloc. The cost is that up to 512 MB of freed heap
    stays with the process. ``ONDEVICE_MALLOC_TUNING=0`` turns it off.
    """
    global _ALLOCATOR_TUNED
    if _ALLOCATOR_TUNED or os.environ.get("ONDEVICE_MALLOC_TUNING", "1") == "0" or not sys.platform.startswith("linux"):
        return
    _ALLOCATOR_TUNED = True
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6")
        m_trim_threshold, m_mmap_threshold = -1, -3
        libc.mallopt(m_mmap_threshold, 32 << 20)  # glibc's maximum on 64-bit
        libc.mallopt(m_trim_threshold, 512 << 20)
    except (OSError, AttributeError):  # not glibc (musl, macOS): nothing to tune
        pass
