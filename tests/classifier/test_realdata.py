"""Training on real flower photos with the real ImageNet weights (needs ../shared)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.realdata
@pytest.mark.slow
def test_it_reaches_75_percent_on_the_flowers_sample(tmp_path, shared_dir):
    flowers = shared_dir / "datasets" / "flowers-sample"
    keras_home = shared_dir / "keras_home"
    if not flowers.is_dir() or not (keras_home / "models").is_dir():
        pytest.skip(f"needs {flowers} and {keras_home}/models")
    env = {
        **os.environ,
        "KERAS_HOME": str(keras_home),  # read when Keras is imported: hence a subprocess
        "TF_CPP_MIN_LOG_LEVEL": "3",
    }

    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "classifier",
            "train",
            str(flowers),
            "--out",
            str(tmp_path / "v1"),
            "--weights",
            "imagenet",
            "--epochs",
            "5",
            "--seed",
            "1337",
            "--cache-dir",
            str(tmp_path / "cache"),
        ],  # fmt: skip
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )

    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads(result.stdout.splitlines()[-1])
    assert summary["class_names"] == ["daisy", "dandelion", "roses", "sunflowers", "tulips"]
    assert summary["val_accuracy"] >= 0.75, summary
