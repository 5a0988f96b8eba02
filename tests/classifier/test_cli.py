from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def _run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "classifier", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", **(env or {})},
    )


@pytest.mark.slow
def test_it_trains_then_evaluates_and_predicts_from_the_command_line(tmp_path, make_image_folder):
    data = make_image_folder(tmp_path / "ds", classes={"a": 8, "b": 8})
    version = tmp_path / "v1"

    trained = _run(
        "train", str(data), "--out", str(version), "--epochs", "2", "--image-size", "32",
        "--weights", "none", "--head-units", "16", "--batch-size", "8",
        "--learning-rate", "0.005", "--cache-dir", str(tmp_path / "cache"),
    )  # fmt: skip

    assert trained.returncode == 0, trained.stderr
    lines = [json.loads(line) for line in trained.stdout.splitlines()]
    assert [line["epoch"] for line in lines[:-1]] == [1, 2]
    summary = lines[-1]
    assert summary["event"] == "done" and summary["version_dir"] == str(version)
    assert summary["val_accuracy"] >= 0.5 and summary["seconds"] > 0
    assert (version / "model.tflite").is_file()

    evaluated = _run("evaluate", str(version), str(data))
    assert evaluated.returncode == 0, evaluated.stderr
    assert json.loads(evaluated.stdout)["class_names"] == ["a", "b"]

    (tmp_path / "junk.jpg").write_bytes(b"junk")
    photo = data / "a" / "a_000.jpg"
    predicted = _run("predict", str(version), str(photo), str(tmp_path / "junk.jpg"))
    assert predicted.returncode == 2
    first, second = (json.loads(line) for line in predicted.stdout.splitlines())
    assert first["image"] == str(photo) and first["predictions"][0]["label"] in {"a", "b"}
    assert "error" in second and "junk.jpg" in predicted.stderr


def test_it_refuses_an_existing_version_directory_with_status_2(tmp_path, make_image_folder):
    data = make_image_folder(tmp_path / "ds")
    (tmp_path / "v1").mkdir()

    result = _run("train", str(data), "--out", str(tmp_path / "v1"), "--weights", "none")

    assert result.returncode == 2
    assert "already exists" in result.stderr and result.stdout == ""


def test_it_refuses_a_bad_config_and_a_missing_version_with_status_2(tmp_path):
    bad = _run("train", str(tmp_path), "--out", str(tmp_path / "v"), "--image-size", "8")
    assert bad.returncode == 2 and "image_size" in bad.stderr

    missing = _run("predict", str(tmp_path / "nope"), str(tmp_path / "x.jpg"))
    assert missing.returncode == 2 and missing.stderr.startswith("error:")


def test_it_evaluates_a_single_class_folder_and_refuses_an_unknown_one(
    tiny_version, make_image_folder, tmp_path, capsys
):
    from classifier.cli import main

    one_class = make_image_folder(tmp_path / "dogs", classes={"dog": 2})
    assert main(["evaluate", str(tiny_version), str(one_class)]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["class_names"] == ["cat", "dog", "eel"] and result["num_examples"] == 2

    unknown = make_image_folder(tmp_path / "yaks", classes={"yak": 2})
    assert main(["evaluate", str(tiny_version), str(unknown)]) == 2
    assert "does not know the class yak" in capsys.readouterr().err


@pytest.mark.slow
def test_it_keeps_stdout_json_while_it_downloads_the_imagenet_weights(
    tmp_path, make_image_folder, shared_dir
):
    models = shared_dir / "keras_home" / "models"
    if not models.is_dir():
        pytest.skip(f"needs {models}")
    data = make_image_folder(tmp_path / "ds", classes={"a": 4, "b": 4})
    # The weights are "downloaded" from the shared folder into an empty KERAS_HOME.
    script = (
        "import sys, classifier.model; classifier.model.WEIGHTS_URL = sys.argv[1]; "
        "from classifier.cli import main; sys.exit(main(sys.argv[2:]))"
    )
    args = [
        "train", str(data), "--out", str(tmp_path / "v1"), "--alpha", "0.35",
        "--image-size", "32", "--head-units", "8", "--epochs", "1",
        "--cache-dir", str(tmp_path / "cache"),
    ]  # fmt: skip
    result = subprocess.run(
        [sys.executable, "-c", script, models.as_uri() + "/", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "KERAS_HOME": str(tmp_path / "keras")},
    )

    assert result.returncode == 0, result.stderr
    assert (tmp_path / "keras" / "models").is_dir()  # it did download
    events = [json.loads(line)["event"] for line in result.stdout.splitlines()]
    assert events == ["epoch", "done"]


@pytest.mark.parametrize(
    "args",
    [
        ["predict", "{version}", "{photo}", "--top-k", "0"],
        ["predict", "{version}", "{photo}", "--top-k", "-3"],
        ["evaluate", "{version}", "{data}", "--batch-size", "0"],
        ["quantize", "{version}", "{data}", "--validation-images", "0"],
    ],
)
def test_it_refuses_a_count_below_one_with_status_2(
    args, tiny_version, make_image_folder, tmp_path, capsys
):
    from classifier.cli import main

    data = make_image_folder(tmp_path / "ds", classes={"cat": 2, "dog": 2})
    paths = {"version": tiny_version, "photo": data / "cat" / "cat_000.jpg", "data": data}

    with pytest.raises(SystemExit) as exited:
        main([arg.format(**paths) for arg in args])

    assert exited.value.code == 2
    assert f"argument {args[-2]}: {args[-1]} is less than 1" in capsys.readouterr().err


@pytest.mark.slow
def test_it_says_in_one_line_when_the_cache_folder_cannot_be_written(
    tmp_path, make_image_folder, capsys
):
    from classifier.cli import main

    data = make_image_folder(tmp_path / "ds")
    in_the_way = tmp_path / "cache"
    in_the_way.write_text("a file where the cache folder should be")

    status = main(
        ["train", str(data), "--out", str(tmp_path / "v1"), "--weights", "none",
         "--image-size", "32", "--head-units", "8", "--epochs", "1",
         "--cache-dir", str(in_the_way)]
    )  # fmt: skip

    assert status == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "Not a directory" in err and str(in_the_way) in err
    assert not (tmp_path / "v1").exists()


@pytest.mark.slow
def test_it_fine_tunes_when_only_the_layers_are_given(tmp_path, make_image_folder, capsys):
    from classifier.cli import main

    data = make_image_folder(tmp_path / "ds")

    status = main(
        ["train", str(data), "--out", str(tmp_path / "v1"), "--weights", "none",
         "--image-size", "32", "--head-units", "8", "--epochs", "1",
         "--fine-tune-layers", "2", "--cache-dir", str(tmp_path / "cache")]
    )  # fmt: skip

    assert status == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [(line["epoch"], line["phase"]) for line in lines[:-1]] == [
        (1, "training"),
        (2, "fine-tuning"),
    ]


def test_it_refuses_fine_tuning_epochs_without_layers(tmp_path, make_image_folder, capsys):
    from classifier.cli import main

    data = make_image_folder(tmp_path / "ds")

    status = main(
        ["train", str(data), "--out", str(tmp_path / "v1"), "--weights", "none",
         "--fine-tune-epochs", "3"]
    )  # fmt: skip

    assert status == 2
    assert "--fine-tune-epochs needs --fine-tune-layers" in capsys.readouterr().err
    assert not (tmp_path / "v1").exists()


@pytest.mark.slow
def test_it_stops_on_ctrl_c_with_status_130_and_says_how_to_resume(tmp_path, make_image_folder):
    data = make_image_folder(tmp_path / "ds", classes={"a": 4, "b": 4})
    args = [
        "train", str(data), "--out", str(tmp_path / "v1"), "--weights", "none",
        "--image-size", "32", "--head-units", "8", "--batch-size", "2", "--no-cache",
        "--checkpoint-dir", str(tmp_path / "checkpoints"), "--cache-dir", str(tmp_path / "c"),
    ]  # fmt: skip
    running = subprocess.Popen(
        [sys.executable, "-m", "classifier", *args, "--epochs", "1000"],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"},
    )
    assert running.stdout is not None
    first = json.loads(running.stdout.readline())  # an epoch is checkpointed: stop now
    running.send_signal(signal.SIGINT)
    _, err = running.communicate(timeout=120)

    assert first["epoch"] == 1
    assert running.returncode == 130
    assert "Traceback" not in err
    assert "error: interrupted. Run the same command again to resume" in err
    assert not (tmp_path / "v1").exists()


def test_sigterm_while_exporting_leaves_no_half_written_version(
    tmp_path, make_image_folder, monkeypatch, capsys
):
    from classifier import export
    from classifier.cli import main

    data = make_image_folder(tmp_path / "ds", classes={"a": 4, "b": 4})
    real_write = export._write_bytes

    def write_then_get_killed(path, content):
        real_write(path, content)
        if path.name == "labels.json":  # model.keras and model.tflite already written
            os.kill(os.getpid(), signal.SIGTERM)

    monkeypatch.setattr(export, "_write_bytes", write_then_get_killed)
    before = signal.getsignal(signal.SIGTERM)
    out = tmp_path / "versions" / "v1"
    out.parent.mkdir()

    status = main(
        ["train", str(data), "--out", str(out), "--weights", "none", "--image-size", "32",
         "--head-units", "8", "--batch-size", "4", "--epochs", "1", "--no-cache"]
    )  # fmt: skip

    assert status == 143
    assert "error: terminated." in capsys.readouterr().err
    assert list(out.parent.iterdir()) == []  # neither v1 nor a hidden .v1.tmp-* folder
    assert signal.getsignal(signal.SIGTERM) == before


def test_it_names_the_option_when_head_units_are_not_numbers(tmp_path, capsys):
    from classifier.cli import main

    with pytest.raises(SystemExit) as exited:
        main(["train", str(tmp_path), "--out", str(tmp_path / "v"), "--head-units", "512,big"])

    assert exited.value.code == 2
    assert "argument --head-units: '512,big' is not a comma-separated list" in (
        capsys.readouterr().err
    )
