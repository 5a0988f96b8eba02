"""What a training task writes for the job through classifier.train's callbacks."""

from __future__ import annotations

import pytest

from tests.factories import make_dataset, make_job, make_project
from webapp.models import EpochRecord
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
        job.pk, tasks._Heartbeat("job", lambda: False, 60), epochs_total=5
    )

    callbacks.on_resume([_epoch(1, 0.9), _epoch(2, 0.7)])

    records = EpochRecord.objects.filter(job=job).order_by("epoch")
    assert [(r.epoch, r.loss, r.val_accuracy) for r in records] == [(1, 0.9, 0.4), (2, 0.7, 0.4)]
