"""The quantize task: enqueued after a training job's version is committed (GRAFT_INT8 on
only), records the int8 outcome once, and never raises into a retry loop."""

from __future__ import annotations

import json
from datetime import datetime, timedelta

import pytest
from django.utils import timezone

from classifier.errors import DatasetError
from tests.factories import make_dataset, make_job, make_project, make_version
from tests.int8 import FakeQuantize, int8_record
from tests.waiting import wait_for
from tests.worker.conftest import TINY, wait_for_status
from webapp import services
from webapp.models import ModelVersion, TrainingJob
from worker import tasks


@pytest.fixture
def sent(monkeypatch) -> list[dict]:
    """The quantize messages sent (instead of sending them)."""
    messages: list[dict] = []

    def apply_async(args=None, kwargs=None, **options):
        messages.append({"args": args, **options})

    monkeypatch.setattr(tasks.quantize_version, "apply_async", apply_async)
    return messages


@pytest.fixture
def running_job(db, data_dir) -> TrainingJob:
    project = make_project()
    dataset = make_dataset(project)
    return make_job(project, dataset, status=TrainingJob.Status.RUNNING, config={"epochs": 1})


def _staged(data_dir, job: TrainingJob):
    staged = data_dir / "models" / ".staging" / f"job-{job.pk}-1"
    staged.mkdir(parents=True)
    (staged / "model.tflite").write_bytes(b"model")
    (staged / "labels.json").write_text('["a", "b"]')
    (staged / "metadata.json").write_text(json.dumps({"files": {}}))
    return staged


def _succeed(job, data_dir, capture):
    with capture(execute=True):
        return services.training_job_succeed(
            job_id=job.pk, staged_dir=_staged(data_dir, job), result={"class_names": ["a", "b"]}
        )


def test_a_new_version_is_quantized_when_int8_is_on(
    running_job, data_dir, settings, sent, django_capture_on_commit_callbacks
):
    settings.GRAFT_INT8 = True

    version = _succeed(running_job, data_dir, django_capture_on_commit_callbacks)

    assert sent == [{"args": [version.pk, False], "queue": "default"}]


def test_a_new_version_is_not_quantized_when_int8_is_off(
    running_job, data_dir, settings, sent, django_capture_on_commit_callbacks
):
    settings.GRAFT_INT8 = False

    version = _succeed(running_job, data_dir, django_capture_on_commit_callbacks)

    assert version is not None
    assert sent == []


def test_nothing_is_enqueued_for_a_job_that_stopped_running(
    running_job, data_dir, settings, sent, django_capture_on_commit_callbacks
):
    settings.GRAFT_INT8 = True
    TrainingJob.objects.filter(pk=running_job.pk).update(status=TrainingJob.Status.CANCELLED)

    assert _succeed(running_job, data_dir, django_capture_on_commit_callbacks) is None
    assert sent == []


def test_the_task_is_routed_to_the_default_queue_with_late_ack(settings):
    assert settings.CELERY_TASK_ROUTES["worker.tasks.quantize_version"] == {"queue": "default"}
    assert tasks.quantize_version.acks_late


@pytest.fixture
def version(db, data_dir) -> ModelVersion:
    project = make_project()
    dataset = make_dataset(project)
    version = make_version(project, 1, dataset=dataset)
    version.path.mkdir(parents=True)
    (version.path / "model.tflite").write_bytes(b"model")
    (version.path / "metadata.json").write_text(json.dumps({"files": {}}))
    return version


def test_the_task_records_the_copy_once(version, monkeypatch):
    fake = FakeQuantize().install(monkeypatch)

    first = tasks.quantize_version(version.pk)
    redelivered = tasks.quantize_version(version.pk)

    assert first == redelivered == "flowers v1: int8 accepted"
    assert len(fake.calls) == 1
    version.refresh_from_db()
    assert version.int8 == int8_record()
    assert "model.int8.tflite" in version.files


def test_the_task_records_an_error_instead_of_raising(version, monkeypatch):
    FakeQuantize(error=DatasetError("The version's photos are not in /data.")).install(monkeypatch)

    outcome = tasks.quantize_version(version.pk)

    assert outcome == "flowers v1: int8 not accepted: The version's photos are not in /data."
    version.refresh_from_db()
    assert version.int8["failed"] is True


def test_the_task_skips_a_deleted_version(db, monkeypatch):
    FakeQuantize().install(monkeypatch)

    assert tasks.quantize_version(999_999) == "skipped: the version no longer exists"


def _running(version: ModelVersion, started: datetime, **fields) -> None:
    record = {"running": True, "attempts": 1, "started_at": started.isoformat(), **fields}
    ModelVersion.objects.filter(pk=version.pk).update(int8=record)


def test_the_reconcile_re_enqueues_a_quantization_whose_worker_died(
    version, sent, django_capture_on_commit_callbacks
):
    now = timezone.now()
    fresh = make_version(version.project, 2, dataset=version.dataset)
    _running(version, now - timedelta(hours=2))
    _running(fresh, now - timedelta(minutes=5))

    with django_capture_on_commit_callbacks(execute=True):
        assert tasks.reconcile_jobs()["int8"] == [version.pk]
    assert sent == [{"args": [version.pk, False], "queue": "default"}]
    version.refresh_from_db()
    assert version.int8["running"] and version.int8["requeued_at"]

    # Not again while the new message waits in the queue...
    with django_capture_on_commit_callbacks(execute=True):
        assert services.int8_quantizations_reconcile(now=now + timedelta(minutes=10)) == []
    # ...but again if that one is lost too (and by then the other one is stale as well).
    with django_capture_on_commit_callbacks(execute=True):
        later = services.int8_quantizations_reconcile(now=now + timedelta(hours=1))
    assert sorted(later) == sorted([version.pk, fresh.pk]) and len(sent) == 3


def test_a_re_enqueued_quantization_counts_its_attempts_then_gives_up(
    version, monkeypatch, settings
):
    fake = FakeQuantize().install(monkeypatch)
    settings.GRAFT_JOB_MAX_ATTEMPTS = 3
    _running(version, timezone.now() - timedelta(hours=2), attempts=3)

    outcome = tasks.quantize_version(version.pk)

    assert fake.calls == []
    assert "stopped while quantizing this version on each of its 3 attempts" in outcome
    version.refresh_from_db()
    assert version.int8["failed"] is True and not version.int8.get("running")


@pytest.mark.slow
def test_a_trained_version_gets_its_int8_record_from_a_real_worker(
    transactional_db, data_dir, tmp_path, start_worker, worker_log, settings
):
    """End to end: train, enqueue on commit, quantize in a real worker, record."""
    from tests.images import image_folder

    project = make_project()
    folder = image_folder(tmp_path / "source", {"red": 12, "green": 12})
    dataset = services.dataset_import_directory(
        project=project, name="colours", source_dir=folder, background=False
    )
    start_worker(queues="training,default", concurrency=1, GRAFT_INT8="1")
    # alpha 1.0: an int8 copy of TINY's alpha 0.35 trunk at 32 px, calibrated on these
    # single-colour photos, makes XNNPACK abort; quantize_version only records that (its
    # child process dies, not the worker), and this test wants a model that runs.
    job = services.training_job_create(
        project=project, dataset=dataset, config={**TINY, "alpha": 1.0}, check_queue=False
    )
    wait_for_status(job, "succeeded", "failed")
    assert job.status == "succeeded", job.error + worker_log()

    def recorded() -> ModelVersion | None:
        version = ModelVersion.objects.get(job=job)
        return version if version.int8 and not version.int8_running else None

    version = wait_for(recorded, 300, "the int8 record")
    assert not version.int8.get("failed"), f"{version.int8}\n{worker_log()}"
    assert set(version.int8) >= {"accepted", "int8_accuracy", "float32_accuracy", "agreement"}
    if version.int8["accepted"]:
        assert "model.int8.tflite" in version.files
        assert (version.path / "model.int8.tflite").is_file()
