"""model_version_quantize: the int8 record and files land on the row, once; a version that
cannot be quantized gets a record saying why, never an exception or a retry."""

from __future__ import annotations

import hashlib
import json
from datetime import timedelta

import pytest
from django.utils import timezone

from classifier.errors import ArtifactError, DatasetError
from tests.factories import make_dataset, make_job, make_project, make_version
from tests.int8 import MODEL_INT8, FakeQuantize, add_int8_copy, int8_record, read_metadata
from webapp import services
from webapp.models import Dataset, ModelVersion


@pytest.fixture
def version(db, data_dir) -> ModelVersion:
    """v1 of "flowers", trained on dataset "photos", with (dummy) files on disk."""
    project = make_project()
    dataset = make_dataset(project)
    dataset.path.mkdir(parents=True)
    job = make_job(project, dataset, status="succeeded")
    version = make_version(project, 1, job=job, dataset=dataset)
    version.path.mkdir(parents=True)
    files = {}
    for name, data in {"model.tflite": b"float32 model", "labels.json": b'["a", "b"]'}.items():
        (version.path / name).write_bytes(data)
        files[name] = {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}
    (version.path / "metadata.json").write_text(json.dumps({"files": files}))
    ModelVersion.objects.filter(pk=version.pk).update(files=files, size_bytes=123)
    version.refresh_from_db()
    return version


def test_it_stores_the_record_files_and_size(version, monkeypatch):
    fake = FakeQuantize().install(monkeypatch)

    result = services.model_version_quantize(version_id=version.pk)

    assert fake.calls == [
        {"version_dir": version.path, "data_dir": version.dataset.path, "force": False}
    ]
    assert result.int8 == int8_record()
    assert result.int8_accepted
    assert set(result.files) == {"model.tflite", "labels.json", MODEL_INT8}
    assert result.files == read_metadata(version.path)["files"]
    assert result.size_bytes == sum(p.stat().st_size for p in version.path.iterdir())


def test_it_stores_a_refused_copy_without_the_file(version, monkeypatch):
    FakeQuantize(int8_record(accepted=False)).install(monkeypatch)

    result = services.model_version_quantize(version_id=version.pk)

    assert result.int8["accepted"] is False
    assert "dropped" in result.int8["reason"]
    assert MODEL_INT8 not in result.files
    assert result.int8_status_label == "not accepted"


def test_it_does_nothing_when_the_message_comes_again(version, monkeypatch):
    fake = FakeQuantize().install(monkeypatch)
    first = services.model_version_quantize(version_id=version.pk)

    again = services.model_version_quantize(version_id=version.pk)

    assert len(fake.calls) == 1
    assert again.int8 == first.int8
    assert again.files == first.files


def test_it_quantizes_again_when_forced(version, monkeypatch):
    fake = FakeQuantize().install(monkeypatch)
    services.model_version_quantize(version_id=version.pk)
    fake.record = int8_record(created_at="2026-11-29T08:00:00+00:00")

    again = services.model_version_quantize(version_id=version.pk, force=True)

    assert [call["force"] for call in fake.calls] == [False, True]
    assert again.int8["created_at"] == "2026-11-29T08:00:00+00:00"


def test_it_records_photos_that_are_missing_instead_of_raising(version, monkeypatch):
    FakeQuantize(error=DatasetError("The version's photos are not in /data.")).install(monkeypatch)

    result = services.model_version_quantize(version_id=version.pk)

    assert result.int8["accepted"] is False
    assert result.int8["failed"] is True
    assert result.int8["reason"] == "The version's photos are not in /data."
    assert result.int8["created_at"]
    assert result.int8_status_label == "not made"
    assert MODEL_INT8 not in result.files
    assert not (version.path / MODEL_INT8).exists()


def test_it_records_a_damaged_version(version, monkeypatch):
    FakeQuantize(error=ArtifactError("model.keras does not match its checksum.")).install(
        monkeypatch
    )

    result = services.model_version_quantize(version_id=version.pk)

    assert result.int8["reason"] == "model.keras does not match its checksum."
    assert result.size_bytes == 123  # nothing else changed


def test_it_records_an_unexpected_error_in_words(version, monkeypatch, caplog):
    FakeQuantize(error=MemoryError("out of memory")).install(monkeypatch)

    result = services.model_version_quantize(version_id=version.pk)

    assert result.int8["accepted"] is False
    assert "unexpectedly: MemoryError: out of memory" in result.int8["reason"]
    assert "quantization failed unexpectedly" in caplog.text


def test_it_records_a_deleted_dataset_without_calling_the_classifier(version, monkeypatch):
    fake = FakeQuantize().install(monkeypatch)
    ModelVersion.objects.filter(pk=version.pk).update(dataset=None)

    result = services.model_version_quantize(version_id=version.pk)

    assert fake.calls == []
    assert "dataset this version was trained on has been deleted" in result.int8["reason"]


def test_it_keeps_the_record_on_disk_when_a_forced_run_fails(version, monkeypatch):
    fake = FakeQuantize().install(monkeypatch)
    services.model_version_quantize(version_id=version.pk)
    fake.error = DatasetError("The version's photos are not in /data.")

    result = services.model_version_quantize(version_id=version.pk, force=True)

    assert result.int8 == {**int8_record(), "last_error": "The version's photos are not in /data."}
    assert result.int8_accepted  # the copy on disk is still the one serving reads
    assert MODEL_INT8 in result.files


def test_it_gives_up_after_the_worker_died_on_every_attempt(version, monkeypatch, settings):
    settings.GRAFT_JOB_MAX_ATTEMPTS = 2
    fake = FakeQuantize().install(monkeypatch)
    # What a worker killed mid-quantization leaves behind: the running mark.
    ModelVersion.objects.filter(pk=version.pk).update(int8={"running": True, "attempts": 2})

    result = services.model_version_quantize(version_id=version.pk)

    assert fake.calls == []
    assert result.int8["failed"] is True
    assert "on each of its 2 attempts" in result.int8["reason"]
    assert not result.int8_running


def test_it_tries_again_after_a_worker_died_while_attempts_remain(version, monkeypatch):
    fake = FakeQuantize().install(monkeypatch)
    ModelVersion.objects.filter(pk=version.pk).update(int8={"running": True, "attempts": 1})

    result = services.model_version_quantize(version_id=version.pk)

    assert len(fake.calls) == 1
    assert result.int8 == int8_record()


def _int8_seen_when_quantizing_starts(version, monkeypatch) -> dict:
    """Install a fake quantizer that records the version's ``int8`` field (in
    ``["int8"]`` of the returned dict) as the classifier is called."""
    seen = {}

    class Watching(FakeQuantize):
        def quantize_version(self, version_dir, data_dir, **options):
            seen["int8"] = ModelVersion.objects.get(pk=version.pk).int8
            return super().quantize_version(version_dir, data_dir, **options)

    Watching().install(monkeypatch)
    return seen


def test_a_duplicate_while_a_run_is_live_is_not_an_attempt(version, monkeypatch, settings):
    # Another click's message, while the first run (started moments ago) is still going.
    settings.GRAFT_JOB_MAX_ATTEMPTS = 3
    started = (timezone.now() - timedelta(seconds=5)).isoformat()
    live = {"running": True, "attempts": 3, "started_at": started}
    ModelVersion.objects.filter(pk=version.pk).update(int8=live)
    seen = _int8_seen_when_quantizing_starts(version, monkeypatch)

    result = services.model_version_quantize(version_id=version.pk)

    assert seen["int8"] == live  # it waited its turn without counting an attempt
    assert result.int8 == int8_record()


def test_it_marks_the_version_while_it_runs(version, monkeypatch):
    seen = _int8_seen_when_quantizing_starts(version, monkeypatch)

    services.model_version_quantize(version_id=version.pk)

    assert seen["int8"]["running"] is True
    assert seen["int8"]["attempts"] == 1


def test_it_answers_none_for_a_deleted_version(db, monkeypatch):
    fake = FakeQuantize().install(monkeypatch)

    assert services.model_version_quantize(version_id=999_999) is None
    assert fake.calls == []


def test_it_reads_the_record_back_from_metadata(version, monkeypatch):
    """The row says what serving reads: metadata.json's record, not the return value."""
    on_disk = int8_record(created_at="2026-11-28T21:00:00+00:00")

    class Elsewhere(FakeQuantize):
        def quantize_version(self, version_dir, data_dir, **options):
            add_int8_copy(version_dir, on_disk)
            return int8_record()

    Elsewhere().install(monkeypatch)

    result = services.model_version_quantize(version_id=version.pk)

    assert result.int8 == on_disk


def test_it_calibrates_on_the_folder_of_the_versions_dataset(version, data_dir, monkeypatch):
    fake = FakeQuantize().install(monkeypatch)
    Dataset.objects.filter(pk=version.dataset_id).update(directory="datasets/elsewhere")

    services.model_version_quantize(version_id=version.pk)

    assert fake.calls[0]["data_dir"] == data_dir / "datasets" / "elsewhere"


def test_it_answers_none_when_the_version_is_deleted_while_it_runs(version, monkeypatch):
    class Deleting(FakeQuantize):
        def quantize_version(self, version_dir, data_dir, **options):
            services.model_version_delete(version=version)  # its folder goes on commit
            raise ArtifactError(f"{version_dir} is not a model version directory.")

    Deleting().install(monkeypatch)

    assert services.model_version_quantize(version_id=version.pk) is None
    assert not ModelVersion.objects.filter(pk=version.pk).exists()
