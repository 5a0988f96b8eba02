"""Classify page: photos in, top-5 labels out; corrections and adding to a dataset."""

from __future__ import annotations

import html
import json
import re

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.urls import reverse

from tests.factories import make_project
from tests.html_checks import duplicate_ids, unlabelled_controls
from tests.images import jpeg_bytes
from tests.webapp.conftest import SERVED_LABELS
from webapp import services
from webapp.models import Prediction

HTMX = {"HX-Request": "true"}


def _photo(name="cat.jpg", colour=(200, 30, 30)):
    return SimpleUploadedFile(name, jpeg_bytes(colour), content_type="image/jpeg")


def test_it_says_when_nothing_can_classify(viewer_client, db):
    response = viewer_client.get(reverse("classify"))
    assert b"No project has an active model version" in response.content
    assert b'id="classify-form"' not in response.content


def test_it_offers_the_camera_and_many_photos(viewer_client, served_project):
    content = viewer_client.get(reverse("classify")).content.decode()
    assert 'accept="image/*" multiple' in content
    assert 'capture="environment"' in content


def test_it_classifies_several_photos_with_top_5_bars(viewer_client, served_project):
    response = viewer_client.post(
        reverse("classify_photos"),
        {"project": "flowers", "photos": [_photo(), _photo("b.jpg", (0, 0, 200))]},
        headers=HTMX,
    )
    content = response.content.decode()
    assert response.status_code == 200
    assert Prediction.objects.count() == 2
    assert content.count('class="prediction fresh"') == 2
    assert all(label in content for label in SERVED_LABELS[1])
    assert "Flowers v1" in content and " ms " in content
    assert "<html" not in content  # a partial for htmx


def test_it_explains_a_photo_it_cannot_read(viewer_client, served_project):
    bad = SimpleUploadedFile("notes.jpg", b"not an image", content_type="image/jpeg")
    response = viewer_client.post(
        reverse("classify_photos"), {"project": "flowers", "photos": [bad, _photo()]}, follow=True
    )
    content = response.content.decode()
    assert "notes.jpg" in content and 'class="prediction failed"' in content
    assert Prediction.objects.count() == 1


def test_it_refuses_a_photo_over_the_limit_without_reading_it(
    viewer_client, served_project, settings, upload_reads
):
    """A photo of any size reaches the view (Django spools it to disk): reading it whole
    before the size check let one upload fill a web worker's memory."""
    settings.GRAFT_MAX_IMAGE_MB = 1
    read = upload_reads
    big = SimpleUploadedFile("big.jpg", b"\xff" * (3 * 2**20), content_type="image/jpeg")

    response = viewer_client.post(
        reverse("classify_photos"), {"project": "flowers", "photos": [big, _photo()]}, headers=HTMX
    )

    content = response.content.decode()
    assert "big.jpg" in content and "3.0 MB; the limit is 1 MB" in content
    assert Prediction.objects.count() == 1
    assert max(read) <= 2**20


def test_it_offers_a_project_selector_when_several_can_classify(viewer_client, served_project):
    from webapp.models import ModelVersion

    birds = make_project("Birds")
    ModelVersion.objects.create(project=birds, number=1, directory="x", is_active=True)
    content = viewer_client.get(reverse("classify") + "?project=birds").content.decode()
    assert '<select name="project"' in content
    assert '<option value="birds" selected>' in content


def test_it_refuses_a_project_without_an_active_version(viewer_client, served_project):
    make_project("Empty")
    response = viewer_client.post(
        reverse("classify_photos"), {"project": "empty", "photos": [_photo()]}, headers=HTMX
    )
    assert response.status_code == 400
    assert "has no active model version to classify with" in response.content.decode()
    assert not Prediction.objects.exists()


def test_it_asks_for_a_photo_when_none_was_sent(viewer_client, served_project):
    response = viewer_client.post(reverse("classify_photos"), {"project": "flowers"}, headers=HTMX)

    assert response.status_code == 400
    assert "Choose one or more photos to classify." in response.content.decode()


@pytest.mark.parametrize("headers", [HTMX, {}], ids=["htmx", "plain"])
def test_it_says_how_many_photos_it_takes_at_once(viewer_client, served_project, settings, headers):
    settings.DATA_UPLOAD_MAX_NUMBER_FILES = 2
    photos = [_photo("a.jpg"), _photo("b.jpg"), _photo("c.jpg")]

    response = viewer_client.post(
        reverse("classify_photos"), {"project": "flowers", "photos": photos}, headers=headers
    )

    assert response.status_code == 400
    assert "Send at most 2 photos at once" in response.content.decode()
    assert not Prediction.objects.exists()


def test_it_refuses_get_on_classify_photos(viewer_client, db):
    assert viewer_client.get(reverse("classify_photos")).status_code == 405


def _prediction(project, user):
    return services.prediction_create(
        project=project, image=jpeg_bytes(), filename="x.jpg", user=user
    )


def test_it_lists_recent_photos_without_the_rows_of_batches(viewer_client, viewer, served_project):
    single = _prediction(served_project, viewer)
    batch = services.batch_create(
        project=served_project,
        files=[SimpleUploadedFile(f"b{i}.jpg", jpeg_bytes()) for i in range(3)],
        user=viewer,
        check_queue=False,
    )
    services.batch_run(batch_id=batch.pk)

    page = viewer_client.get(reverse("classify")).content.decode()

    assert Prediction.objects.filter(batch=batch).count() == 3
    assert f'id="prediction-{single.pk}"' in page
    assert page.count('class="prediction') == 1


def test_it_stores_a_correction(viewer_client, viewer, served_project):
    prediction = _prediction(served_project, viewer)
    response = viewer_client.post(
        reverse("prediction_correct", args=[prediction.pk]), {"label": "eel"}, headers=HTMX
    )
    prediction.refresh_from_db()
    assert prediction.corrected_label == "eel"
    assert prediction.corrected_by == viewer
    assert b"really eel" in response.content


def test_it_refuses_a_bad_correction_inline(viewer_client, viewer, served_project):
    prediction = _prediction(served_project, viewer)
    response = viewer_client.post(
        reverse("prediction_correct", args=[prediction.pk]), {"label": "../x"}, headers=HTMX
    )
    assert response.status_code == 400
    assert b"cannot be a class name" in response.content
    prediction.refresh_from_db()
    assert prediction.corrected_label == ""


def _htmx_swaps(page: str, status: int) -> bool:
    """Whether htmx 2 puts an answer with ``status`` into the page: the first rule of the
    page's ``htmx-config`` whose code matches (htmx's own defaults swap no 4xx)."""
    meta = re.search(r"<meta name=\"htmx-config\" content='([^']*)'>", page)
    assert meta, "the page does not configure htmx"
    for rule in json.loads(html.unescape(meta[1]))["responseHandling"]:
        if re.search(rule["code"], str(status)):
            return rule["swap"]
    return False


def test_it_shows_the_refusals_htmx_gets_as_400_in_the_page(viewer_client, served_project):
    # A refused photo form or correction comes back as a 400 fragment holding the reason.
    page = viewer_client.get(reverse("classify")).content.decode()

    assert _htmx_swaps(page, 400)
    assert _htmx_swaps(page, 200)
    assert not _htmx_swaps(page, 204)
    assert not _htmx_swaps(page, 403) and not _htmx_swaps(page, 500)


def test_it_adds_a_corrected_photo_to_a_dataset(trainer_client, served_project, settings):
    settings.GRAFT_KEEP_PREDICTION_IMAGES = True
    dataset = services.dataset_create_empty(project=served_project, name="fixes")
    prediction = _prediction(served_project, None)
    services.prediction_correct(prediction=prediction, label="eel")
    response = trainer_client.post(
        reverse("prediction_add_to_dataset", args=[prediction.pk]),
        {"dataset": dataset.pk},
        headers=HTMX,
    )
    dataset.refresh_from_db()
    assert response.status_code == 200
    assert dataset.class_counts == {"eel": 1}
    assert b"added to fixes" in response.content


def test_it_refuses_a_correction_after_the_photo_went_into_a_dataset(
    trainer_client, served_project, settings
):
    settings.GRAFT_KEEP_PREDICTION_IMAGES = True
    dataset = services.dataset_create_empty(project=served_project, name="fixes")
    prediction = _prediction(served_project, None)
    services.prediction_add_to_dataset(prediction=prediction, dataset=dataset)
    other = next(label for label in SERVED_LABELS[1] if label != prediction.label)

    response = trainer_client.post(
        reverse("prediction_correct", args=[prediction.pk]), {"label": other}, headers=HTMX
    )

    assert response.status_code == 400
    assert "already in dataset “fixes”" in response.content.decode()
    prediction.refresh_from_db()
    assert prediction.corrected_label == ""


def test_it_says_when_the_photo_was_not_kept(trainer_client, served_project, settings):
    settings.GRAFT_KEEP_PREDICTION_IMAGES = False
    dataset = services.dataset_create_empty(project=served_project, name="fixes")
    prediction = _prediction(served_project, None)
    response = trainer_client.post(
        reverse("prediction_add_to_dataset", args=[prediction.pk]),
        {"dataset": dataset.pk},
        headers=HTMX,
    )
    assert response.status_code == 400
    assert b"was not kept" in response.content


def test_it_forbids_adding_to_a_dataset_without_the_train_permission(viewer_client, served_project):
    prediction = _prediction(served_project, None)
    url = reverse("prediction_add_to_dataset", args=[prediction.pk])
    assert viewer_client.post(url, {"dataset": 1}).status_code == 403


def test_it_returns_404_for_an_unknown_prediction(viewer_client, db):
    url = reverse("prediction_correct", args=[999])
    assert viewer_client.post(url, {"label": "x"}).status_code == 404


@pytest.mark.parametrize("name", ["prediction_correct", "prediction_add_to_dataset"])
def test_it_refuses_get_on_prediction_changes(trainer_client, served_project, name):
    prediction = _prediction(served_project, None)
    assert trainer_client.get(reverse(name, args=[prediction.pk])).status_code == 405


def test_it_labels_every_control_of_both_forms(viewer_client, served_project):
    page = viewer_client.get(reverse("classify")).content.decode()
    assert 'id="batch-files"' in page
    assert unlabelled_controls(page) == []
    assert duplicate_ids(page) == []
