"""What a training task writes for the job through classifier.train's callbacks, and at
its end."""

from __future__ import annotations

import json
from datetime import timedelta
from types import SimpleNamespace

import pytest
from django.conf import settings
from django.utils import timezone

from tests.factories import make_dataset, make_job, make_project
from webapp import services
from webapp.models import EpochRecord, TrainingJob
from worker import tasks

pytest.importorskip("tensorflow")


def _epoch(number: int, loss: float) -> dict:
    return {
        "epoch": number,
        "phase": "training",
        "loss": loss,
        "accuracy": 0.5,
        "val_loss": loss + 0.1,
        "val_accuracy": 0.4,
        "learning_rate": 2e-4,
        "seconds": 1.5,
    }


@pytest.mark.django_db
def test_a_resumed_job_records_the_epochs_its_killed_attempt_checkpointed() -> None:
    # Killed between writing epoch 2's checkpoint and recording epoch 2: the retry resumes
    # after epoch 2, so only the checkpoint's history can give the job that epoch back.
    project = make_project("Flowers")
    job = make_job(project, make_dataset(project), status="running", attempts=2)
    EpochRecord.objects.create(job=job, epoch=1, phase="training", loss=0.9)
    callbacks = tasks._job_callbacks(
        job.pk, 2, tasks._Heartbeat("job", lambda: False, 60), epochs_total=5
    )

    callbacks.on_resume([_epoch(1, 0.9), _epoch(2, 0.7)])

    records = EpochRecord.objects.filter(job=job).order_by("epoch")
    assert [(r.epoch, r.loss, r.val_accuracy) for r in records] == [(1, 0.9, 0.4), (2, 0.7, 0.4)]


def _requeue_and_claim_again(job: TrainingJob) -> None:
    """The reconcile judges the running attempt lost and requeues the job; a retry claims it."""
    later = timezone.now() + timedelta(seconds=settings.GRAFT_HEARTBEAT_TIMEOUT + 1)
    assert services.training_jobs_reconcile(now=later)["requeued"] == [job.pk]
    assert services.training_job_claim(job_id=job.pk) is not None


@pytest.mark.django_db
def test_an_attempt_that_lost_its_claim_stops_without_writing() -> None:
    project = make_project("Flowers")
    job = make_job(
        project, make_dataset(project), status="running", attempts=2, phase="training", progress=0.4
    )
    callbacks = tasks._job_callbacks(
        job.pk, 1, tasks._Heartbeat("job", lambda: False, 60), epochs_total=5
    )

    callbacks.on_phase("exporting", {})
    callbacks.on_epoch(3, _epoch(3, 0.5))

    job.refresh_from_db()
    assert callbacks.should_stop()
    assert (job.phase, job.progress) == ("training", 0.4)
    assert not EpochRecord.objects.filter(job=job).exists()


@pytest.mark.django_db
def test_an_attempt_judged_lost_in_its_export_leaves_the_job_to_the_retry(
    data_dir, monkeypatch
) -> None:
    project = make_project("Flowers")
    job = make_job(project, make_dataset(project))

    def train_silently_too_long(data, config, *, out_dir, checkpoint_dir, callbacks, **kwargs):
        callbacks.on_phase("exporting", {})
        checkpoint_dir.mkdir(parents=True)
        (checkpoint_dir / "checkpoint.json").write_text("{}")
        _requeue_and_claim_again(job)  # while it exported, silent for too long
        out_dir.mkdir()
        (out_dir / "model.tflite").write_bytes(b"model")
        (out_dir / "labels.json").write_text('["a", "b"]')
        (out_dir / "metadata.json").write_text(json.dumps({"files": {}}))
        return SimpleNamespace(to_dict=lambda: {"class_names": ["a", "b"]})

    monkeypatch.setattr("classifier.train.train", train_silently_too_long)

    outcome = tasks.train_job(job.pk)

    job.refresh_from_db()
    assert outcome == "stopped: attempt 1 was requeued meanwhile"
    assert (job.status, job.attempts, job.phase) == ("running", 2, "starting")
    assert not project.versions.exists()
    assert not tasks._staging_dir(job.pk, 1).exists()
    assert (tasks._checkpoint_dir(job.pk) / "checkpoint.json").exists()  # the retry's to resume
