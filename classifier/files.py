"""Small file-system helpers shared by the feature cache and quantization: whole files
replaced in one rename, and an exclusive lock between processes."""

from __future__ import annotations

import fcntl
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO


def atomic_write(path: Path, content: bytes, *, mode: int | None = None) -> None:
    """Write ``content`` to ``path`` so that readers see the old file or the new one, whole.

    See :func:`atomic_file`. ``mode`` sets the new file's permissions (a temporary file is
    created 0600).
    """
    with atomic_file(path, mode=mode) as handle:
        handle.write(content)


@contextmanager
def atomic_file(path: Path, *, mode: int | None = None) -> Iterator[BinaryIO]:
    """Give a binary file to write; when the block ends it replaces ``path`` in one rename.

    The bytes go to a temporary file beside ``path`` (same filesystem), are flushed to
    disk, and the file is renamed over ``path``; the folder is synced so the rename
    survives a crash. When the block or the write fails (a full disk), the temporary file
    is removed and ``path`` is left as it was.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    handle = tempfile.NamedTemporaryFile(  # noqa: SIM115 - closed by the with block below
        dir=path.parent, prefix=f".{path.name}.", suffix=".tmp", delete=False
    )
    try:
        with handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        if mode is not None:
            os.chmod(handle.name, mode)
        os.replace(handle.name, path)
    except BaseException:
        Path(handle.name).unlink(missing_ok=True)
        raise
    fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextmanager
def locked(path: Path) -> Iterator[None]:
    """Hold an exclusive ``flock`` on ``path`` (created if missing) for the block."""
    with open(path, "a+b") as handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def quantize_lock_path(version_dir: Path) -> Path:
    """The lock that serialises int8 quantizations of one version (beside its folder, so a
    quantization can hold it while the folder's files are replaced)."""
    return version_dir.parent / f".{version_dir.name}.quantize.lock"
