"""POST /api/v1/projects/<slug>/classify: the answer, the log, and every error code."""

from __future__ import annotations

import io

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.test import Client
from PIL import Image

from tests.webapp.conftest import SERVED_LABELS, documented, token_client
from webapp.api.throttling import TokenRateThrottle
from webapp.models import Prediction, Project

URL = "/api/v1/projects/flowers/classify"


def jpeg(size: tuple[int, int] = (320, 240), colour=(200, 40, 40)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, colour).save(buffer, "JPEG")
    return buffer.getvalue()


def upload(data: bytes, name: str = "photo.jpg") -> dict:
    return {"image": SimpleUploadedFile(name, data)}


def test_it_classifies_a_photo_with_the_active_version(served_project, viewer_api):
    response = viewer_api.post(URL, upload(jpeg()), format="multipart")

    assert response.status_code == 200
    body = response.json()
    assert body["version"] == 1
    labels = [p["label"] for p in body["predictions"]]
    assert sorted(labels) == sorted(SERVED_LABELS[1])
    confidences = [p["confidence"] for p in body["predictions"]]
    assert confidences == sorted(confidences, reverse=True)
    assert sum(confidences) == pytest.approx(1.0, abs=1e-4)
    assert body["latency_ms"] >= 0
    assert body["precision"] == "float32"  # int8 serving is opt-in (GRAFT_INT8)


def test_it_logs_the_prediction_with_the_photo_hash_only(served_project, viewer_api, viewer):
    import hashlib

    photo = jpeg()
    body = viewer_api.post(URL, upload(photo), format="multipart").json()

    prediction = Prediction.objects.get(pk=body["id"])
    assert prediction.source == Prediction.Source.API
    assert prediction.user == viewer
    assert prediction.version_number == 1
    assert prediction.image_sha256 == hashlib.sha256(photo).hexdigest()
    assert prediction.label == body["predictions"][0]["label"]
    assert prediction.precision == body["precision"] == "float32"
    assert not prediction.image


def test_it_keeps_the_photo_when_configured(served_project, viewer_api, settings):
    settings.GRAFT_KEEP_PREDICTION_IMAGES = True
    photo = jpeg()

    body = viewer_api.post(URL, upload(photo), format="multipart").json()

    prediction = Prediction.objects.get(pk=body["id"])
    with prediction.image.open("rb") as handle:
        assert handle.read() == photo


def test_it_answers_401_in_json_without_a_token(served_project):
    response = Client().post(URL, upload(jpeg()))

    assert response.status_code == 401
    assert response["Content-Type"] == "application/json"
    assert response.json()["code"] == "not_authenticated"


def test_it_answers_401_for_a_wrong_token(served_project):
    client = Client(HTTP_AUTHORIZATION="Token " + "0" * 40)

    response = client.post(URL, upload(jpeg()))

    assert response.status_code == 401
    assert response.json()["code"] == "authentication_failed"


def test_it_accepts_a_logged_in_session_too(served_project, viewer_client):
    response = viewer_client.post(URL, upload(jpeg()))

    assert response.status_code == 200


def test_it_answers_404_for_an_unknown_project(served_project, viewer_api):
    response = viewer_api.post("/api/v1/projects/nope/classify", upload(jpeg()))

    assert response.status_code == 404
    assert response.json()["code"] == "not_found"


def test_it_answers_409_when_no_version_is_active(viewer_api, db):
    Project.objects.create(name="Empty", slug="empty")

    response = viewer_api.post("/api/v1/projects/empty/classify", upload(jpeg()))

    assert response.status_code == 409
    assert response.json()["code"] == "no_active_version"
    assert "no active model version" in response.json()["detail"]


def test_it_answers_400_for_a_file_that_is_not_an_image(served_project, viewer_api):
    response = viewer_api.post(URL, upload(b"hello, world\n" * 50, "notes.txt"))

    assert response.status_code == 400
    assert response.json() == {
        "detail": "The file is not an image Graft can read.",
        "code": "invalid_image",
    }
    assert not Prediction.objects.exists()


def test_it_answers_400_without_the_image_field(served_project, viewer_api):
    response = viewer_api.post(
        URL, {"photo": SimpleUploadedFile("a.jpg", jpeg())}, format="multipart"
    )

    assert response.status_code == 400
    assert response.json()["code"] == "missing_image"


def test_it_answers_413_for_a_photo_over_the_size_limit(served_project, viewer_api, settings):
    settings.GRAFT_MAX_IMAGE_MB = 1
    big = jpeg() + b"\0" * (2 * 2**20)

    response = viewer_api.post(URL, upload(big))

    assert response.status_code == 413
    assert response.json()["code"] == "too_large"
    assert "1 MB" in response.json()["detail"]


def test_it_answers_405_to_get(served_project, viewer_api):
    response = viewer_api.get(URL)

    assert response.status_code == 405
    assert response.json()["code"] == "method_not_allowed"


def test_it_answers_json_404_for_unknown_api_paths(viewer_api):
    response = viewer_api.get("/api/v1/nothing/here")

    assert response.status_code == 404
    assert response.json() == {"detail": "Not found.", "code": "not_found"}


def test_it_limits_requests_per_token(served_project, viewer, trainer, monkeypatch):
    from django.core.cache import cache

    cache.clear()
    monkeypatch.setattr(TokenRateThrottle, "THROTTLE_RATES", {"token": "2/minute"})
    first, second = token_client(viewer), token_client(trainer)

    codes = [first.get("/api/v1/projects").status_code for _ in range(3)]
    other = second.get("/api/v1/projects")

    assert codes == [200, 200, 429]
    assert other.status_code == 200


def test_it_refuses_an_address_that_sends_too_many_wrong_tokens(
    served_project, viewer, monkeypatch, django_assert_max_num_queries
):
    from django.core.cache import cache
    from rest_framework.test import APIClient

    from webapp.api.throttling import FailedTokenThrottle

    cache.clear()
    monkeypatch.setattr(FailedTokenThrottle, "rate", "3/minute")
    guesser = APIClient(REMOTE_ADDR="203.0.113.7")
    guesser.credentials(HTTP_AUTHORIZATION="Token " + "0" * 40)
    right_token_same_address = token_client(viewer)
    right_token_same_address.defaults["REMOTE_ADDR"] = "203.0.113.7"
    elsewhere = token_client(viewer)

    codes = [guesser.get("/api/v1/projects").status_code for _ in range(3)]
    with django_assert_max_num_queries(0):  # refused before the token lookup
        refused = guesser.get("/api/v1/projects")
    also_refused = right_token_same_address.get("/api/v1/projects")

    assert codes == [401, 401, 401]
    assert refused.status_code == 429 and also_refused.status_code == 429
    assert refused.json()["code"] == "throttled"
    assert "Too many wrong API tokens" in refused.json()["detail"]
    assert 0 < int(refused["Retry-After"]) <= 60
    assert elsewhere.get("/api/v1/projects").status_code == 200
    cache.clear()


def test_a_right_token_does_not_count_as_a_failure(served_project, viewer, monkeypatch):
    from django.core.cache import cache

    from webapp.api.throttling import FailedTokenThrottle

    cache.clear()
    monkeypatch.setattr(FailedTokenThrottle, "rate", "2/minute")
    client = token_client(viewer)

    assert [client.get("/api/v1/projects").status_code for _ in range(4)] == [200] * 4


def test_it_switches_to_a_newly_activated_version_on_the_next_request(
    served_project, viewer_api, manager_api
):
    before = viewer_api.post(URL, upload(jpeg())).json()
    activated = manager_api.post("/api/v1/projects/flowers/versions/2/activate")
    after = viewer_api.post(URL, upload(jpeg())).json()

    assert activated.status_code == 200
    assert before["version"] == 1
    assert after["version"] == 2
    assert {p["label"] for p in after["predictions"]} == set(SERVED_LABELS[2])


def test_it_answers_503_when_the_active_version_is_damaged(
    served_project, viewer_api, data_dir, tiny_version_dirs
):
    import shutil

    link = data_dir / "models" / "flowers" / "v1"
    link.unlink()
    shutil.copytree(tiny_version_dirs[1], link)
    (link / "labels.json").write_text('["x", "y", "z"]')

    response = viewer_api.post(URL, upload(jpeg()))

    assert response.status_code == 503
    assert response.json()["code"] == "version_unavailable"
    assert "checksum" in response.json()["detail"]


def test_it_documents_the_upload_the_answer_and_every_error(served_project, viewer_api):
    schema = Client().get("/api/v1/schema", HTTP_ACCEPT="application/vnd.oai.openapi+json").json()
    operation = schema["paths"]["/api/v1/projects/{slug}/classify"]["post"]
    request = operation["requestBody"]["content"]["multipart/form-data"]["schema"]
    name = request["$ref"].rsplit("/", 1)[-1]

    image = schema["components"]["schemas"][name]["properties"]["image"]
    assert (image["type"], image["format"]) == ("string", "binary")  # a file picker
    assert {"400", "401", "404", "409", "413", "415", "429", "503"} <= set(operation["responses"])
    answer = viewer_api.post(URL, upload(jpeg()), format="multipart").json()
    documented(
        schema, operation["responses"]["200"]["content"]["application/json"]["schema"], answer
    )
