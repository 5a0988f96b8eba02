"""import_dataset and train --wait: everything can be scripted."""

from __future__ import annotations

from io import StringIO

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError

from tests.images import image_folder, zip_of_folder
from tests.worker.conftest import TINY
from webapp.models import Dataset, ModelVersion, Project

pytestmark = pytest.mark.slow


def test_it_imports_a_folder_and_prints_the_dataset_id(transactional_db, data_dir, tmp_path):
    folder = image_folder(tmp_path / "colours", {"red": 4, "blue": 4})
    out = StringIO()
    call_command(
        "import_dataset", str(folder), "--project", "paints", stdout=out, stderr=StringIO()
    )
    dataset = Dataset.objects.get(pk=int(out.getvalue().strip()))
    assert dataset.project.slug == "paints"
    assert dataset.name == "colours"
    assert dataset.class_counts == {"blue": 4, "red": 4}


def test_it_imports_a_zip(transactional_db, data_dir, tmp_path):
    archive = tmp_path / "set.zip"
    archive.write_bytes(zip_of_folder(image_folder(tmp_path / "src")))
    out = StringIO()
    call_command("import_dataset", str(archive), "--project", "p", stdout=out, stderr=StringIO())
    assert Dataset.objects.get(pk=int(out.getvalue())).status == "ready"


def test_it_explains_a_failed_import(transactional_db, data_dir, tmp_path):
    (tmp_path / "flat").mkdir()
    with pytest.raises(CommandError, match="one folder per class"):
        call_command("import_dataset", str(tmp_path / "flat"), "--project", "p", stderr=StringIO())


def test_it_refuses_to_train_when_no_worker_runs(transactional_db, data_dir, tmp_path, broker):
    folder = image_folder(tmp_path / "colours")
    call_command(
        "import_dataset", str(folder), "--project", "p", stdout=StringIO(), stderr=StringIO()
    )
    with pytest.raises(CommandError, match="No training worker"):
        call_command("train", "--project", "p", "--weights", "none", stdout=StringIO())


def test_it_trains_and_waits_for_the_version(transactional_db, data_dir, tmp_path, start_worker):
    folder = image_folder(tmp_path / "colours", {"red": 10, "blue": 10})
    call_command(
        "import_dataset", str(folder), "--project", "p", stdout=StringIO(), stderr=StringIO()
    )
    start_worker(queues="training")
    out = StringIO()
    call_command(
        "train",
        "--project",
        "p",
        "--weights",
        TINY["weights"],
        "--alpha",
        str(TINY["alpha"]),
        "--image-size",
        str(TINY["image_size"]),
        "--epochs",
        "2",
        "--batch-size",
        "8",
        "--activate",
        "--wait",
        "--timeout",
        "300",
        stdout=out,
    )
    version = ModelVersion.objects.get(project=Project.objects.get(slug="p"))
    assert version.is_active
    assert "succeeded: p v1 (active)" in out.getvalue()
    assert "epoch 2:" in out.getvalue()
