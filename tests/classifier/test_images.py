"""images.py: the one decoding path for training and serving, on awkward and hostile files."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from classifier.errors import InvalidImageError
from classifier.images import load_image, open_image

RED, BLUE, WHITE, BLACK = (255, 0, 0), (0, 0, 255), (255, 255, 255), (0, 0, 0)
# (left-half colour, right-half colour) as displayed, for each file of ``odd_images``.
EXPECTED_HALVES = {
    "jpeg": (RED, BLUE),
    "cmyk_jpeg": (RED, BLUE),
    "png_16bit_grey": (WHITE, BLACK),
    "png_alpha": (RED, BLUE),
    "png_transparent": (RED, WHITE),
    "gif_animated": (RED, BLUE),
    "exif_rotated": (RED, BLUE),
    "bmp": (RED, BLUE),
    "webp": (RED, BLUE),
    "greyscale": ((76, 76, 76), (29, 29, 29)),
}


@pytest.mark.parametrize("name", sorted(EXPECTED_HALVES))
def test_it_reads_awkward_encodings_upright_as_rgb(odd_images: dict[str, bytes], name: str) -> None:
    image = open_image(odd_images[name])
    pixels = np.asarray(image, dtype=np.int16)
    left, right = EXPECTED_HALVES[name]

    assert image.mode == "RGB"
    assert image.size == (40, 20)
    np.testing.assert_allclose(pixels[10, 5], left, atol=6)
    np.testing.assert_allclose(pixels[10, 35], right, atol=6)


def test_it_reads_a_dark_16bit_png_as_dark() -> None:
    buffer = io.BytesIO()
    Image.fromarray(np.full((8, 8), 200, np.uint16)).save(buffer, "PNG")

    assert load_image(buffer.getvalue(), 8).max() <= 1


@pytest.mark.parametrize(
    "name", ["empty", "text", "truncated_jpeg", "png_bomb", "pdf"], ids=lambda n: n
)
def test_it_refuses_bad_files_with_invalid_image_error(
    bad_images: dict[str, bytes], name: str
) -> None:
    with pytest.raises(InvalidImageError):
        load_image(bad_images[name], 16)


def test_it_refuses_images_above_the_pixel_limit_before_decoding(
    odd_images: dict[str, bytes],
) -> None:
    with pytest.raises(InvalidImageError, match="too large"):
        open_image(odd_images["jpeg"], max_pixels=799)

    assert open_image(odd_images["jpeg"], max_pixels=800).size == (40, 20)


def test_it_accepts_bytes_paths_files_and_pil_images_alike(
    odd_images: dict[str, bytes], tmp_path: Path
) -> None:
    data = odd_images["png_alpha"]
    path = tmp_path / "photo.png"
    path.write_bytes(data)
    expected = load_image(data, 16)

    assert expected.shape == (16, 16, 3) and expected.dtype == np.uint8
    for source in (path, str(path), io.BytesIO(data), Image.open(io.BytesIO(data))):
        np.testing.assert_array_equal(load_image(source, 16), expected)


def test_it_squashes_the_whole_photo_without_cropping(odd_images: dict[str, bytes]) -> None:
    pixels = load_image(odd_images["bmp"], 10).astype(np.int16)

    np.testing.assert_allclose(pixels[:, 0], np.tile(RED, (10, 1)), atol=1)
    np.testing.assert_allclose(pixels[:, -1], np.tile(BLUE, (10, 1)), atol=1)


def test_it_refuses_an_unsupported_format() -> None:
    buffer = io.BytesIO()
    Image.new("RGB", (4, 4)).save(buffer, "TIFF")

    with pytest.raises(InvalidImageError, match="Unsupported image format TIFF"):
        open_image(buffer.getvalue())


@pytest.mark.parametrize(("width", "height"), [(300, 200), (500, 375), (60, 90), (300, 70)])
def test_it_resizes_as_tf_image_resize_does(width: int, height: int) -> None:
    # The recipe's pipeline resizes with tf.image.resize (bilinear, no antialiasing); the
    # ImageNet trunk gives better features on that than on PIL's filtered Image.resize.
    tf = pytest.importorskip("tensorflow")
    pixels = np.random.default_rng(width).integers(0, 256, (height, width, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "PNG")

    ours = load_image(buffer.getvalue(), 96).astype(np.float32)
    theirs = tf.image.resize(pixels, (96, 96), method="bilinear", antialias=False).numpy()

    assert ours.shape == (96, 96, 3)
    assert np.abs(ours - theirs).max() < 0.51  # ours is theirs rounded to uint8


def test_it_refuses_an_unknown_resize_method() -> None:
    buffer = io.BytesIO()
    Image.new("RGB", (40, 30), (1, 2, 3)).save(buffer, "PNG")

    with pytest.raises(ValueError, match="Unknown resize method 'nearest'"):
        load_image(buffer.getvalue(), 32, resize="nearest")


def test_it_refuses_a_file_too_large_for_a_photo_before_reading_it(tmp_path: Path) -> None:
    from classifier.images import MAX_IMAGE_BYTES

    huge = tmp_path / "huge.jpg"
    with open(huge, "wb") as handle:  # sparse: no disk space, no memory
        handle.truncate(MAX_IMAGE_BYTES + 1)

    with pytest.raises(InvalidImageError, match="too large for a photo"):
        open_image(huge)


def test_it_refuses_a_stream_too_large_for_a_photo(monkeypatch) -> None:
    monkeypatch.setattr("classifier.images.MAX_IMAGE_BYTES", 1000)

    with pytest.raises(InvalidImageError, match="too large for a photo"):
        open_image(io.BytesIO(b"\xff" * 1001))
