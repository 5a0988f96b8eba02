"""The hourly task that removes export temporaries left by killed training children."""

from __future__ import annotations

import os
import time

import pytest
from django.conf import settings

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


def test_it_removes_the_stale_temporaries_from_the_staging_folder(data_dir) -> None:
    staging = data_dir / "models" / ".staging"
    stale = staging / ".job-7-1.tmp-abcd1234"
    fresh = staging / ".job-8-1.tmp-efgh5678"
    staged = staging / "job-6-2"
    for folder in (stale, fresh, staged):
        folder.mkdir(parents=True)
    long_ago = time.time() - tasks.STALE_EXPORT_SECONDS - 60
    for folder in (stale, staged):
        os.utime(folder, (long_ago, long_ago))

    assert tasks.remove_stale_exports() == [str(stale)]
    assert sorted(p.name for p in staging.iterdir()) == [fresh.name, staged.name]


def test_it_does_nothing_before_the_first_job(data_dir) -> None:
    assert tasks.remove_stale_exports() == []
