"""Shared fixtures for the classifier tests: small generated photo folders and ../shared."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from classifier.config import TrainConfig

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


def small_train_config(**overrides: object) -> TrainConfig:
    """A TrainConfig that trains in seconds: random trunk weights, 32 px, a 32-unit head."""
    defaults = {
        "weights": "none",
        "image_size": 32,
        "epochs": 2,
        "batch_size": 8,
        "head_units": (32,),
        "learning_rate": 3e-3,
    }
    return TrainConfig(**{**defaults, **overrides})


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


# --- Export / serving fixtures (a tiny exported version, built once per session) -----------

TINY_SIZE = 32
TINY_CLASSES = ["cat", "dog", "eel"]


def tiny_classifier(num_classes: int = 3, *, size: int = TINY_SIZE, seed: int = 0) -> object:
    """Raw 0-255 pixels -> Rescaling -> conv -> BN -> GAP -> softmax: the real model's shape."""
    import keras

    keras.utils.set_random_seed(seed)
    inputs = keras.Input((size, size, 3), name="pixels")
    x = keras.layers.Rescaling(1 / 127.5, offset=-1)(inputs)
    x = keras.layers.Conv2D(8, 3, strides=2, activation="relu")(x)
    x = keras.layers.BatchNormalization()(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    x = keras.layers.Dropout(0.2)(x)
    outputs = keras.layers.Dense(num_classes, activation="softmax")(x)
    return keras.Model(inputs, outputs)


def export_tiny_version(out_dir: Path, *, model: object = None) -> Path:
    """Export ``tiny_classifier()`` (or ``model``) as a complete version at ``out_dir``."""
    from classifier.config import TrainConfig
    from classifier.export import export_version

    return export_version(
        model if model is not None else tiny_classifier(),
        out_dir,
        class_names=TINY_CLASSES,
        config=TrainConfig(image_size=TINY_SIZE, weights="none", epochs=1),
        metrics={"val_accuracy": 0.5, "val_loss": 1.0},
        history=[{"epoch": 1, "loss": 1.1, "accuracy": 0.4}],
        dataset={"fingerprint": "f" * 16, "counts": {"cat": 2, "dog": 2, "eel": 2}},
    )


@pytest.fixture(scope="session")
def tiny_version(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A read-only-by-convention exported version (3 classes, 32x32); copy it to modify it."""
    pytest.importorskip("tensorflow")
    return export_tiny_version(tmp_path_factory.mktemp("versions") / "v1")


@pytest.fixture
def make_tiny_model() -> Callable[..., object]:
    """``make_tiny_model(num_classes=3, size=32, seed=0)`` -> a small Keras classifier."""
    pytest.importorskip("keras")
    return tiny_classifier


@pytest.fixture
def make_tiny_version() -> Callable[..., Path]:
    """``make_tiny_version(out_dir, model=None)`` -> an exported version directory."""
    pytest.importorskip("tensorflow")
    return export_tiny_version


# --- Awkward and hostile image files (for images.py and serving tests) ---------------------


def _encode(image: Image.Image, fmt: str, **options: object) -> bytes:
    import io

    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


def png_bomb(width: int = 20_000, height: int = 20_000) -> bytes:
    """A valid 1-bit PNG of ``width`` x ``height`` black pixels, a few tens of KB on disk.

    Built row block by row block with zlib, so making it never holds the decoded image.
    """
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    rows = (b"\x00" + bytes((width + 7) // 8)) * 500
    compressor = zlib.compressobj(1)
    idat = b"".join(compressor.compress(rows) for _ in range(height // 500))
    idat += compressor.compress((b"\x00" + bytes((width + 7) // 8)) * (height % 500))
    idat += compressor.flush()
    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    signature = b"\x89PNG\r\n\x1a\n"
    return signature + chunk(b"IHDR", header) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def odd_image_files() -> dict[str, bytes]:
    """Readable photos in awkward encodings, each 40 wide x 20 high as displayed unless noted.

    Every one is red on its left half and blue on its right half (white and black for
    ``png_16bit_grey``, greys for ``greyscale``; ``png_transparent``'s right half is fully
    transparent, which reads as white); ``exif_rotated`` is stored sideways (20 x 40, red
    at the bottom) and tagged orientation 6, so it displays like the others.
    """
    red, blue = (255, 0, 0), (0, 0, 255)
    halves = Image.new("RGB", (40, 20), blue)
    halves.paste(red, (0, 0, 20, 20))
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: rotate 90 degrees clockwise to display.
    sideways = halves.transpose(Image.Transpose.ROTATE_90)
    rgba = halves.convert("RGBA")
    see_through = rgba.copy()
    see_through.paste((0, 0, 255, 0), (20, 0, 40, 20))
    second = Image.new("RGB", (40, 20), (0, 255, 0))
    sixteen = np.zeros((20, 40), np.uint16)
    sixteen[:, :20] = 65535
    return {
        "jpeg": _encode(halves, "JPEG", quality=95),
        "cmyk_jpeg": _encode(halves.convert("CMYK"), "JPEG", quality=95),
        "png_16bit_grey": _encode(Image.fromarray(sixteen), "PNG"),
        "png_alpha": _encode(rgba, "PNG"),
        "png_transparent": _encode(see_through, "PNG"),
        "gif_animated": _encode(halves, "GIF", save_all=True, append_images=[second], loop=0),
        "exif_rotated": _encode(sideways, "JPEG", quality=95, exif=exif),
        "bmp": _encode(halves, "BMP"),
        "webp": _encode(halves, "WEBP", lossless=True),
        "greyscale": _encode(halves.convert("L"), "PNG"),
    }


def bad_image_files() -> dict[str, bytes]:
    """Byte strings that must be refused with ``InvalidImageError``."""
    jpeg = _encode(Image.new("RGB", (64, 64), (10, 200, 30)), "JPEG")
    return {
        "empty": b"",
        "text": b"this is not an image\n" * 10,
        "truncated_jpeg": jpeg[: len(jpeg) // 2],
        "png_bomb": png_bomb(),
        "pdf": b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n1 0 obj\n<<>>\nendobj\n",
    }


@pytest.fixture(scope="session")
def odd_images() -> dict[str, bytes]:
    return odd_image_files()


@pytest.fixture(scope="session")
def bad_images() -> dict[str, bytes]:
    return bad_image_files()


@pytest.fixture
def full_disk() -> Callable[[int], object]:
    """``with full_disk(nbytes):`` writes past ``nbytes`` in one file fail, as on a full disk.

    Uses the process's file-size limit (``RLIMIT_FSIZE``, with ``SIGXFSZ`` ignored so a
    write fails with ``OSError`` instead of killing the process); restored on exit.
    """
    import contextlib
    import resource
    import signal

    @contextlib.contextmanager
    def limit(nbytes: int):
        handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
        resource.setrlimit(resource.RLIMIT_FSIZE, (nbytes, hard))
        try:
            yield
        finally:
            resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
            signal.signal(signal.SIGXFSZ, handler)

    return limit
