"""serving.Predictor: LiteRT only, checksums, top-k, threads, and bad input."""

from __future__ import annotations

import io
import json
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from classifier.errors import ArtifactError, InvalidImageError
from classifier.images import RESIZE_PIL, RESIZE_TF, load_image
from classifier.serving import Predictor

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def predictor(tiny_version: Path) -> Predictor:
    return Predictor.load(tiny_version, num_threads=1)


@pytest.fixture
def version_copy(tiny_version: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(tiny_version, tmp_path / "v1"))


def photos(n: int, seed: int = 0) -> list[bytes]:
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        buffer = io.BytesIO()
        pixels = rng.integers(0, 256, (24, 36, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(buffer, "PNG")
        out.append(buffer.getvalue())
    return out


def test_it_loads_and_predicts_without_importing_tensorflow_or_keras(
    tiny_version: Path, tmp_path: Path
) -> None:
    photo = tmp_path / "photo.png"
    photo.write_bytes(photos(1)[0])
    script = (
        "import sys\n"
        "from classifier.serving import Predictor\n"
        f"print(Predictor.load({str(tiny_version)!r}).predict({str(photo)!r})[0]['label'])\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('tensorflow', 'keras')))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, check=True
    )

    label, heavy = result.stdout.split("\n")[:2]
    assert label in ("cat", "dog", "eel")
    assert heavy == "[]"


def test_it_exposes_labels_size_and_metadata(predictor: Predictor, tiny_version: Path) -> None:
    assert predictor.labels == ["cat", "dog", "eel"]
    assert predictor.image_size == 32
    assert predictor.metadata["dataset"]["fingerprint"] == "f" * 16
    assert predictor.version_dir == tiny_version


def test_it_returns_top_k_labels_most_confident_first(predictor: Predictor) -> None:
    every = predictor.predict(photos(1)[0], top_k=10)
    top_two = predictor.predict(photos(1)[0], top_k=2)

    assert sorted(r["label"] for r in every) == ["cat", "dog", "eel"]
    confidences = [r["confidence"] for r in every]
    assert confidences == sorted(confidences, reverse=True)
    assert sum(confidences) == pytest.approx(1.0, abs=1e-5)
    assert top_two == every[:2]
    with pytest.raises(ValueError, match="top_k"):
        predictor.predict(photos(1)[0], top_k=0)


def test_it_takes_bytes_paths_files_and_pil_images(predictor: Predictor, tmp_path: Path) -> None:
    data = photos(1)[0]
    path = tmp_path / "photo.png"
    path.write_bytes(data)
    expected = predictor.predict(data)

    for source in (path, str(path), io.BytesIO(data), Image.open(io.BytesIO(data))):
        assert predictor.predict(source) == expected


def test_predict_many_matches_one_by_one(predictor: Predictor) -> None:
    batch = photos(5)

    assert predictor.predict_many(batch, top_k=2) == [predictor.predict(p, top_k=2) for p in batch]
    assert predictor.predict_many([]) == []


def test_predict_array_takes_raw_pixels(predictor: Predictor) -> None:
    pixels = np.random.default_rng(3).integers(0, 256, (4, 32, 32, 3), dtype=np.uint8)

    probs = predictor.predict_array(pixels)

    assert probs.shape == (4, 3)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-5)
    np.testing.assert_array_equal(predictor.predict_array(pixels.astype(np.float32)), probs)
    with pytest.raises(ValueError, match="Expected pixels"):
        predictor.predict_array(pixels[0])


def test_it_gives_identical_answers_from_many_threads(predictor: Predictor) -> None:
    batch = photos(12, seed=1)
    expected = [predictor.predict(p) for p in batch]

    with ThreadPoolExecutor(max_workers=8) as pool:
        answers = list(pool.map(predictor.predict, batch * 5))

    assert answers == expected * 5


@pytest.mark.parametrize(
    "name",
    ["cmyk_jpeg", "png_16bit_grey", "png_alpha", "gif_animated", "exif_rotated", "greyscale"],
)
def test_it_classifies_awkward_encodings(
    predictor: Predictor, odd_images: dict[str, bytes], name: str
) -> None:
    assert len(predictor.predict(odd_images[name], top_k=3)) == 3


@pytest.mark.parametrize("name", ["empty", "text", "truncated_jpeg", "png_bomb", "pdf"])
def test_it_refuses_bad_input(
    predictor: Predictor, bad_images: dict[str, bytes], name: str
) -> None:
    with pytest.raises(InvalidImageError):
        predictor.predict(bad_images[name])


def test_predict_many_names_the_bad_image(
    predictor: Predictor, bad_images: dict[str, bytes]
) -> None:
    with pytest.raises(InvalidImageError, match="Image 2"):
        predictor.predict_many([photos(1)[0], bad_images["text"]])


def test_it_refuses_a_tampered_model(version_copy: Path) -> None:
    model = version_copy / "model.tflite"
    data = bytearray(model.read_bytes())
    data[-100] ^= 0xFF
    model.write_bytes(bytes(data))

    with pytest.raises(ArtifactError, match=r"model\.tflite does not match its checksum"):
        Predictor.load(version_copy)


def test_it_refuses_edited_labels(version_copy: Path) -> None:
    (version_copy / "labels.json").write_text('["cat", "dog", "fox"]')

    with pytest.raises(ArtifactError, match=r"labels\.json does not match"):
        Predictor.load(version_copy)


@pytest.mark.parametrize("name", ["model.tflite", "labels.json", "metadata.json", "model.keras"])
def test_it_refuses_a_version_with_a_missing_file(version_copy: Path, name: str) -> None:
    (version_copy / name).unlink()

    with pytest.raises(ArtifactError, match=name.replace(".", r"\.")):
        Predictor.load(version_copy)


def test_it_refuses_metadata_that_is_not_json(version_copy: Path) -> None:
    (version_copy / "metadata.json").write_text("{not json")

    with pytest.raises(ArtifactError, match="not valid JSON"):
        Predictor.load(version_copy)


def test_without_verify_it_skips_checksums_but_still_checks_labels(version_copy: Path) -> None:
    (version_copy / "model.keras").write_bytes(b"retrained elsewhere")
    assert Predictor.load(version_copy, verify=False).labels == ["cat", "dog", "eel"]

    (version_copy / "labels.json").write_text(json.dumps(["cat", "dog"]))
    with pytest.raises(ArtifactError, match="3 outputs but labels.json names 2"):
        Predictor.load(version_copy, verify=False)


def _edit_input_spec(version_dir: Path, **changes: object) -> None:
    path = version_dir / "metadata.json"
    metadata = json.loads(path.read_text())
    for key, value in changes.items():
        if value is None:
            metadata["input"].pop(key, None)
        else:
            metadata["input"][key] = value
    path.write_text(json.dumps(metadata))


def test_a_version_is_served_with_the_resize_it_was_trained_with(version_copy: Path) -> None:
    photo = photos(1, seed=5)[0]  # 36x24 noise: the two resizes differ a lot on it
    current = Predictor.load(version_copy)
    assert json.loads((version_copy / "metadata.json").read_text())["input"]["resize"] == (
        RESIZE_TF
    )
    assert current.resize == RESIZE_TF
    # Exported before the method was recorded: PIL's filtered resize, as it was trained.
    _edit_input_spec(version_copy, resize=None)
    legacy = Predictor.load(version_copy)

    assert legacy.resize == RESIZE_PIL
    assert np.array_equal(legacy.load_pixels(photo), load_image(photo, 32, resize=RESIZE_PIL))
    assert np.array_equal(current.load_pixels(photo), load_image(photo, 32, resize=RESIZE_TF))
    assert not np.array_equal(legacy.load_pixels(photo), current.load_pixels(photo))
    assert legacy.predict(photo, top_k=3) == legacy._top(
        legacy.predict_array(load_image(photo, 32, resize=RESIZE_PIL)[np.newaxis])[0], 3
    )


def test_it_refuses_a_resize_method_it_does_not_know(version_copy: Path) -> None:
    _edit_input_spec(version_copy, resize="lanczos-from-the-future")

    with pytest.raises(ArtifactError, match="lanczos-from-the-future.*newer Graft"):
        Predictor.load(version_copy)


def _resident_kb_of(path: Path) -> int | None:
    """This process's resident KB in mappings of ``path`` (None when it is not mapped)."""
    target, mapped, total = str(path.resolve()), False, 0
    for line in Path("/proc/self/smaps").read_text().splitlines():
        fields = line.split()
        if "-" in fields[0] and not fields[0].endswith(":"):
            mapped_here = len(fields) >= 6 and fields[5] == target
            mapped = mapped or mapped_here
        elif fields[0] == "Rss:" and mapped_here:
            total += int(fields[1])
    return total if mapped else None


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/smaps")
def test_the_model_file_is_mapped_and_its_pages_released_once_packed(
    make_tiny_version, tmp_path: Path
) -> None:
    # LiteRT maps the file; after XNNPACK packed the weights nothing reads it, so the
    # process does not keep its pages resident (classifier.allocator.release_file_pages).
    import keras

    inputs = keras.Input((32, 32, 3))
    features = keras.layers.GlobalAveragePooling2D()(keras.layers.Conv2D(1280, 1)(inputs))
    hidden = keras.layers.Dense(768, activation="relu")(features)  # 3.9 MB of weights
    model = keras.Model(inputs, keras.layers.Dense(3, activation="softmax")(hidden))
    version = make_tiny_version(tmp_path / "v1", model=model)
    model_file = version / "model.tflite"

    loaded = Predictor.load(version, num_threads=1)
    first = loaded.predict(photos(1)[0])

    # A page or two of the flatbuffer's tables is read again on each call; no weights.
    assert model_file.stat().st_size > 3_000_000
    assert _resident_kb_of(model_file) <= 16
    assert loaded.predict(photos(1)[0]) == first
    assert _resident_kb_of(model_file) <= 16  # later calls do not read the weights again
    assert loaded.predict_array(np.zeros((3, 32, 32, 3), np.uint8)).shape == (3, 3)


def test_it_refuses_a_model_replaced_while_it_loads(
    version_copy: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from classifier import serving

    real_runner = serving.LiteRTRunner

    def replacing_runner(model: Path, **kwargs: object) -> serving.LiteRTRunner:
        runner = real_runner(model, **kwargs)
        replacement = model.with_suffix(".new")
        replacement.write_bytes(model.read_bytes())
        replacement.replace(model)  # another inode at the checked path
        return runner

    monkeypatch.setattr(serving, "LiteRTRunner", replacing_runner)

    with pytest.raises(ArtifactError, match="was replaced while it was loaded"):
        Predictor.load(version_copy)
