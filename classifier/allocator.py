"""Tune glibc's allocator for a process that classifies one photo after another.

Every photo passes through a few arrays of 150-900 KB (decoded pixels, the resize's float32
rows, the model's float32 input). In a gunicorn thread such blocks are mapped, faulted in
page by page and handed back to the kernel on every request (glibc's default mmap threshold
is 128 KB, and thread arenas are trimmed back after each request): measured on a 2-core
machine, decoding and resizing a 320x240 JPEG in a worker thread took 2.9 ms with glibc's
defaults and 1.2 ms with these settings.

:func:`tune` keeps blocks under 1 MB in the heap for reuse (fixed mmap threshold), gives
back free space at the heap's top only above 4 MB (trim threshold: a photo's arrays come to
~3.5 MB, and with a 1 MB threshold they were handed back after every photo, gaining
nothing), and uses one arena so the worker threads reuse the same memory instead of each
growing its own. Blocks over 1 MB (a large upload's decoded pixels) still go straight back
to the kernel. Measured with ``bench/serve_load.py``'s load (4 clients, 5 rounds of 8 s,
both servers up side by side): 104 against 91 classifications/s, p50 38 against 44 ms,
for 2-5 MB more per web worker (144-148 against 143 MB). The web process calls it before
gunicorn starts its threads.

Settings made through the environment (``MALLOC_ARENA_MAX``, ``MALLOC_MMAP_THRESHOLD_``,
``MALLOC_TRIM_THRESHOLD_``, ``GLIBC_TUNABLES``) win: then nothing is changed. Elsewhere than
glibc (macOS, musl) it does nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
import sys

log = logging.getLogger(__name__)

# From glibc's malloc.h.
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
M_ARENA_MAX = -8

MMAP_THRESHOLD = 2**20
TRIM_THRESHOLD = 4 * 2**20
ARENA_MAX = 1
USER_SETTINGS = (
    "MALLOC_ARENA_MAX",
    "MALLOC_MMAP_THRESHOLD_",
    "MALLOC_TRIM_THRESHOLD_",
    "GLIBC_TUNABLES",
)

_tuned = False


def tune() -> bool:
    """Apply the settings above once per process; True if they are in effect."""
    global _tuned
    if _tuned:
        return True
    if not sys.platform.startswith("linux") or any(name in os.environ for name in USER_SETTINGS):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    settings = (
        (M_MMAP_THRESHOLD, MMAP_THRESHOLD),
        (M_TRIM_THRESHOLD, TRIM_THRESHOLD),
        (M_ARENA_MAX, ARENA_MAX),
    )
    _tuned = all(mallopt(option, value) == 1 for option, value in settings)
    if not _tuned:
        log.warning("mallopt refused the allocator settings; using glibc's defaults.")
    return _tuned
