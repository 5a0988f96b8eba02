"""Batch classification: upload (zip or files) -> background job -> CSV/JSON results."""

from __future__ import annotations

import csv
import io
import json
import time
import zipfile

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from PIL import Image

from tests.webapp.conftest import SERVED_LABELS, documented
from webapp import services
from webapp.models import BatchClassification, Prediction

URL = "/api/v1/projects/flowers/batches"

pytestmark = pytest.mark.usefixtures("broker")


def jpeg(colour=(200, 40, 40)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (64, 48), colour).save(buffer, "JPEG")
    return buffer.getvalue()


def photos_zip() -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("red/one.jpg", jpeg())
        archive.writestr("blue/two.jpg", jpeg((20, 20, 200)))
        archive.writestr("broken.png", b"not a png")
        archive.writestr("__MACOSX/._one.jpg", b"junk")
        archive.writestr("notes.txt", b"ignored")
    return buffer.getvalue()


def test_it_accepts_a_zip_and_reports_progress(served_project, viewer_api):
    response = viewer_api.post(URL, {"files": SimpleUploadedFile("p.zip", photos_zip())})

    assert response.status_code == 202
    body = response.json()
    assert body["status"] == "queued" and body["total"] == 3 and body["done"] == 0
    assert body["version"] == 1
    assert response["Location"].endswith(f"/api/v1/batches/{body['id']}")
    assert viewer_api.get(f"/api/v1/batches/{body['id']}").json()["percent"] == 0
    assert body["cancelled_by"] is None


def test_it_writes_csv_and_json_results_with_an_error_per_bad_file(served_project, viewer_api):
    batch_id = viewer_api.post(URL, {"files": SimpleUploadedFile("p.zip", photos_zip())}).json()[
        "id"
    ]

    services.batch_run(batch_id=batch_id)

    status = viewer_api.get(f"/api/v1/batches/{batch_id}").json()
    assert (status["status"], status["done"], status["failed"], status["percent"]) == (
        "succeeded",
        3,
        1,
        100,
    )
    rows = list(csv.DictReader(io.StringIO(_download(viewer_api, batch_id, "csv"))))
    assert [r["file"] for r in rows] == ["red/one.jpg", "blue/two.jpg", "broken.png"]
    assert rows[0]["label"] in SERVED_LABELS[1] and not rows[0]["error"]
    assert rows[2]["label"] == "" and "not an image" in rows[2]["error"]
    results = json.loads(_download(viewer_api, batch_id, "json"))
    assert results["version"] == 1
    assert [r["error"] is None for r in results["results"]] == [True, True, False]
    assert Prediction.objects.filter(source=Prediction.Source.BATCH).count() == 2


def test_it_keeps_file_names_that_look_like_formulas_as_text_in_the_csv(served_project, viewer_api):
    names = ['=HYPERLINK("http://evil")', "+1.jpg", "-2.jpg", "@SUM(A1).jpg", "'quoted.jpg"]
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name in names[:-1]:
            archive.writestr(f"{name}.png", b"not a png")
        archive.writestr(names[-1], jpeg())
    upload = SimpleUploadedFile("p.zip", buffer.getvalue())
    batch_id = viewer_api.post(URL, {"files": upload}).json()["id"]
    services.batch_run(batch_id=batch_id)

    rows = list(csv.DictReader(io.StringIO(_download(viewer_api, batch_id, "csv"))))
    assert [r["file"] for r in rows] == [
        '\'=HYPERLINK("http://evil").png',
        "'+1.jpg.png",
        "'-2.jpg.png",
        "'@SUM(A1).jpg.png",
        "''quoted.jpg",
    ]
    results = json.loads(_download(viewer_api, batch_id, "json"))["results"]
    assert results[0]["file"] == '=HYPERLINK("http://evil").png'


def test_it_serves_the_csv_as_utf8_whatever_the_file_names(served_project, viewer_api):
    upload = SimpleUploadedFile("Pâquerette über 雏菊.jpg", jpeg())
    batch_id = viewer_api.post(URL, {"files": upload}).json()["id"]
    services.batch_run(batch_id=batch_id)

    response = viewer_api.get(f"/api/v1/batches/{batch_id}/results.csv")

    assert response["Content-Type"] == "text/csv; charset=utf-8"
    body = b"".join(response.streaming_content).decode("utf-8")
    assert next(csv.DictReader(io.StringIO(body)))["file"] == "Pâquerette über 雏菊.jpg"


def test_it_accepts_several_photos(served_project, viewer_api):
    files = [SimpleUploadedFile(f"p{i}.jpg", jpeg()) for i in range(3)]

    batch_id = viewer_api.post(URL, {"files": files}).json()["id"]
    services.batch_run(batch_id=batch_id)

    rows = json.loads(_download(viewer_api, batch_id, "json"))["results"]
    assert [r["file"] for r in rows] == ["p0.jpg", "p1.jpg", "p2.jpg"]


def test_it_answers_409_for_results_before_the_batch_finished(served_project, viewer_api):
    batch_id = viewer_api.post(URL, {"files": SimpleUploadedFile("a.jpg", jpeg())}).json()["id"]

    response = viewer_api.get(f"/api/v1/batches/{batch_id}/results.csv")

    assert response.status_code == 409
    assert response.json()["code"] == "not_ready"


def test_it_refuses_a_zip_without_photos(served_project, viewer_api):
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("readme.txt", "hi")

    response = viewer_api.post(URL, {"files": SimpleUploadedFile("p.zip", buffer.getvalue())})

    assert response.status_code == 400
    assert "no photos" in response.json()["detail"]
    assert not BatchClassification.objects.exists()


def test_it_refuses_a_request_without_files(served_project, viewer_api):
    assert viewer_api.post(URL, {}).status_code == 400


def test_it_answers_413_for_a_photo_over_the_limit(served_project, viewer_api, settings):
    settings.GRAFT_MAX_IMAGE_MB = 1
    big = SimpleUploadedFile("big.jpg", jpeg() + b"\0" * 2**21)

    response = viewer_api.post(URL, {"files": [big, SimpleUploadedFile("a.jpg", jpeg())]})

    assert response.status_code == 413


def test_it_answers_409_without_an_active_version(served_project, viewer_api):
    served_project.versions.update(is_active=False)

    response = viewer_api.post(URL, {"files": SimpleUploadedFile("a.jpg", jpeg())})

    assert response.status_code == 409


def test_it_hides_other_batches_behind_404(viewer_api, db):
    assert viewer_api.get("/api/v1/batches/12345").status_code == 404


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_it_classifies_a_batch_on_a_real_worker(served_project, viewer_api, start_worker):
    start_worker(queues="default")

    batch_id = viewer_api.post(URL, {"files": SimpleUploadedFile("p.zip", photos_zip())}).json()[
        "id"
    ]

    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        status = viewer_api.get(f"/api/v1/batches/{batch_id}").json()
        if status["status"] in ("succeeded", "failed"):
            break
        time.sleep(0.1)  # polling the condition, not guessing a duration
    assert status["status"] == "succeeded", status
    assert status["results_csv"].endswith(f"/api/v1/batches/{batch_id}/results.csv")
    assert "red/one.jpg" in _download(viewer_api, batch_id, "csv")


# --- Cancelling and deleting -----------------------------------------------------------------


def _upload(client) -> int:
    return client.post(URL, {"files": SimpleUploadedFile("a.jpg", jpeg())}).json()["id"]


def test_it_cancels_a_queued_batch(served_project, viewer_api):
    batch_id = _upload(viewer_api)

    response = viewer_api.post(f"/api/v1/batches/{batch_id}/cancel")

    assert response.status_code == 200
    body = response.json()
    assert (body["status"], body["cancel_requested"]) == ("cancelled", True)
    assert body["error"] == "Cancelled before it started."
    assert body["cancelled_by"] == "victor"
    assert body["results_csv"] is None
    results = viewer_api.get(f"/api/v1/batches/{batch_id}/results.csv")
    assert results.status_code == 409
    assert "cancelled before it classified any photo" in results.json()["detail"]


def test_it_asks_a_running_batch_to_stop(served_project, viewer_api):
    batch_id = _upload(viewer_api)
    services.batch_claim(batch_id=batch_id)

    body = viewer_api.post(f"/api/v1/batches/{batch_id}/cancel").json()

    assert (body["status"], body["cancel_requested"], body["cancelled_by"]) == (
        "running",
        True,
        "victor",
    )


def test_it_answers_409_to_cancelling_a_finished_batch(served_project, viewer_api):
    batch_id = _upload(viewer_api)
    services.batch_run(batch_id=batch_id)

    response = viewer_api.post(f"/api/v1/batches/{batch_id}/cancel")

    assert response.status_code == 409
    assert response.json() == {
        "detail": f"Batch #{batch_id} has already succeeded; there is nothing to cancel.",
        "code": "wrong_status",
    }


def test_it_deletes_a_finished_batch_and_keeps_its_predictions(
    served_project, viewer_api, django_capture_on_commit_callbacks
):
    batch_id = _upload(viewer_api)
    batch = services.batch_run(batch_id=batch_id)

    with django_capture_on_commit_callbacks(execute=True):
        response = viewer_api.delete(f"/api/v1/batches/{batch_id}")

    assert response.status_code == 204
    assert viewer_api.get(f"/api/v1/batches/{batch_id}").status_code == 404
    assert not batch.path.exists()
    assert Prediction.objects.filter(batch__isnull=True).count() == 1


def test_it_answers_409_to_deleting_a_batch_that_has_not_finished(served_project, viewer_api):
    batch_id = _upload(viewer_api)

    response = viewer_api.delete(f"/api/v1/batches/{batch_id}")

    assert response.status_code == 409
    assert response.json()["code"] == "wrong_status"
    assert "is queued; cancel it first" in response.json()["detail"]
    assert BatchClassification.objects.filter(pk=batch_id).exists()


def test_it_lets_a_trainer_cancel_and_delete_someone_elses_batch(
    served_project, viewer_api, trainer_api
):
    batch_id = _upload(viewer_api)

    cancel = trainer_api.post(f"/api/v1/batches/{batch_id}/cancel")
    assert (cancel.status_code, cancel.json()["cancelled_by"]) == (200, "trent")
    assert trainer_api.delete(f"/api/v1/batches/{batch_id}").status_code == 204


def test_it_answers_403_to_another_user_without_the_permission(
    served_project, viewer_api, outsider_api
):
    batch_id = _upload(viewer_api)

    cancel = outsider_api.post(f"/api/v1/batches/{batch_id}/cancel")
    BatchClassification.objects.filter(pk=batch_id).update(status="failed")
    delete = outsider_api.delete(f"/api/v1/batches/{batch_id}")

    for response in (cancel, delete):
        assert response.status_code == 403
        assert response.json()["code"] == "permission_denied"
        assert "Only the person who started batch" in response.json()["detail"]
    assert BatchClassification.objects.get(pk=batch_id).cancel_requested is False


def test_it_answers_404_and_405_around_the_batch_actions(served_project, viewer_api, client):
    batch_id = _upload(viewer_api)

    assert viewer_api.post("/api/v1/batches/12345/cancel").status_code == 404
    assert viewer_api.delete("/api/v1/batches/12345").status_code == 404
    assert viewer_api.get(f"/api/v1/batches/{batch_id}/cancel").status_code == 405
    assert client.post(f"/api/v1/batches/{batch_id}/cancel").status_code == 401
    assert client.delete(f"/api/v1/batches/{batch_id}").status_code == 401


def test_it_documents_the_batch_actions_in_the_schema(client, db):
    response = client.get("/api/v1/schema", HTTP_ACCEPT="application/vnd.oai.openapi+json")

    paths = response.json()["paths"]
    cancel = paths["/api/v1/batches/{id}/cancel"]["post"]
    delete = paths["/api/v1/batches/{id}"]["delete"]
    assert {"200", "403", "404", "409"} <= set(cancel["responses"])
    assert {"204", "403", "404", "409"} <= set(delete["responses"])
    cancelled_by = response.json()["components"]["schemas"]["Batch"]["properties"]["cancelled_by"]
    assert (cancelled_by["type"], cancelled_by["readOnly"], cancelled_by["nullable"]) == (
        "string",
        True,
        True,
    )


def test_it_documents_both_results_formats(served_project, viewer_api, client):
    batch_id = viewer_api.post(URL, {"files": SimpleUploadedFile("p.zip", photos_zip())}).json()[
        "id"
    ]
    services.batch_run(batch_id=batch_id)
    schema = client.get("/api/v1/schema", HTTP_ACCEPT="application/vnd.oai.openapi+json").json()

    operation = schema["paths"]["/api/v1/batches/{id}/results.{fmt}"]["get"]
    fmt = next(p for p in operation["parameters"] if p["name"] == "fmt")
    assert fmt["schema"]["enum"] == ["csv", "json"]
    content = operation["responses"]["200"]["content"]
    assert content["text/csv"]["schema"]["format"] == "binary"
    results = json.loads(_download(viewer_api, batch_id, "json"))
    documented(schema, content["application/json"]["schema"], results)


def _download(client, batch_id: int, fmt: str) -> str:
    response = client.get(f"/api/v1/batches/{batch_id}/results.{fmt}")
    assert response.status_code == 200
    return b"".join(response.streaming_content).decode()
