"""Fixtures for worker tests: a real dataset on disk and a fast tiny training config."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from tests.factories import make_project
from tests.images import image_folder
from tests.waiting import wait_for
from tests.webapp.conftest import served_project, tiny_version_dirs  # noqa: F401 - batch tests
from webapp import services
from webapp.models import TrainingJob

# Seconds each, not minutes: random weights, a 32px trunk at alpha 0.35, a tiny head.
TINY = {
    "weights": "none",
    "alpha": 0.35,
    "image_size": 32,
    "batch_size": 8,
    "epochs": 2,
    "head_units": [16],
    "learning_rate": 0.01,
}
# Slow enough to interrupt: streams images every epoch instead of using cached features.
SLOW = {**TINY, "epochs": 12, "use_feature_cache": False}


@pytest.fixture
def project(transactional_db):
    return make_project("Flowers")


@pytest.fixture
def dataset(project, data_dir, tmp_path):
    folder = image_folder(tmp_path / "source", {"red": 12, "green": 12})
    return services.dataset_import_directory(
        project=project, name="colours", source_dir=folder, background=False
    )


def wait_for_status(job: TrainingJob, *statuses: str, timeout: float = 180) -> TrainingJob:
    def reached() -> TrainingJob | None:
        job.refresh_from_db()
        return job if job.status in statuses else None

    wait_for(reached, timeout, f"job {job.pk} to become {' or '.join(statuses)}")
    return job


@pytest.fixture
def worker_log(tmp_path) -> Callable[[], str]:
    def read() -> str:
        return "\n".join(p.read_text() for p in sorted(Path(tmp_path).glob("worker-*.log")))

    return read
