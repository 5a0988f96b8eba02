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


class _Clock:
    """``time.monotonic`` for worker.tasks, moved by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def monotonic(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch) -> _Clock:
    clock = _Clock()
    monkeypatch.setattr(tasks, "time", clock)
    return clock


def _running(epochs_total: int = 2):
    """A running job (attempt 1) and the callbacks its task would train it with."""
    project = make_project("Flowers")
    job = make_job(project, make_dataset(project), status="running", attempts=1)
    heartbeat = tasks._Heartbeat(job.pk, 1, 60)
    return job, tasks._job_callbacks(job.pk, 1, heartbeat, epochs_total=epochs_total)


@pytest.mark.django_db
def test_it_writes_an_eta_for_the_progress_it_writes_also_at_each_epoch_and_phase(clock):
    job, callbacks = _running()  # 2 epochs of 10 batches: 5 % a batch
    callbacks.on_phase("training", {})
    callbacks.on_batch(1, 1, 10)  # the rate is measured from here, 5 %
    clock.now += 30
    callbacks.on_batch(1, 5, 10)  # 25 %, 20 % in 30 s
    clock.now += 0.5
    callbacks.on_batch(1, 10, 10)  # 50 %, not written: less than a second since the last

    callbacks.on_epoch(1, _epoch(1, 0.9))

    job.refresh_from_db()
    assert job.progress == 0.5
    assert job.eta_seconds == pytest.approx(30.5 / 0.45 * 0.5)

    clock.now += 10
    callbacks.on_phase("evaluating", {})

    job.refresh_from_db()
    assert (job.phase, job.progress) == ("evaluating", 0.5)
    assert job.eta_seconds == pytest.approx(40.5 / 0.45 * 0.5)


@pytest.mark.django_db
def test_it_gives_no_eta_before_enough_time_and_progress_are_measured(clock):
    job, callbacks = _running()  # 2 epochs of 100 batches: 0.5 % a batch
    callbacks.on_phase("training", {})
    callbacks.on_batch(1, 1, 100)

    clock.now += 2
    callbacks.on_batch(1, 6, 100)  # 2.5 % in 2 s
    job.refresh_from_db()
    assert (job.progress, job.eta_seconds) == (0.03, None)

    clock.now += 20
    callbacks.on_batch(1, 8, 100)  # 3.5 % in 22 s
    job.refresh_from_db()
    assert (job.progress, job.eta_seconds) == (0.04, None)

    clock.now += 8
    callbacks.on_batch(1, 20, 100)  # 9.5 % in 30 s
    job.refresh_from_db()
    assert job.progress == 0.1
    assert job.eta_seconds == pytest.approx(30 / 0.095 * 0.9)


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
