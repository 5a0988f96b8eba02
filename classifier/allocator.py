"""Memory settings for a process that classifies one photo after another.

Two things, both for the web workers: :func:`tune` sets glibc's allocator for per-photo
arrays, and :func:`release_file_pages` drops a loaded model file's pages from the resident
set once LiteRT no longer reads them.

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
for 2-5 MB more per web worker (144-148 against 143 MB, before the model file's pages
were released as below). The web process calls it before gunicorn starts its threads.

Settings made through the environment (``MALLOC_ARENA_MAX``, ``MALLOC_MMAP_THRESHOLD_``,
``MALLOC_TRIM_THRESHOLD_``, ``GLIBC_TUNABLES``) win: then nothing is changed. Elsewhere than
glibc (macOS, musl) it does nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import logging
import os
import sys
from pathlib import Path

log = logging.getLogger(__name__)

# From glibc's malloc.h.
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
M_ARENA_MAX = -8
MADV_DONTNEED = 4  # the same on every Linux architecture Graft runs on

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
    libc = _libc()
    mallopt = getattr(libc, "mallopt", None)
    if mallopt is None:  # not glibc
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


def release_file_pages(path: str | Path) -> int:
    """Drop this process's resident pages of its read-only mappings of ``path``.

    LiteRT maps a ``.tflite`` file given by path and reads its weights once, when XNNPACK
    packs them into its own buffers; the mapped pages then stay resident, counted in the
    process's RSS, though nothing reads them again: 15.5 MB for MobileNetV2 1.0 with the
    recipe's head (a web worker went from 81 to 65.6 MB after loading the model and one
    inference, and stayed there over 20 more). ``MADV_DONTNEED`` on a read-only file
    mapping only drops this process's page-table entries: the data stays in the page cache
    (shared by all workers), and any later read faults it back in, unchanged.

    Returns the bytes of mappings released; 0 off Linux or without such a mapping.
    """
    if not sys.platform.startswith("linux"):
        return 0
    madvise = getattr(_libc(), "madvise", None)
    if madvise is None:
        return 0
    madvise.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int)
    madvise.restype = ctypes.c_int
    target = os.path.realpath(path)
    try:
        maps = Path("/proc/self/maps").read_text()
    except OSError:
        return 0
    released = 0
    for line in maps.splitlines():
        fields = line.split(maxsplit=5)
        if len(fields) < 6 or fields[5] != target or "w" in fields[1]:
            continue
        start, end = (int(address, 16) for address in fields[0].split("-"))
        if madvise(start, end - start, MADV_DONTNEED) == 0:
            released += end - start
    return released


@functools.cache
def _libc() -> ctypes.CDLL | None:
    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    except OSError:
        return None
