"""Dataset imports on a real worker and a real Redis: a lost message is found and retried."""

from __future__ import annotations

import pytest

from tests.images import image_folder, zip_of_folder
from tests.waiting import wait_for
from tests.worker.test_batch_task import flush_broker, later
from webapp import services
from webapp.models import Dataset

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True)]


def test_it_reenqueues_an_import_the_broker_lost_and_imports_it_once(
    project, data_dir, tmp_path, start_worker
):
    path = tmp_path / "photos.zip"
    path.write_bytes(zip_of_folder(image_folder(tmp_path / "src", {"cats": 3, "dogs": 2})))
    dataset = services.dataset_import_zip(project=project, name="photos", upload=path)
    flush_broker()

    assert services.datasets_reconcile()["reenqueued"] == []  # too recent to judge
    assert services.datasets_reconcile(now=later())["reenqueued"] == [dataset.pk]
    assert services.datasets_reconcile(now=later())["reenqueued"] == []  # its message waits now

    start_worker(queues="default")

    def imported() -> bool:
        dataset.refresh_from_db()
        return dataset.status != Dataset.Status.IMPORTING

    wait_for(imported, 90, f"dataset {dataset.pk} to be imported")
    assert dataset.status == Dataset.Status.READY, dataset.error
    assert (dataset.attempts, dataset.class_counts) == (1, {"cats": 3, "dogs": 2})
    assert not (data_dir / "incoming" / f"dataset-{dataset.pk}.zip").exists()
