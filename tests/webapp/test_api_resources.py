"""The API's read endpoints, starting jobs and activating versions: shape, 401/403/404/503."""

from __future__ import annotations

import pytest
from django.test import Client

from tests.factories import make_dataset, make_job, role_group
from webapp import services
from webapp.models import EpochRecord, ModelVersion, TrainingJob


def test_it_lists_projects_with_their_active_version(served_project, viewer_api):
    response = viewer_api.get("/api/v1/projects")

    assert response.status_code == 200
    assert response.json()["count"] == 1
    assert response.json()["results"][0]["slug"] == "flowers"
    assert response.json()["results"][0]["active_version"] == 1


def test_it_pages_lists_and_caps_the_page_size(viewer_api, db):
    from webapp.api.pagination import MAX_LIMIT
    from webapp.models import Project

    Project.objects.bulk_create(Project(name=f"P{i}", slug=f"p{i}") for i in range(MAX_LIMIT + 1))

    default = viewer_api.get("/api/v1/projects").json()
    greedy = viewer_api.get("/api/v1/projects?limit=1000000").json()

    assert (default["count"], len(default["results"])) == (MAX_LIMIT + 1, 50)
    assert (greedy["count"], len(greedy["results"])) == (MAX_LIMIT + 1, MAX_LIMIT)
    assert f"offset={MAX_LIMIT}" in greedy["next"]


def test_it_refuses_lists_without_authentication(served_project):
    assert Client().get("/api/v1/projects").status_code == 401


def test_it_shows_one_project(served_project, viewer_api):
    assert viewer_api.get("/api/v1/projects/flowers").json()["name"] == "Flowers"
    assert viewer_api.get("/api/v1/projects/nope").status_code == 404


def test_it_lists_a_projects_datasets(served_project, viewer_api):
    make_dataset(served_project, "photos", class_counts={"a": 3, "b": 4})

    response = viewer_api.get("/api/v1/projects/flowers/datasets")

    assert [d["name"] for d in response.json()["results"]] == ["photos"]
    assert response.json()["results"][0]["class_counts"] == {"a": 3, "b": 4}


def test_it_lists_jobs_with_their_epoch_history(served_project, viewer_api):
    job = make_job(served_project, make_dataset(served_project), status="running", epochs_total=2)
    EpochRecord.objects.create(job=job, epoch=2, loss=0.5, accuracy=0.8)
    EpochRecord.objects.create(job=job, epoch=1, loss=0.9, accuracy=0.6)

    listed = viewer_api.get("/api/v1/projects/flowers/jobs").json()["results"]
    detail = viewer_api.get(f"/api/v1/jobs/{job.pk}").json()

    assert [j["id"] for j in listed] == [job.pk]
    assert [e["epoch"] for e in detail["history"]] == [1, 2]
    assert detail["history"][1]["accuracy"] == 0.8
    assert detail["status"] == "running"
    assert listed[0]["cancelled_by"] is None and detail["cancelled_by"] is None
    assert viewer_api.get("/api/v1/jobs/999999").status_code == 404


def test_it_shows_who_cancelled_a_job(served_project, viewer_api, trainer):
    job = make_job(served_project, make_dataset(served_project), status="running")
    services.training_job_cancel(job=job, user=trainer)

    listed = viewer_api.get("/api/v1/projects/flowers/jobs").json()["results"]
    detail = viewer_api.get(f"/api/v1/jobs/{job.pk}").json()

    assert listed[0]["cancelled_by"] == detail["cancelled_by"] == "trent"


def test_a_trainer_cancels_a_queued_job_at_once(served_project, trainer_api):
    job = make_job(served_project, make_dataset(served_project), status="queued")

    response = trainer_api.post(f"/api/v1/jobs/{job.pk}/cancel")

    assert response.status_code == 200
    assert response.json()["status"] == "cancelled"
    assert response.json()["cancelled_by"] == "trent"


def test_a_running_job_is_asked_to_stop(served_project, trainer_api):
    job = make_job(served_project, make_dataset(served_project), status="running")

    response = trainer_api.post(f"/api/v1/jobs/{job.pk}/cancel")

    assert response.status_code == 200
    assert response.json()["status"] == "running"
    assert response.json()["cancel_requested"] is True
    job.refresh_from_db()
    assert job.cancel_requested and job.cancelled_by.username == "trent"


@pytest.mark.parametrize("outcome", ["succeeded", "failed", "cancelled"])
def test_cancelling_a_finished_job_is_a_conflict(served_project, trainer_api, outcome):
    job = make_job(served_project, make_dataset(served_project), status=outcome)

    response = trainer_api.post(f"/api/v1/jobs/{job.pk}/cancel")

    assert response.status_code == 409
    assert response.json()["code"] == "wrong_status"
    assert f"already {outcome}" in response.json()["detail"]
    job.refresh_from_db()
    assert job.status == outcome and job.cancelled_by is None


def test_cancelling_a_job_needs_the_train_permission(served_project, viewer_api):
    job = make_job(served_project, make_dataset(served_project), status="queued")

    assert viewer_api.post(f"/api/v1/jobs/{job.pk}/cancel").status_code == 403
    assert Client().post(f"/api/v1/jobs/{job.pk}/cancel").status_code == 401
    job.refresh_from_db()
    assert job.status == "queued"


def test_cancelling_an_unknown_job_is_404(served_project, trainer_api):
    assert trainer_api.post("/api/v1/jobs/999999/cancel").status_code == 404


def test_it_lists_versions_newest_first(served_project, viewer_api):
    response = viewer_api.get("/api/v1/projects/flowers/versions")

    versions = response.json()["results"]
    assert [(v["number"], v["is_active"]) for v in versions] == [(2, False), (1, True)]
    assert [v["int8"] for v in versions] == [{}, {}]  # no int8 record yet
    assert viewer_api.get("/api/v1/projects/flowers/versions/2").json()["class_names"] == [
        "ant",
        "bee",
        "cow",
    ]
    assert viewer_api.get("/api/v1/projects/flowers/versions/9").status_code == 404


def test_it_activates_a_version_for_a_version_manager(served_project, manager_api):
    response = manager_api.post("/api/v1/projects/flowers/versions/2/activate")

    assert response.status_code == 200
    assert response.json()["is_active"] is True
    assert served_project.active_version.number == 2


def test_it_refuses_activation_without_the_permission(served_project, viewer_api):
    response = viewer_api.post("/api/v1/projects/flowers/versions/2/activate")

    assert response.status_code == 403
    assert response.json()["code"] == "permission_denied"
    assert served_project.active_version.number == 1


def test_it_answers_400_when_the_version_files_are_missing(served_project, manager_api):
    ModelVersion.objects.create(
        project=served_project, number=3, directory="models/flowers/v3", image_size=32
    )

    response = manager_api.post("/api/v1/projects/flowers/versions/3/activate")

    assert response.status_code == 400
    assert response.json()["code"] == "invalid"
    assert "v3 cannot be activated" in response.json()["detail"]
    assert served_project.active_version.number == 1


def test_it_rolls_back_to_the_previous_version(served_project, manager_api):
    manager_api.post("/api/v1/projects/flowers/versions/2/activate")

    response = manager_api.post("/api/v1/projects/flowers/rollback")

    assert response.status_code == 200
    assert response.json()["number"] == 1
    assert ModelVersion.objects.get(is_active=True).number == 1


def test_it_answers_400_when_there_is_nothing_to_roll_back_to(served_project, manager_api):
    response = manager_api.post("/api/v1/projects/flowers/rollback")

    assert response.status_code == 400
    assert response.json()["code"] == "invalid"


def test_it_refuses_to_start_a_job_without_the_permission(served_project, viewer_api):
    dataset = make_dataset(served_project)

    response = viewer_api.post(
        "/api/v1/projects/flowers/jobs", {"dataset": dataset.pk}, format="json"
    )

    assert response.status_code == 403
    assert not TrainingJob.objects.exists()


def test_it_answers_400_for_an_invalid_training_config(served_project, trainer_api):
    dataset = make_dataset(served_project)

    response = trainer_api.post(
        "/api/v1/projects/flowers/jobs",
        {"dataset": dataset.pk, "config": {"epochs": 0}},
        format="json",
    )

    assert response.status_code == 400
    assert "epochs" in response.json()["detail"]


def test_it_leaves_activating_on_success_to_version_managers(served_project, trainer_api):
    dataset = make_dataset(served_project)

    response = trainer_api.post(
        "/api/v1/projects/flowers/jobs",
        {"dataset": dataset.pk, "activate_on_success": True},
        format="json",
    )

    assert response.status_code == 403
    assert "manage" in response.json()["detail"]
    assert not TrainingJob.objects.exists()


@pytest.mark.parametrize("weights", ["/etc/passwd", "~/.keras/models/other.h5", "../x.h5"])
def test_it_refuses_a_weights_file_path(served_project, trainer_api, weights):
    """Only the form's choices: a path would make the worker open any file on its machine
    (and say in the job's error whether it exists); paths are for the command line."""
    dataset = make_dataset(served_project)

    response = trainer_api.post(
        "/api/v1/projects/flowers/jobs",
        {"dataset": dataset.pk, "config": {"weights": weights}},
        format="json",
    )

    assert response.status_code == 400
    assert "weights" in response.json()["errors"]["config"][0]
    assert not TrainingJob.objects.exists()


def test_it_answers_400_for_a_dataset_of_another_project(served_project, trainer_api):
    from tests.factories import make_project

    other = make_dataset(make_project("Birds"))

    response = trainer_api.post(
        "/api/v1/projects/flowers/jobs", {"dataset": other.pk}, format="json"
    )

    assert response.status_code == 400
    assert "dataset" in response.json()["errors"]


@pytest.mark.slow
def test_it_answers_503_when_no_worker_is_running(served_project, trainer_api, broker):
    dataset = make_dataset(served_project)

    response = trainer_api.post(
        "/api/v1/projects/flowers/jobs", {"dataset": dataset.pk}, format="json"
    )

    assert response.status_code == 503
    assert response.json()["code"] == "queue_unavailable"
    assert "worker" in response.json()["detail"]
    assert not TrainingJob.objects.exists()


@pytest.mark.slow
def test_it_starts_a_job_when_a_worker_answers(served_project, trainer, trainer_api, start_worker):
    trainer.groups.add(role_group("Version managers"))  # to activate on success
    start_worker(queues="default")
    dataset = make_dataset(served_project)

    response = trainer_api.post(
        "/api/v1/projects/flowers/jobs",
        {"dataset": dataset.pk, "config": {"epochs": 2}, "activate_on_success": True},
        format="json",
    )

    assert response.status_code == 201
    job = TrainingJob.objects.get()
    assert response.json()["id"] == job.pk
    assert response.json()["status"] == "queued"
    assert job.config["epochs"] == 2 and job.activate_on_success


def test_it_serves_the_openapi_schema(client, db):
    response = client.get("/api/v1/schema", HTTP_ACCEPT="application/vnd.oai.openapi+json")

    assert response.status_code == 200
    paths = response.json()["paths"]
    assert "/api/v1/projects/{slug}/classify" in paths
    assert "/api/v1/projects/{slug}/batches" in paths
    cancelled_by = response.json()["components"]["schemas"]["Job"]["properties"]["cancelled_by"]
    assert (cancelled_by["type"], cancelled_by["readOnly"], cancelled_by["nullable"]) == (
        "string",
        True,
        True,
    )


def test_it_documents_that_activating_a_damaged_version_answers_400(client, db):
    """model_version_activate refuses a version whose files are missing or changed with a
    ValidationError, which the API answers as 400."""
    response = client.get("/api/v1/schema", HTTP_ACCEPT="application/vnd.oai.openapi+json")

    operation = response.json()["paths"]["/api/v1/projects/{slug}/versions/{number}/activate"]
    assert "400" in operation["post"]["responses"]


def test_it_serves_the_api_docs_page_with_local_assets(client, db):
    response = client.get("/api/v1/docs")

    assert response.status_code == 200
    assert b"swagger-ui" in response.content
    assert b"cdn" not in response.content.lower()
