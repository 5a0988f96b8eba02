"""The hourly task that removes what killed training children left in the staging folder:
export temporaries, and staged versions that no attempt will move into place."""

from __future__ import annotations

import os
import time

import pytest
from django.conf import settings

from tests.factories import make_dataset, make_job, make_project
from webapp.models import TrainingJob
from worker import tasks

pytest.importorskip("tensorflow")


def test_it_is_scheduled_on_the_default_queue() -> None:
    entry = next(
        e
        for e in settings.CELERY_BEAT_SCHEDULE.values()
        if e["task"] == "worker.tasks.remove_stale_exports"
    )
    assert entry["schedule"] <= 3600
    assert settings.CELERY_TASK_ROUTES["worker.tasks.remove_stale_exports"] == {"queue": "default"}


def _make_old(*folders) -> None:
    long_ago = time.time() - tasks.STALE_EXPORT_SECONDS - 60
    for folder in folders:
        folder.mkdir(parents=True)
        os.utime(folder, (long_ago, long_ago))


@pytest.mark.django_db
def test_it_removes_the_stale_temporaries_from_the_staging_folder(data_dir) -> None:
    staging = data_dir / "models" / ".staging"
    stale = staging / ".job-7-1.tmp-abcd1234"
    fresh = staging / ".job-8-1.tmp-efgh5678"
    fresh.mkdir(parents=True)
    _make_old(stale)

    assert tasks.remove_stale_exports() == [str(stale)]
    assert sorted(p.name for p in staging.iterdir()) == [fresh.name]


@pytest.mark.django_db
def test_it_removes_staged_versions_no_running_attempt_owns(data_dir) -> None:
    project = make_project()
    dataset = make_dataset(project)
    running = make_job(project, dataset, status=TrainingJob.Status.RUNNING, attempts=2)
    failed = make_job(project, dataset, status=TrainingJob.Status.FAILED, attempts=3)
    staging = data_dir / "models" / ".staging"
    current = staging / f"job-{running.pk}-2"  # the running attempt's export: kept
    earlier = staging / f"job-{running.pk}-1"  # its killed first attempt's
    of_failed = staging / f"job-{failed.pk}-3"  # failed after its export, never moved
    of_deleted = staging / "job-999-1"  # the job row is gone
    unrelated = staging / "notes"
    _make_old(current, earlier, of_failed, of_deleted, unrelated)
    recent = staging / f"job-{failed.pk}-2"
    recent.mkdir()

    removed = tasks.remove_stale_exports()

    assert sorted(removed) == sorted(str(p) for p in (earlier, of_failed, of_deleted))
    assert sorted(p.name for p in staging.iterdir()) == sorted(
        [current.name, recent.name, unrelated.name]
    )


@pytest.mark.django_db
def test_it_does_nothing_before_the_first_job(data_dir) -> None:
    assert tasks.remove_stale_exports() == []


@pytest.mark.django_db
def test_it_removes_the_checkpoints_of_jobs_that_ended_without_their_worker(data_dir) -> None:
    project = make_project()
    dataset = make_dataset(project)
    running = make_job(project, dataset, status=TrainingJob.Status.RUNNING, attempts=1)
    requeued = make_job(project, dataset, status=TrainingJob.Status.QUEUED, attempts=1)
    lost = make_job(project, dataset, status=TrainingJob.Status.FAILED, attempts=3)
    cancelled = make_job(project, dataset, status=TrainingJob.Status.CANCELLED, attempts=1)
    root = data_dir / "checkpoints"
    kept = [root / f"job-{running.pk}", root / f"job-{requeued.pk}"]
    gone = [root / f"job-{lost.pk}", root / f"job-{cancelled.pk}", root / "job-999"]
    for folder in kept + gone:
        folder.mkdir(parents=True)
        (folder / "checkpoint.weights.h5").write_bytes(b"weights")

    removed = tasks.remove_stale_exports()

    assert sorted(removed) == sorted(str(p) for p in gone)
    assert sorted(root.iterdir()) == sorted(kept)
