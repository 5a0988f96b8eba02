"""Training on real flower photos with the real ImageNet weights (needs ../shared)."""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
# 15 epochs at 3e-4 on cached features cost seconds and are steadier than the recipe's 5 at
# 1e-3 (mean validation accuracy over 5 seeds here 0.86 vs 0.82; seed 1337: 0.85 vs 0.76).
TRAIN_ARGS = shlex.split("--weights imagenet --epochs 15 --learning-rate 3e-4 --seed 1337")


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
            *TRAIN_ARGS,
            "--out",
            str(tmp_path / "v1"),
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
