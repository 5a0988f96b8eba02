"""quantize.quantize_version: a checked int8 copy of a version, served only when accepted."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from classifier.cli import main as cli_main
from classifier.config import TrainConfig
from classifier.errors import ArtifactError, DatasetError
from classifier.serving import MODEL_INT8, Predictor, int8_accepted

pytest.importorskip("tensorflow")

from classifier import quantize as quantize_module  # noqa: E402
from classifier.quantize import quantize_version  # noqa: E402
from classifier.train import train  # noqa: E402


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A small version trained (weights none, 32 px) on generated photos, and its folder."""
    from tests.classifier.conftest import write_image_folder

    root = tmp_path_factory.mktemp("quantize")
    data = write_image_folder(root / "ds", classes={"a": 12, "b": 12, "c": 12})
    config = TrainConfig(
        weights="none", image_size=32, epochs=3, batch_size=8, head_units=(32,), seed=3
    )
    train(data, config, out_dir=root / "v1", cache_dir=root / "cache")
    return root / "v1", data


@pytest.fixture
def version(trained: tuple[Path, Path], tmp_path: Path) -> Path:
    return Path(shutil.copytree(trained[0], tmp_path / "v1"))


@pytest.fixture
def data(trained: tuple[Path, Path]) -> Path:
    return trained[1]


def _metadata(version: Path) -> dict:
    return json.loads((version / "metadata.json").read_text())


def _photos(data: Path) -> list[Path]:
    return sorted(p for p in data.rglob("*") if p.is_file())


def test_an_accepted_int8_model_is_recorded_checksummed_and_served_on_request(
    version: Path, data: Path
) -> None:
    before = {p.name: p.read_bytes() for p in version.iterdir() if p.name != "metadata.json"}

    record = quantize_version(version, data, max_accuracy_drop=1.0, calibration_images=10)

    assert record["accepted"] is True and record["file"] == MODEL_INT8
    assert record["calibration_images"] == 10 and record["validation_images"] > 0
    assert 0.0 <= record["int8_accuracy"] <= 1.0 and 0.0 <= record["agreement"] <= 1.0
    assert record["reason"].startswith("Accepted")
    metadata = _metadata(version)
    assert metadata["int8"] == record and int8_accepted(metadata)
    assert metadata["files"][MODEL_INT8]["sha256"] == record["sha256"]
    assert (version / MODEL_INT8).stat().st_size == record["bytes"]
    # Nothing the version already had changed.
    assert {p.name: p.read_bytes() for p in version.iterdir() if p.name in before} == before

    float32 = Predictor.load(version)
    int8 = Predictor.load(version, prefer_int8=True)
    assert (float32.precision, int8.precision) == ("float32", "int8")
    pixels = np.stack([float32.load_pixels(p) for p in _photos(data)])
    p_float, p_int8 = float32.predict_array(pixels), int8.predict_array(pixels)
    assert p_int8.shape == p_float.shape
    assert np.allclose(p_int8.sum(axis=1), 1.0, atol=1e-2)  # probabilities, not raw int8
    agreement = np.mean(p_int8.argmax(axis=1) == p_float.argmax(axis=1))
    assert agreement >= 0.8 and np.max(np.abs(p_int8 - p_float)) < 0.25
    assert int8.predict(_photos(data)[0])[0]["label"] in {"a", "b", "c"}


def _heavy_ops(content: bytes) -> list[tuple[str, str]]:
    """(conv / depthwise / dense, float32 / int8) of each heavy operator, in graph order."""
    from tensorflow.lite.python import schema_py_generated as schema
    from tensorflow.lite.tools import flatbuffer_utils

    model = flatbuffer_utils.read_model_from_bytearray(bytearray(content))
    graph = model.subgraphs[0]
    heavy = {
        schema.BuiltinOperator.CONV_2D: "conv",
        schema.BuiltinOperator.DEPTHWISE_CONV_2D: "depthwise",
        schema.BuiltinOperator.FULLY_CONNECTED: "dense",
    }
    kinds = []
    for op in graph.operators:
        code = model.operatorCodes[op.opcodeIndex]
        kind = heavy.get(max(code.builtinCode, code.deprecatedBuiltinCode))
        if kind is not None:
            float_op = graph.tensors[op.outputs[0]].type == schema.TensorType.FLOAT32
            kinds.append((kind, "float32" if float_op else "int8"))
    return kinds


def test_it_makes_an_all_int8_copy_and_one_with_the_first_depthwise_in_float(
    version: Path, data: Path
) -> None:
    from classifier.export import INT8_ALL_LAYERS, INT8_FIRST_DEPTHWISE_FLOAT

    predictor = Predictor.load(version)
    photos = [predictor.load_pixels(p) for p in _photos(data)[:10]]
    copies = quantize_module._convert(version, photos)

    assert list(copies) == [INT8_ALL_LAYERS, INT8_FIRST_DEPTHWISE_FLOAT]
    all_int8 = _heavy_ops(copies[INT8_ALL_LAYERS])
    assert {precision for _, precision in all_int8} == {"int8"}
    kinds = _heavy_ops(copies[INT8_FIRST_DEPTHWISE_FLOAT])
    assert [kind for kind, _ in kinds] == [kind for kind, _ in all_int8]
    first_depthwise = [kind for kind, _ in kinds].index("depthwise")
    assert [i for i, (_, p) in enumerate(kinds) if p == "float32"] == [first_depthwise]


@pytest.mark.parametrize("better", [0, 1])
def test_it_keeps_the_copy_that_agrees_best_with_float32(
    version: Path, data: Path, monkeypatch: pytest.MonkeyPatch, better: int
) -> None:
    float_predictor = Predictor.load(version)
    real_run = quantize_module._run_in_child
    runs: list[bytes] = []

    def one_copy_disagrees_on_every_photo(content: bytes, batch: np.ndarray):
        runs.append(content)
        probs, failure = real_run(content, batch)
        if len(runs) - 1 != better:  # the other copy answers the float32 runner-up class
            float_probs = float_predictor.predict_array(batch)
            probs = np.zeros_like(float_probs)
            probs[np.arange(len(batch)), np.argsort(float_probs, axis=1)[:, -2]] = 1.0
        return probs, failure

    monkeypatch.setattr(quantize_module, "_run_in_child", one_copy_disagrees_on_every_photo)

    record = quantize_version(version, data, max_accuracy_drop=1.0, calibration_images=10)

    assert len(runs) == 2 and record["accepted"] is True
    assert (version / MODEL_INT8).read_bytes() == runs[better]
    assert record["int8_layers"] == record["candidates"][better]["layers"]
    assert record["agreement"] == record["candidates"][better]["agreement"] > 0
    assert record["candidates"][1 - better]["agreement"] == 0.0


def test_a_damaged_int8_model_is_never_served_but_the_version_still_is(
    version: Path, data: Path, caplog: pytest.LogCaptureFixture
) -> None:
    quantize_version(version, data, max_accuracy_drop=1.0, calibration_images=10)
    content = bytearray((version / MODEL_INT8).read_bytes())
    content[len(content) // 2] ^= 0xFF
    (version / MODEL_INT8).write_bytes(bytes(content))

    assert Predictor.load(version, prefer_int8=True).precision == "float32"
    assert "does not match its checksum; serving the float32 model" in caplog.text
    assert Predictor.load(version).precision == "float32"
    (version / MODEL_INT8).unlink()
    assert Predictor.load(version, prefer_int8=True).precision == "float32"
    # A forced run replaces it.
    quantize_version(version, data, max_accuracy_drop=1.0, calibration_images=10, force=True)
    assert Predictor.load(version, prefer_int8=True).precision == "int8"


def test_a_model_litert_cannot_run_is_recorded_as_not_accepted(
    version: Path, data: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The child that first runs the int8 model dies as XNNPACK's abort would kill it.
    monkeypatch.setattr(quantize_module, "_CHILD", "import os, signal\nos.abort()\n")

    record = quantize_version(version, data, calibration_images=10)

    assert record["accepted"] is False and record["int8_accuracy"] is None
    assert "crashed with SIGABRT" in record["reason"]
    assert not (version / MODEL_INT8).exists()
    assert Predictor.load(version, prefer_int8=True).precision == "float32"


def test_a_model_that_loses_accuracy_is_recorded_but_never_served(
    version: Path, data: Path
) -> None:
    # A negative allowance cannot be met: the int8 model is measured, then refused.
    record = quantize_version(version, data, max_accuracy_drop=-1.0, calibration_images=10)

    assert record["accepted"] is False and record["file"] is None
    assert record["reason"].startswith("Not accepted") and "float32 model keeps" in record["reason"]
    assert not (version / MODEL_INT8).exists()
    metadata = _metadata(version)
    assert MODEL_INT8 not in metadata["files"] and not int8_accepted(metadata)
    assert Predictor.load(version, prefer_int8=True).precision == "float32"


def test_it_is_idempotent_unless_forced(version: Path, data: Path) -> None:
    first = quantize_version(version, data, max_accuracy_drop=-1.0, calibration_images=10)
    again = quantize_version(version, data, max_accuracy_drop=1.0, calibration_images=10)
    assert again == first

    forced = quantize_version(
        version, data, max_accuracy_drop=1.0, calibration_images=10, force=True
    )
    assert forced["accepted"] is True and _metadata(version)["int8"] == forced


def test_it_refuses_when_the_photos_are_gone_and_changes_nothing(
    version: Path, tmp_path: Path
) -> None:
    before = sorted((p.name, p.read_bytes()) for p in version.iterdir())
    (tmp_path / "empty" / "a").mkdir(parents=True)

    with pytest.raises(DatasetError, match="photos it was trained on"):
        quantize_version(version, tmp_path / "empty")

    assert sorted((p.name, p.read_bytes()) for p in version.iterdir()) == before


def test_it_refuses_a_damaged_version(version: Path, data: Path) -> None:
    (version / "labels.json").write_text('["x", "y", "z"]')
    with pytest.raises(ArtifactError):
        quantize_version(version, data)


def test_the_command_line_quantizes_and_predicts_with_int8(
    version: Path, data: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    photo = str(_photos(data)[0])
    assert cli_main(["predict", str(version), photo, "--int8"]) == 2
    assert "no accepted int8 model" in capsys.readouterr().err

    code = cli_main(
        ["quantize", str(version), str(data), "--calibration-images", "8",
         "--max-accuracy-drop", "1"]
    )  # fmt: skip
    assert code == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["accepted"] is True and printed["calibration_images"] == 8

    assert cli_main(["predict", str(version), photo, "--int8"]) == 0
    assert json.loads(capsys.readouterr().out)["predictions"][0]["label"] in {"a", "b", "c"}
