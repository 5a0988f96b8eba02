"""Small generated images for webapp and worker tests (the classifier tests have their own)."""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

from tests.classifier.conftest import write_image_folder


def jpeg_bytes(
    colour: tuple[int, int, int] = (200, 30, 30), size: tuple[int, int] = (40, 30)
) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", size, colour).save(buffer, "JPEG")
    return buffer.getvalue()


def zip_of_folder(folder: Path, *, prefix: str = "") -> bytes:
    """A zip of ``folder``'s files, optionally under a top-level ``prefix/`` folder."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zf:
        for path in sorted(folder.rglob("*")):
            if path.is_file():
                zf.write(path, prefix + path.relative_to(folder).as_posix())
    return buffer.getvalue()


def image_folder(root: Path, classes: dict[str, int] | None = None, size=(40, 30)) -> Path:
    return write_image_folder(root, classes or {"a": 6, "b": 6}, size)
