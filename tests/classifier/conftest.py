"""Shared fixtures for the classifier tests: small generated photo folders and ../shared."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

SHARED_DIR = Path(__file__).resolve().parents[2] / ".." / "shared"

# Per-class base colours, far apart so even a random-weights trunk separates them.
PALETTE = [
    (220, 40, 40),
    (40, 200, 60),
    (40, 60, 220),
    (230, 220, 40),
    (200, 40, 210),
    (40, 210, 220),
]


def write_image_folder(
    root: Path,
    classes: dict[str, int] | None = None,
    size: tuple[int, int] = (40, 30),
    *,
    seed: int = 0,
) -> Path:
    """Write ``root/<class>/<class>_<i>.(jpg|png)`` images: per-class colour plus a pattern.

    Class ``k`` is a noisy version of ``PALETTE[k]`` with stripes whose direction depends on
    the class, so a model can learn the classes; JPEG and PNG alternate. Returns ``root``.
    """
    classes = {"a": 6, "b": 6} if classes is None else classes
    rng = np.random.default_rng(seed)
    width, height = size
    for k, (name, count) in enumerate(sorted(classes.items())):
        folder = root / name
        folder.mkdir(parents=True, exist_ok=True)
        colour = np.array(PALETTE[k % len(PALETTE)], dtype=np.float32)
        for i in range(count):
            pixels = np.empty((height, width, 3), dtype=np.float32)
            pixels[:] = colour
            pixels += rng.normal(0, 12, size=pixels.shape)
            if k % 2:
                pixels[::4, :, :] *= 0.5
            else:
                pixels[:, ::4, :] *= 0.5
            image = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8), "RGB")
            suffix = ".jpg" if i % 2 == 0 else ".png"
            image.save(folder / f"{name}_{i:03d}{suffix}")
    return root


@pytest.fixture
def make_image_folder() -> Callable[..., Path]:
    """``make_image_folder(tmp_path, classes={"a": 6, "b": 6}, size=(40, 30))`` -> root."""
    return write_image_folder


@pytest.fixture
def shared_dir() -> Path:
    """The ``shared`` folder beside the repository root (weights, flower photos)."""
    if not SHARED_DIR.is_dir():
        pytest.skip(f"needs the shared folder beside the repository ({SHARED_DIR.resolve()})")
    return SHARED_DIR.resolve()
