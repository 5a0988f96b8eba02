"""prediction_create / prediction_correct / prediction_add_to_dataset / predictions_prune."""

from __future__ import annotations

import io
from datetime import timedelta

import pytest
from django.core.exceptions import ValidationError
from django.utils import timezone
from PIL import Image

from classifier.errors import InvalidImageError
from tests.factories import make_dataset, make_project
from webapp import services
from webapp.models import BatchClassification, Dataset, Prediction


def jpeg() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (64, 48), (20, 150, 60)).save(buffer, "JPEG")
    return buffer.getvalue()


def test_it_loads_the_active_version_once_per_process(served_project):
    from webapp.predictor import served_version

    first = served_version(served_project.pk)

    assert served_version(served_project.pk) is first
    assert first.number == 1


def test_it_raises_no_active_version(db):
    project = make_project("Empty")

    with pytest.raises(services.NoActiveVersion):
        services.prediction_create(project=project, image=jpeg())


def test_it_raises_invalid_image_for_junk(served_project):
    with pytest.raises(InvalidImageError):
        services.prediction_create(project=served_project, image=b"junk")


def test_it_records_a_correction(served_project, viewer):
    prediction = services.prediction_create(project=served_project, image=jpeg())

    services.prediction_correct(prediction=prediction, label="dog", user=viewer)

    prediction.refresh_from_db()
    assert (prediction.corrected_label, prediction.corrected_by) == ("dog", viewer)
    assert prediction.is_corrected


def test_it_spells_a_correction_like_the_version_s_class_it_names(served_project, viewer):
    prediction = services.prediction_create(project=served_project, image=jpeg())

    services.prediction_correct(prediction=prediction, label="Dog", user=viewer)

    prediction.refresh_from_db()
    assert prediction.corrected_label == "dog"


def test_it_keeps_a_new_label_as_typed(served_project, viewer):
    prediction = services.prediction_create(project=served_project, image=jpeg())

    services.prediction_correct(prediction=prediction, label="Fox", user=viewer)

    prediction.refresh_from_db()
    assert prediction.corrected_label == "Fox"


def test_it_adds_a_photo_corrected_in_another_case_to_the_existing_class(
    served_project, viewer, settings, data_dir
):
    settings.GRAFT_KEEP_PREDICTION_IMAGES = True
    dataset = make_dataset(served_project, "photos", class_counts={})
    (dataset.path / "dog").mkdir(parents=True)
    (dataset.path / "dog" / "seed.jpg").write_bytes(jpeg())
    prediction = services.prediction_create(project=served_project, image=jpeg())
    services.prediction_correct(prediction=prediction, label="DOG", user=viewer)

    services.prediction_add_to_dataset(prediction=prediction, dataset=dataset, user=viewer)

    assert sorted(p.name for p in dataset.path.iterdir()) == ["dog"]
    assert len(list((dataset.path / "dog").iterdir())) == 2


def test_it_refuses_a_correction_that_cannot_be_a_class_name(served_project, viewer):
    prediction = services.prediction_create(project=served_project, image=jpeg())

    with pytest.raises(ValidationError):
        services.prediction_correct(prediction=prediction, label="../etc", user=viewer)


def test_it_adds_a_kept_photo_to_a_dataset_under_its_corrected_label(
    served_project, viewer, settings, data_dir
):
    settings.GRAFT_KEEP_PREDICTION_IMAGES = True
    dataset = make_dataset(served_project, "photos", class_counts={})
    for name in ("cat", "dog"):
        (dataset.path / name).mkdir(parents=True)
        (dataset.path / name / "seed.jpg").write_bytes(jpeg())
    photo = jpeg()
    prediction = services.prediction_create(project=served_project, image=photo)
    services.prediction_correct(prediction=prediction, label="dog", user=viewer)

    services.prediction_add_to_dataset(prediction=prediction, dataset=dataset, user=viewer)

    dataset.refresh_from_db()
    added = [p for p in (dataset.path / "dog").iterdir() if p.name != "seed.jpg"]
    assert [p.read_bytes() for p in added] == [photo]
    assert dataset.class_counts["dog"] == 2
    assert Prediction.objects.get(pk=prediction.pk).added_to_dataset == dataset
    with pytest.raises(ValidationError, match="already added"):
        services.prediction_add_to_dataset(prediction=prediction, dataset=dataset, user=viewer)


def test_it_does_not_add_a_photo_to_a_dataset_deleted_since_the_form_was_checked(
    served_project, viewer, settings, data_dir
):
    settings.GRAFT_KEEP_PREDICTION_IMAGES = True
    dataset = make_dataset(served_project, "photos", class_counts={})
    prediction = services.prediction_create(project=served_project, image=jpeg())
    stale = Dataset.objects.get(pk=dataset.pk)  # what the form found, still "ready"
    services.dataset_delete(dataset=dataset)

    with pytest.raises(ValidationError, match="was deleted"):
        services.prediction_add_to_dataset(prediction=prediction, dataset=stale, user=viewer)

    assert not stale.path.exists()
    prediction.refresh_from_db()
    assert prediction.added_to_dataset is None


def test_it_cannot_add_a_photo_that_was_not_kept(served_project, viewer):
    dataset = make_dataset(served_project)
    prediction = services.prediction_create(project=served_project, image=jpeg())

    with pytest.raises(ValidationError, match="not kept"):
        services.prediction_add_to_dataset(prediction=prediction, dataset=dataset, user=viewer)


def test_it_prunes_predictions_and_batches_past_the_retention(
    served_project, settings, django_capture_on_commit_callbacks
):
    settings.GRAFT_PREDICTION_RETENTION_DAYS = 30
    settings.GRAFT_KEEP_PREDICTION_IMAGES = True
    old = services.prediction_create(project=served_project, image=jpeg())
    new = services.prediction_create(project=served_project, image=jpeg())
    Prediction.objects.filter(pk=old.pk).update(created_at=timezone.now() - timedelta(days=31))
    stale = BatchClassification.objects.create(
        project=served_project,
        status="succeeded",
        directory="batches/1",
        created_at=timezone.now() - timedelta(days=31),
    )
    stale.path.mkdir(parents=True)

    with django_capture_on_commit_callbacks(execute=True):
        result = services.predictions_prune()

    assert result == {"predictions": 1, "batches": 1}
    assert list(Prediction.objects.values_list("pk", flat=True)) == [new.pk]
    assert not stale.path.exists()
    assert not old.image.storage.exists(old.image.name)
    assert new.image.storage.exists(new.image.name)


def test_it_keeps_everything_when_retention_is_zero(served_project, settings):
    settings.GRAFT_PREDICTION_RETENTION_DAYS = 0
    prediction = services.prediction_create(project=served_project, image=jpeg())
    Prediction.objects.filter(pk=prediction.pk).update(
        created_at=timezone.now() - timedelta(days=999)
    )

    assert services.predictions_prune() == {"predictions": 0, "batches": 0}
    assert Prediction.objects.count() == 1


def test_it_refuses_a_correction_once_the_photo_is_in_a_dataset(
    served_project, viewer, settings, data_dir
):
    settings.GRAFT_KEEP_PREDICTION_IMAGES = True
    dataset = make_dataset(served_project, "photos", class_counts={})
    prediction = services.prediction_create(project=served_project, image=jpeg())
    services.prediction_add_to_dataset(prediction=prediction, dataset=dataset, user=viewer)
    other = next(name for name in ("cat", "dog") if name != prediction.label)

    with pytest.raises(ValidationError, match="already in dataset"):
        services.prediction_correct(prediction=prediction, label=other, user=viewer)

    prediction.refresh_from_db()
    assert prediction.corrected_label == ""
    assert [p.parent.name for p in dataset.path.rglob("*.jpg")] == [prediction.label]


def test_it_adds_a_photo_to_a_dataset_once(served_project, viewer, settings, data_dir):
    settings.GRAFT_KEEP_PREDICTION_IMAGES = True
    dataset = make_dataset(served_project, "photos", class_counts={})
    prediction = services.prediction_create(project=served_project, image=jpeg())
    stale = Prediction.objects.get(pk=prediction.pk)  # a second request, read meanwhile
    services.prediction_add_to_dataset(prediction=prediction, dataset=dataset, user=viewer)

    with pytest.raises(ValidationError, match="already added"):
        services.prediction_add_to_dataset(prediction=stale, dataset=dataset, user=viewer)

    assert len(list(dataset.path.rglob("*.jpg"))) == 1


def test_it_leaves_a_photo_it_could_not_add_free_to_add_later(
    served_project, viewer, settings, data_dir
):
    settings.GRAFT_KEEP_PREDICTION_IMAGES = True
    dataset = make_dataset(served_project, "photos", class_counts={})
    prediction = services.prediction_create(project=served_project, image=jpeg())
    with prediction.image.open("wb") as handle:
        handle.write(b"no longer a photo")

    with pytest.raises(ValidationError, match="could not be added"):
        services.prediction_add_to_dataset(prediction=prediction, dataset=dataset, user=viewer)

    prediction.refresh_from_db()
    assert prediction.added_to_dataset is None
