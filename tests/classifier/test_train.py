from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from classifier import features as features_module
from classifier.config import TrainConfig
from classifier.errors import DatasetError, TrainingCancelled
from classifier.train import TrainCallbacks, train
from tests.classifier.conftest import small_train_config

CLASSES = {"a": 10, "b": 10, "c": 10}


@pytest.fixture
def dataset(tmp_path, make_image_folder):
    return make_image_folder(tmp_path / "ds", classes=CLASSES)


@pytest.fixture
def no_litert(monkeypatch):
    """Extract with TensorFlow: converting a trunk for LiteRT takes seconds per test."""
    monkeypatch.setattr(features_module, "trunk_tflite", lambda *args: None)


_config = small_train_config


class Recorder(TrainCallbacks):
    def __init__(self, stop_at_epoch: int | None = None) -> None:
        self.phases: list[str] = []
        self.batches: list[tuple[int, int, int]] = []
        self.epochs: list[tuple[int, dict]] = []
        self.resumed: list[dict] | None = None
        self.stop_at_epoch = stop_at_epoch

    def on_phase(self, phase, detail):
        self.phases.append(phase)

    def on_batch(self, epoch, batch, batches):
        self.batches.append((epoch, batch, batches))

    def on_epoch(self, epoch, logs):
        self.epochs.append((epoch, logs))

    def on_resume(self, history):
        self.resumed = history

    def should_stop(self):
        return self.stop_at_epoch is not None and any(
            epoch == self.stop_at_epoch for epoch, _, _ in self.batches
        )


def test_it_learns_on_cached_features_exports_and_hits_the_cache_next_time(tmp_path, dataset):
    recorder = Recorder()
    config = _config(epochs=3)

    result = train(
        dataset, config, out_dir=tmp_path / "v1", cache_dir=tmp_path / "cache", callbacks=recorder
    )

    assert recorder.phases == ["scanning", "extracting", "training", "evaluating", "exporting"]
    assert [epoch for epoch, _ in recorder.epochs] == [1, 2, 3]
    assert len(result.history) == 3
    assert set(result.history[0]) >= {"loss", "accuracy", "val_loss", "val_accuracy"}
    assert {"learning_rate", "seconds", "phase"} <= set(recorder.epochs[0][1])
    steps = -(-len(result.train_files) // config.batch_size)
    assert [b for b in recorder.batches if b[0] == 3] == [
        (3, i, steps) for i in range(1, steps + 1)
    ]
    assert any(epoch == 0 for epoch, _, _ in recorder.batches)  # extraction progress
    assert result.metrics["accuracy"] >= 0.9
    assert not result.cache_hit
    assert result.stats["extraction"]["engine"] == "litert"
    meta = json.loads((result.version_dir / "metadata.json").read_text())
    assert meta["dataset"]["fingerprint"] == result.fingerprint
    assert meta["tflite_origin"] == "grafted onto the cached trunk"
    assert meta["tflite_max_abs_diff"] <= 1e-4
    assert set(result.stats["phases"]) >= {"scan", "extract", "train", "export"}
    assert json.loads((result.version_dir / "labels.json").read_text()) == ["a", "b", "c"]
    json.dumps(result.to_dict())

    again = train(dataset, config, cache_dir=tmp_path / "cache")
    assert again.cache_hit
    assert again.val_files == result.val_files  # same seed: same split, init and shuffling
    assert [h["loss"] for h in again.history] == pytest.approx(
        [h["loss"] for h in result.history], rel=1e-4
    )


def test_it_learns_on_the_streaming_pipeline_with_augmentation_and_fine_tuning(tmp_path, dataset):
    recorder = Recorder()
    config = _config(
        epochs=8,
        learning_rate=5e-3,
        augment=True,
        fine_tune_layers=4,
        fine_tune_epochs=1,
        build="sequential",
    )

    result = train(dataset, config, cache_dir=tmp_path / "cache", callbacks=recorder)

    assert recorder.phases == ["scanning", "training", "fine-tuning", "evaluating"]
    assert [h["phase"] for h in result.history] == ["training"] * 8 + ["fine-tuning"]
    assert result.history[8]["learning_rate"] == pytest.approx(config.fine_tune_learning_rate)
    # Parallel decoding and augmentation are not bit-for-bit repeatable, and the validation
    # set is ~6 photos: ask for clearly better than chance (1/3), not for perfection.
    assert result.metrics["accuracy"] >= 0.66
    assert not (tmp_path / "cache" / "features").exists()  # never cached with augmentation


@pytest.mark.parametrize("change", ["damaged", "removed"])
def test_a_photo_changed_during_streaming_training_is_named_in_a_dataset_error(
    tmp_path, dataset, change
):
    photos = sorted(p for p in dataset.rglob("*") if p.is_file())

    class ChangesThePhotos(Recorder):
        def on_epoch(self, epoch, logs):
            super().on_epoch(epoch, logs)
            for photo in photos:  # after the first epoch, before the second reads them
                if change == "damaged":
                    photo.write_bytes(b"not a photo any more")
                else:
                    photo.unlink()

    out = tmp_path / "v1"
    with pytest.raises(DatasetError) as raised:
        train(
            dataset,
            _config(augment=True),
            out_dir=out,
            cache_dir=tmp_path / "cache",
            callbacks=ChangesThePhotos(),
        )

    message = str(raised.value)
    assert "could not be read during training" in message, message
    assert any(str(photo.relative_to(dataset)) in message for photo in photos), message
    assert "Traceback" not in message and len(message) < 400
    assert not out.exists()


def test_it_raises_training_cancelled_when_asked_to_stop(tmp_path, dataset, no_litert):
    recorder = Recorder(stop_at_epoch=1)

    with pytest.raises(TrainingCancelled):
        train(dataset, _config(), cache_dir=tmp_path / "cache", callbacks=recorder)
    assert recorder.epochs == []


def test_it_resumes_from_the_last_checkpointed_epoch(tmp_path, dataset, no_litert):
    checkpoint = tmp_path / "checkpoint"
    config = _config(epochs=3)
    with pytest.raises(TrainingCancelled):
        train(
            dataset,
            config,
            cache_dir=tmp_path / "cache",
            checkpoint_dir=checkpoint,
            callbacks=Recorder(stop_at_epoch=2),
        )

    recorder = Recorder()
    result = train(
        dataset, config, cache_dir=tmp_path / "cache", checkpoint_dir=checkpoint, callbacks=recorder
    )

    assert result.resumed_from_epoch == 1
    assert (checkpoint / "optimizer.npz").is_file()  # Adam's moments come back too
    assert [epoch for epoch, _ in recorder.epochs] == [2, 3]
    assert [h["epoch"] for h in result.history] == [1, 2, 3]
    # The checkpointed epoch is handed back, for a caller that died before recording it.
    assert [h["epoch"] for h in recorder.resumed] == [1]
    assert recorder.resumed[0]["val_accuracy"] == result.history[0]["val_accuracy"]
    assert result.metrics["accuracy"] >= 0.9


def test_it_stops_early_and_restores_the_best_epoch(tmp_path, dataset, no_litert):
    config = _config(epochs=25, early_stopping_patience=2, learning_rate=0.2)

    result = train(dataset, config, cache_dir=tmp_path / "cache")

    assert len(result.history) < 25
    best = min(h["val_loss"] for h in result.history)
    assert result.history[-1]["val_loss"] > best
    assert result.metrics["loss"] == pytest.approx(best, abs=1e-3)


def test_it_skips_unreadable_photos_and_trains_on_a_given_file_list(tmp_path, dataset, no_litert):
    (dataset / "a" / "broken.jpg").write_bytes(b"junk")
    files = [
        (f"{name}/{name}_{i:03d}{'.jpg' if i % 2 == 0 else '.png'}", k)
        for k, name in enumerate(CLASSES)
        for i in range(6)
    ]

    result = train(
        dataset,
        _config(epochs=1),
        cache_dir=tmp_path / "cache",
        files=[*files, ("a/broken.jpg", 0)],
    )

    assert result.rejected == [("a/broken.jpg", result.rejected[0][1])]
    assert sorted(result.train_files + result.val_files) == sorted(files)

    with pytest.raises(DatasetError, match="missing"):
        train(dataset, _config(), cache_dir=tmp_path / "cache", files=[("a/nope.jpg", 0)])


def test_the_fused_adam_follows_keras_adam_step_for_step() -> None:
    import keras

    from classifier.train import FusedAdam

    rng = np.random.default_rng(0)
    start = rng.normal(size=(64, 8)).astype(np.float32)
    gradients = [rng.normal(size=(64, 8)).astype(np.float32) for _ in range(30)]
    results = []
    for optimizer in (keras.optimizers.Adam(1e-2), FusedAdam(1e-2)):
        variable = keras.Variable(start.copy())
        optimizer.build([variable])
        for gradient in gradients:
            optimizer.apply([keras.ops.convert_to_tensor(gradient)], [variable])
        results.append(keras.ops.convert_to_numpy(variable))

    assert np.abs(results[0] - start).max() > 0.1  # it really moved
    np.testing.assert_allclose(results[1], results[0], atol=1e-5)


def test_an_optimizer_state_saved_after_some_steps_comes_back_in_a_new_model() -> None:
    import keras

    from classifier.train import FusedAdam, optimizer_state, restore_optimizer_state

    def compiled(units: int = 4) -> keras.Model:
        model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(units)])
        model.compile(optimizer=FusedAdam(1e-2), loss="mse")
        return model

    x = np.ones((8, 3), np.float32)
    trained = compiled()
    for _ in range(3):
        trained.train_on_batch(x, np.zeros((8, 4), np.float32))
    saved = optimizer_state(trained.optimizer)

    fresh = compiled()
    assert restore_optimizer_state(fresh, saved)
    assert int(keras.ops.convert_to_numpy(fresh.optimizer.iterations)) == 3
    for restored, expected in zip(optimizer_state(fresh.optimizer), saved, strict=True):
        np.testing.assert_array_equal(restored, expected)
    assert np.abs(saved[1]).max() > 0  # the moments really were non-zero
    assert not restore_optimizer_state(compiled(units=5), saved)


def test_it_refuses_an_out_dir_that_cannot_be_made_before_training(tmp_path, dataset):
    in_the_way = tmp_path / "versions"
    in_the_way.write_text("a file where the versions folder should be")
    recorder = Recorder()

    with pytest.raises(OSError, match="cannot be made in"):
        train(
            dataset,
            _config(),
            out_dir=in_the_way / "v1",
            cache_dir=tmp_path / "cache",
            callbacks=recorder,
        )

    assert recorder.phases == [] and recorder.epochs == []


def test_it_trains_beside_a_photo_whose_name_is_not_utf8(tmp_path, dataset, no_litert):
    shutil.copy(dataset / "a" / "a_000.jpg", dataset / "a" / "caf\udce9.jpg")

    result = train(dataset, _config(epochs=1), cache_dir=tmp_path / "cache")

    assert [path for path, _ in result.rejected] == ["a/caf\ufffd.jpg"]
    assert len(result.train_files) + len(result.val_files) == 30


def test_it_refuses_a_dataset_folder_whose_path_is_not_utf8(tmp_path, make_image_folder):
    root = make_image_folder(tmp_path / "fotos-\udce9t\udce9")

    with pytest.raises(DatasetError, match="is not valid UTF-8"):
        train(root, _config(epochs=1), cache_dir=tmp_path / "cache")


@pytest.mark.parametrize("use_feature_cache", [True, False])
def test_it_validates_on_readable_photos_when_the_split_chose_broken_ones(
    tmp_path, dataset, no_litert, use_feature_cache
):
    from classifier.data import scan_dataset, split_dataset

    config = _config(epochs=1, use_feature_cache=use_feature_cache)
    _, chosen = split_dataset(scan_dataset(dataset), config.validation_split, config.seed)
    for relpath, _ in chosen:
        (dataset / relpath).write_bytes(b"broken")

    result = train(dataset, config, cache_dir=tmp_path / "cache")

    assert sorted(path for path, _ in result.rejected) == sorted(path for path, _ in chosen)
    assert {label for _, label in result.val_files} == {0, 1, 2}
    assert result.metrics["num_examples"] == len(result.val_files)


def test_the_head_loop_trains_and_reports_as_keras_does_batch_by_batch() -> None:
    from classifier.model import build_head
    from classifier.train import _compile, _epoch_order, _HeadLoop

    config = TrainConfig(weights="none", head_units=(16,), dropout=0.0, batch_size=8)
    rng = np.random.default_rng(3)
    x, y = rng.normal(size=(30, 12)).astype(np.float32), rng.integers(0, 3, 30).astype(np.int32)
    x_val = rng.normal(size=(10, 12)).astype(np.float32)
    y_val = rng.integers(0, 3, 10).astype(np.int32)
    ours, theirs = build_head(3, 12, config), build_head(3, 12, config)  # the same seeded init
    _compile(ours, 1e-2, fused=True)
    _compile(theirs, 1e-2, fused=True)
    order = _epoch_order(30, config.seed, 0)
    assert sorted(order) == list(range(30)) and list(order) != list(range(30))
    assert list(_epoch_order(30, config.seed, 0)) == list(order)
    assert list(_epoch_order(30, config.seed, 1)) != list(order)

    loop = _HeadLoop(ours, x, y, x_val, y_val, config.batch_size)
    logs = loop.train_epoch(order)
    batches = [order[start : start + 8] for start in range(0, 30, 8)]  # 8, 8, 8 and 6 photos
    steps = [theirs.train_on_batch(x[b], y[b], return_dict=True) for b in batches]

    for mine, keras_weights in zip(ours.get_weights(), theirs.get_weights(), strict=True):
        np.testing.assert_allclose(mine, keras_weights, atol=1e-6)
    sizes = [len(b) for b in batches]
    for name in ("loss", "accuracy"):
        expected = sum(step[name] * n for step, n in zip(steps, sizes, strict=True)) / 30
        assert logs[name] == pytest.approx(expected, rel=1e-5)
    expected = theirs.evaluate(x_val, y_val, return_dict=True, verbose=0)
    got = loop.validate()
    assert got["val_loss"] == pytest.approx(expected["loss"], rel=1e-5)
    assert got["val_accuracy"] == pytest.approx(expected["accuracy"])
