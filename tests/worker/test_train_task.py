"""Training jobs end to end: real Redis, real Celery worker processes, real (tiny) training."""

from __future__ import annotations

import json
import signal
from pathlib import Path

import pytest
from django.conf import settings
from django.db import connection

from tests.waiting import wait_for
from tests.worker.conftest import SLOW, TINY, wait_for_status
from webapp import services
from webapp.models import EpochRecord, ModelVersion, TrainingJob
from worker.tasks import train_job

pytestmark = pytest.mark.slow


def staging_root() -> Path:
    return Path(settings.GRAFT_DATA_DIR) / "models" / ".staging"


def create(project, dataset, config=TINY, **kwargs) -> TrainingJob:
    return services.training_job_create(
        project=project, dataset=dataset, config=config, check_queue=False, **kwargs
    )


def test_it_trains_a_job_into_an_active_first_version(project, dataset, start_worker, worker_log):
    start_worker(queues="training,default")
    job = create(project, dataset)
    wait_for_status(job, "succeeded", "failed")
    assert job.status == "succeeded", job.error + worker_log()
    version = ModelVersion.objects.get(job=job)
    assert version.number == 1
    assert version.is_active
    assert version.class_names == ["green", "red"]
    assert {"model.keras", "model.tflite", "labels.json", "metadata.json"} <= {
        p.name for p in version.path.iterdir()
    }
    assert json.loads((version.path / "labels.json").read_text()) == ["green", "red"]
    assert version.val_accuracy is not None
    assert version.metrics["confusion_matrix"]
    epochs = list(EpochRecord.objects.filter(job=job).values_list("epoch", flat=True))
    assert epochs == [1, 2]
    assert job.progress == 1.0
    assert job.dataset_fingerprint == dataset.fingerprint
    assert len(job.train_files) + len(job.val_files) == 24
    assert list(staging_root().iterdir()) == []  # the staged export was moved into place


def test_it_trains_once_when_the_same_message_arrives_twice(project, dataset, start_worker):
    job = create(project, dataset)
    duplicate = train_job.apply_async(args=[job.pk], queue="training")
    start_worker(queues="training")
    wait_for_status(job, "succeeded", "failed")
    assert "skipped" in duplicate.get(timeout=120) or job.celery_task_id != duplicate.id
    assert ModelVersion.objects.filter(project=project).count() == 1
    assert job.attempts == 1


def test_it_cancels_a_queued_job_at_once_and_never_trains_it(project, dataset, start_worker):
    job = create(project, dataset)
    services.training_job_cancel(job=job)
    job.refresh_from_db()
    assert job.status == "cancelled"
    start_worker(queues="training")
    result = train_job.AsyncResult(job.celery_task_id) if job.celery_task_id else None
    if result is not None:
        assert "skipped" in result.get(timeout=60)
    job.refresh_from_db()
    assert job.status == "cancelled"
    assert not ModelVersion.objects.exists()


def test_it_stops_a_running_job_at_the_next_batch(project, dataset, start_worker):
    start_worker(queues="training")
    job = create(project, dataset, config={**SLOW, "epochs": 40})
    wait_for(lambda: EpochRecord.objects.filter(job=job).exists(), 180, "a first epoch")
    services.training_job_cancel(job=job)
    wait_for_status(job, "cancelled", "succeeded", "failed")
    assert job.status == "cancelled"
    assert EpochRecord.objects.filter(job=job).count() < 40
    assert not ModelVersion.objects.exists()


def test_it_resumes_a_job_whose_worker_was_killed(project, dataset, start_worker, settings):
    settings.GRAFT_HEARTBEAT_TIMEOUT = 5
    first = start_worker(queues="training", GRAFT_HEARTBEAT_TIMEOUT=5)
    job = create(project, dataset, config=SLOW)
    wait_for(lambda: EpochRecord.objects.filter(job=job, epoch__gte=2).exists(), 180, "2 epochs")
    first.stop(signal.SIGKILL)
    job.refresh_from_db()
    assert job.status == "running"  # nobody told the database: the reconcile must notice
    done_before = EpochRecord.objects.filter(job=job).count()

    def requeued() -> bool:
        return bool(services.training_jobs_reconcile()["requeued"])

    wait_for(requeued, 60, "the reconcile to requeue the lost job")
    # As if the kill had come after the first attempt's export: its staged version, which
    # nothing would move into place, must not outlive the retry.
    leftover = staging_root() / f"job-{job.pk}-1"
    leftover.mkdir(parents=True)
    (leftover / "model.tflite").write_bytes(b"tflite")
    start_worker(queues="training", GRAFT_HEARTBEAT_TIMEOUT=5)
    wait_for_status(job, "succeeded", "failed")
    assert job.status == "succeeded", job.error
    assert job.attempts == 2
    assert list(staging_root().iterdir()) == []
    assert done_before >= 2
    assert list(EpochRecord.objects.filter(job=job).values_list("epoch", flat=True)) == list(
        range(1, 13)
    )
    assert ModelVersion.objects.filter(job=job).count() == 1


def test_it_fails_a_lost_job_after_its_last_attempt(project, dataset, start_worker, settings):
    settings.GRAFT_HEARTBEAT_TIMEOUT = 5
    settings.GRAFT_JOB_MAX_ATTEMPTS = 1
    worker = start_worker(queues="training", GRAFT_HEARTBEAT_TIMEOUT=5)
    job = create(project, dataset, config=SLOW)
    wait_for(lambda: EpochRecord.objects.filter(job=job).exists(), 180, "a first epoch")
    worker.stop(signal.SIGKILL)
    wait_for(lambda: services.training_jobs_reconcile()["failed"], 60, "the reconcile to fail it")
    job.refresh_from_db()
    assert job.status == "failed"
    assert "stopped answering" in job.error
    assert not ModelVersion.objects.exists()


def test_it_reenqueues_a_queued_job_after_the_broker_was_flushed(
    project, dataset, start_worker, settings
):
    from worker import app

    settings.GRAFT_HEARTBEAT_TIMEOUT = 5
    job = create(project, dataset)
    with app.connection_for_write() as conn:
        conn.default_channel.client.flushdb()
    assert services.training_jobs_reconcile()["reenqueued"] == []  # too recent to judge

    def reenqueued() -> bool:
        return job.pk in services.training_jobs_reconcile()["reenqueued"]

    wait_for(reenqueued, 30, "the reconcile to re-enqueue the job")
    start_worker(queues="training")
    wait_for_status(job, "succeeded", "failed")
    assert job.status == "succeeded", job.error
    assert ModelVersion.objects.filter(job=job).count() == 1


def test_it_fails_a_job_on_an_unusable_dataset_with_a_readable_error(
    project, dataset, start_worker
):
    import shutil

    job = create(project, dataset)
    shutil.rmtree(dataset.path / "green")  # the folder changed under the row's feet
    start_worker(queues="training")
    wait_for_status(job, "succeeded", "failed")
    assert job.status == "failed"
    assert "at least 2 class folders" in job.error
    assert "Traceback" not in job.error
    assert not ModelVersion.objects.exists()


@pytest.mark.postgres
def test_it_runs_two_jobs_side_by_side_on_two_workers(project, dataset, start_worker):
    if connection.vendor != "postgresql":
        pytest.skip("needs PostgreSQL (CI runs this with DATABASE_URL pointing at one)")
    start_worker(queues="training")
    start_worker(queues="training")
    jobs = [create(project, dataset, config={**SLOW, "epochs": 4}) for _ in range(2)]
    wait_for(
        lambda: (
            TrainingJob.objects.filter(pk__in=[j.pk for j in jobs], status="running").count() == 2
        ),
        120,
        "both jobs to run at once",
    )
    for job in jobs:
        wait_for_status(job, "succeeded", "failed")
        assert job.status == "succeeded", job.error
    assert len({job.worker for job in jobs}) == 2
    assert sorted(ModelVersion.objects.values_list("number", flat=True)) == [1, 2]
    assert settings.GRAFT_DATA_DIR
