"""int8 serving (GRAFT_INT8): the active version's accepted int8 copy answers, from the
next request once its quantization is recorded, and float32 answers otherwise."""

from __future__ import annotations

import shutil
from collections.abc import Iterator

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.urls import reverse

from tests.images import jpeg_bytes
from tests.int8 import add_int8_copy, int8_record
from tests.webapp.conftest import SERVED_LABELS
from webapp import predictor
from webapp.models import ModelVersion, Prediction, Project
from webapp.services import model_version_activate

URL = "/api/v1/projects/flowers/classify"


@pytest.fixture
def version(data_dir, tiny_version_dirs, db) -> Iterator[ModelVersion]:
    """Project "flowers" with an active v1 whose files are a copy (so they can change)."""
    predictor.cache().clear()
    project = Project.objects.create(name="Flowers", slug="flowers")
    shutil.copytree(tiny_version_dirs[1], data_dir / "models" / "flowers" / "v1")
    version = ModelVersion.objects.create(
        project=project,
        number=1,
        directory="models/flowers/v1",
        class_names=SERVED_LABELS[1],
        image_size=32,
    )
    yield model_version_activate(version=version)
    predictor.cache().clear()


def _record_quantization(version: ModelVersion, **fields) -> dict:
    """What the quantize task leaves: the copy and record on disk, the record on the row."""
    record = add_int8_copy(version.path, int8_record(**fields))
    ModelVersion.objects.filter(pk=version.pk).update(int8=record)
    return record


def _classify(client) -> dict:
    response = client.post(URL, {"image": SimpleUploadedFile("p.jpg", jpeg_bytes())})
    assert response.status_code == 200, response.content
    return response.json()


def test_it_serves_an_accepted_int8_copy_when_int8_is_on(version, viewer_api, settings):
    settings.GRAFT_INT8 = True
    _record_quantization(version)

    body = _classify(viewer_api)

    assert body["precision"] == "int8"
    assert {p["label"] for p in body["predictions"]} == set(SERVED_LABELS[1])
    assert Prediction.objects.get(pk=body["id"]).precision == "int8"


def test_it_swaps_to_int8_on_the_next_request_once_quantization_is_recorded(
    version, viewer_api, settings
):
    settings.GRAFT_INT8 = True
    held = predictor.served_version(version.project_id)
    before = _classify(viewer_api)

    _record_quantization(version)
    after = _classify(viewer_api)

    assert (before["precision"], after["precision"]) == ("float32", "int8")
    assert before["version"] == after["version"] == 1
    # A request that took the float32 version keeps it to the end: no mixed answers.
    assert held.predictor.precision == "float32"
    assert predictor.served_version(version.project_id).predictor.precision == "int8"


def test_it_serves_float32_when_int8_is_off(version, viewer_api, settings):
    settings.GRAFT_INT8 = False
    _record_quantization(version)

    body = _classify(viewer_api)

    assert body["precision"] == "float32"
    assert Prediction.objects.get(pk=body["id"]).precision == "float32"


def test_it_serves_float32_when_the_int8_copy_was_not_accepted(version, viewer_api, settings):
    settings.GRAFT_INT8 = True
    _record_quantization(version, accepted=False)

    assert _classify(viewer_api)["precision"] == "float32"


def test_it_serves_float32_while_a_version_has_no_record(version, viewer_api, settings):
    settings.GRAFT_INT8 = True

    assert _classify(viewer_api)["precision"] == "float32"


def test_it_goes_back_to_float32_when_a_forced_run_refuses_the_copy(version, viewer_api, settings):
    settings.GRAFT_INT8 = True
    _record_quantization(version)
    assert _classify(viewer_api)["precision"] == "int8"

    _record_quantization(version, accepted=False, created_at="2026-11-29T08:00:00+00:00")

    assert _classify(viewer_api)["precision"] == "float32"


def test_it_asks_the_database_one_question_per_request(
    version, settings, django_assert_num_queries
):
    settings.GRAFT_INT8 = True
    _record_quantization(version)
    predictor.served_version(version.project_id)

    with django_assert_num_queries(1):
        served = predictor.served_version(version.project_id)

    assert served.predictor.precision == "int8"


def test_it_does_not_reload_while_the_record_stays_the_same(version, settings):
    settings.GRAFT_INT8 = True
    _record_quantization(version)
    first = predictor.served_version(version.project_id)
    # A forced re-run in progress marks the record but keeps its fields.
    ModelVersion.objects.filter(pk=version.pk).update(
        int8={**int8_record(), "running": True, "attempts": 1}
    )

    assert predictor.served_version(version.project_id) is first


def test_the_classify_page_says_when_int8_answered(version, viewer_client, settings):
    settings.GRAFT_INT8 = True
    _record_quantization(version)

    response = viewer_client.post(
        reverse("classify_photos"),
        {"project": "flowers", "photos": [SimpleUploadedFile("a.jpg", jpeg_bytes())]},
        headers={"HX-Request": "true"},
    )

    assert response.status_code == 200
    assert " ms (int8) " in response.content.decode()


def test_a_batch_is_classified_by_the_int8_copy_too(version, settings):
    from webapp import services

    settings.GRAFT_INT8 = True
    _record_quantization(version)
    photos = [SimpleUploadedFile(f"p{i}.jpg", jpeg_bytes()) for i in range(2)]
    batch = services.batch_create(project=version.project, files=photos, check_queue=False)

    services.batch_run(batch_id=batch.pk)

    assert list(batch.predictions.values_list("precision", flat=True)) == ["int8", "int8"]


def test_it_serves_float32_when_litert_cannot_load_an_intact_int8_copy(
    version, viewer_api, settings, caplog
):
    # A file that matches its recorded checksum but that this LiteRT cannot load (one made
    # by another LiteRT, say): the version is served, by float32, and it is loaded once.
    settings.GRAFT_INT8 = True
    record = add_int8_copy(version.path, model=b"not a flatbuffer" * 64)
    ModelVersion.objects.filter(pk=version.pk).update(int8=record)

    body = _classify(viewer_api)

    assert body["precision"] == "float32"
    assert "model.int8.tflite cannot be loaded" in caplog.text
    assert "serving the float32 model" in caplog.text
    served = predictor.served_version(version.project_id)
    assert served.predictor.precision == "float32"
    assert predictor.served_version(version.project_id) is served
