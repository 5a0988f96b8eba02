"""int8 copies for webapp and worker tests, without TensorFlow.

``add_int8_copy`` makes a version directory look quantized the way ``classifier.quantize``
leaves it (``model.int8.tflite``, its checksum in ``metadata.json``, the record in
``metadata["int8"]``); the "int8" model is a copy of the float32 one, which is all
``Predictor`` needs to load it. ``FakeQuantize`` stands in for ``classifier.quantize``.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import sys
import types
from pathlib import Path
from typing import Any

MODEL_INT8 = "model.int8.tflite"


def int8_record(*, accepted: bool = True, **fields: Any) -> dict[str, Any]:
    """A record as ``classifier.quantize.quantize_version`` returns it."""
    return {
        "accepted": accepted,
        "file": MODEL_INT8 if accepted else None,
        "float32_accuracy": 0.9,
        "int8_accuracy": 0.895 if accepted else 0.85,
        "agreement": 0.98 if accepted else 0.9,
        "int8_layers": "all but the first depthwise convolution",
        "candidates": [
            {"layers": "all layers", "int8_accuracy": 0.89, "agreement": 0.97},
            {
                "layers": "all but the first depthwise convolution",
                "int8_accuracy": 0.895 if accepted else 0.85,
                "agreement": 0.98 if accepted else 0.9,
            },
        ],
        "calibration_images": 100,
        "validation_images": 60,
        "max_accuracy_drop": 0.01,
        "seconds": 12.5,
        "created_at": "2026-11-28T20:00:00+00:00",
        "reason": "int8 accuracy is within 0.01 of float32."
        if accepted
        else "int8 accuracy dropped by 0.05, more than the allowed 0.01.",
        **fields,
    }


def read_metadata(version_dir: Path) -> dict[str, Any]:
    return json.loads((version_dir / "metadata.json").read_text())


def add_int8_copy(
    version_dir: Path, record: dict[str, Any] | None = None, *, model: bytes | None = None
) -> dict[str, Any]:
    """Write the record (and, when accepted, the int8 model, or ``model`` as its bytes)
    into ``version_dir``."""
    record = record if record is not None else int8_record()
    metadata = read_metadata(version_dir)
    if record["accepted"]:
        if model is None:
            shutil.copyfile(version_dir / "model.tflite", version_dir / MODEL_INT8)
        else:
            (version_dir / MODEL_INT8).write_bytes(model)
        data = (version_dir / MODEL_INT8).read_bytes()
        metadata["files"][MODEL_INT8] = {
            "sha256": hashlib.sha256(data).hexdigest(),
            "bytes": len(data),
        }
    metadata["int8"] = record
    (version_dir / "metadata.json").write_text(json.dumps(metadata))
    return record


class FakeQuantize:
    """``classifier.quantize`` with its ``quantize_version``: records each call, then
    raises ``error`` or writes ``record`` like the real one (idempotent unless forced)."""

    def __init__(self, record: dict[str, Any] | None = None, error: Exception | None = None):
        self.record = record if record is not None else int8_record()
        self.error = error
        self.calls: list[dict[str, Any]] = []

    def quantize_version(
        self, version_dir: Path, data_dir: Path, *, force: bool = False, **options: Any
    ) -> dict[str, Any]:
        self.calls.append(
            {"version_dir": Path(version_dir), "data_dir": Path(data_dir), "force": force}
        )
        if self.error is not None:
            raise self.error
        existing = read_metadata(Path(version_dir)).get("int8")
        if isinstance(existing, dict) and not force:
            return existing
        return add_int8_copy(Path(version_dir), dict(self.record))

    def install(self, monkeypatch: Any) -> FakeQuantize:
        module = types.ModuleType("classifier.quantize")
        module.quantize_version = self.quantize_version  # type: ignore[attr-defined]
        monkeypatch.setitem(sys.modules, "classifier.quantize", module)
        return self
