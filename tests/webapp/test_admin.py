from __future__ import annotations

import pytest
from django.contrib.messages import get_messages
from django.core.files.base import ContentFile
from django.core.files.storage import default_storage
from django.urls import reverse

from tests.factories import make_dataset, make_job, make_project, make_version
from tests.images import jpeg_bytes
from webapp.models import (
    ActivationEvent,
    BatchClassification,
    Dataset,
    ModelVersion,
    Prediction,
    Project,
    TrainingJob,
)
from webapp.services import model_version_activate

MODELS = [
    "project",
    "dataset",
    "trainingjob",
    "modelversion",
    "activationevent",
    "prediction",
    "batchclassification",
]


@pytest.fixture
def rows(db, data_dir):
    project = make_project()
    dataset = make_dataset(project)
    job = make_job(project, dataset)
    version = make_version(project, 1, job=job, dataset=dataset, with_files=True)
    batch = BatchClassification.objects.create(
        project=project, version=version, version_number=1, status="succeeded", total=2, done=2
    )
    batch.directory = f"batches/{batch.pk}"
    batch.save(update_fields=["directory"])
    batch.path.mkdir(parents=True)
    (batch.path / "results.csv").write_text("file,label,confidence,top,error\n")
    return {
        "project": project,
        "dataset": dataset,
        "trainingjob": job,
        "modelversion": version,
        "batchclassification": batch,
    }


@pytest.mark.parametrize("model", MODELS)
def test_it_lists_every_model_for_staff(admin_client, rows, model):
    response = admin_client.get(reverse(f"admin:webapp_{model}_changelist"), {"q": "flow"})
    assert response.status_code == 200


@pytest.mark.parametrize(
    "model", ["project", "dataset", "trainingjob", "modelversion", "batchclassification"]
)
def test_it_opens_the_change_page(admin_client, rows, model):
    url = reverse(f"admin:webapp_{model}_change", args=[rows[model].pk])
    assert admin_client.get(url).status_code == 200


def test_it_keeps_non_staff_out(viewer_client):
    response = viewer_client.get(reverse("admin:index"))
    assert response.status_code == 302
    assert "/admin/login/" in response["Location"]


def test_it_activates_a_version_from_the_admin_action(admin_client, rows):
    url = reverse("admin:webapp_modelversion_changelist")
    response = admin_client.post(
        url,
        {"action": "activate_selected", "_selected_action": [rows["modelversion"].pk]},
    )
    assert response.status_code == 302
    assert ModelVersion.objects.get(pk=rows["modelversion"].pk).is_active
    assert ActivationEvent.objects.filter(version=rows["modelversion"]).exists()


def test_it_lists_batches_with_their_counts_and_filters(admin_client, rows):
    response = admin_client.get(
        reverse("admin:webapp_batchclassification_changelist"), {"status__exact": "succeeded"}
    )

    content = response.content.decode()
    assert response.status_code == 200
    assert 'class="field-status">Succeeded' in content
    assert 'class="field-total">2' in content
    assert "By status" in content and "Cancelled" in content


def test_it_keeps_what_the_worker_writes_read_only(admin_client, rows):
    batch = rows["batchclassification"]
    url = reverse("admin:webapp_batchclassification_change", args=[batch.pk])

    response = admin_client.post(url, {"status": "queued", "done": 0, "max_attempts": 5})

    assert response.status_code == 302
    batch.refresh_from_db()
    assert (batch.status, batch.done, batch.max_attempts) == ("succeeded", 2, 5)
    add = admin_client.get(reverse("admin:webapp_batchclassification_add"))
    assert add.status_code == 403


def test_it_deletes_a_finished_batch_with_its_folder(
    admin_client, rows, django_capture_on_commit_callbacks
):
    batch = rows["batchclassification"]
    url = reverse("admin:webapp_batchclassification_delete", args=[batch.pk])

    with django_capture_on_commit_callbacks(execute=True):
        response = admin_client.post(url, {"post": "yes"})

    assert response.status_code == 302
    assert not BatchClassification.objects.filter(pk=batch.pk).exists()
    assert not batch.path.exists()


def test_it_offers_no_delete_for_a_running_batch(admin_client, rows):
    batch = rows["batchclassification"]
    BatchClassification.objects.filter(pk=batch.pk).update(status="running")
    url = reverse("admin:webapp_batchclassification_delete", args=[batch.pk])

    assert admin_client.post(url, {"post": "yes"}).status_code == 403
    assert BatchClassification.objects.filter(pk=batch.pk).exists()
    assert batch.path.exists()


@pytest.fixture
def sent_quantize(monkeypatch) -> list[list]:
    """Arguments of the quantize messages sent (instead of sending them; no broker)."""
    from webapp import services
    from worker import tasks

    sent: list[list] = []
    monkeypatch.setattr(services, "_check_broker", lambda: None)
    monkeypatch.setattr(
        tasks.quantize_version,
        "apply_async",
        lambda args=None, queue=None, **options: sent.append([*args, queue]),
    )
    return sent


def test_it_quantizes_versions_from_the_admin_action(
    admin_client, rows, sent_quantize, django_capture_on_commit_callbacks
):
    version = rows["modelversion"]
    url = reverse("admin:webapp_modelversion_changelist")

    with django_capture_on_commit_callbacks(execute=True):
        response = admin_client.post(
            url, {"action": "quantize_selected", "_selected_action": [version.pk]}, follow=True
        )

    assert sent_quantize == [[version.pk, True, "default"]]  # forced, on the default queue
    assert "Quantizing flowers v1 to int8 in the background" in response.content.decode()


def test_it_says_when_the_queue_is_down_and_sends_nothing(
    admin_client, rows, sent_quantize, monkeypatch, django_capture_on_commit_callbacks
):
    from webapp import services

    def down() -> None:
        raise services.QueueUnavailable("The job queue is unavailable: refused.")

    monkeypatch.setattr(services, "_check_broker", down)
    url = reverse("admin:webapp_modelversion_changelist")

    with django_capture_on_commit_callbacks(execute=True):
        response = admin_client.post(
            url,
            {"action": "quantize_selected", "_selected_action": [rows["modelversion"].pk]},
            follow=True,
        )

    assert sent_quantize == []
    assert "The job queue is unavailable" in response.content.decode()


def test_it_offers_quantizing_only_to_version_managers(trainer, rows):
    from django.contrib.auth.models import Permission
    from django.test import Client

    trainer.is_staff = True
    trainer.save()
    trainer.user_permissions.add(Permission.objects.get(codename="view_modelversion"))
    client = Client()
    client.force_login(trainer)

    response = client.get(reverse("admin:webapp_modelversion_changelist"))

    assert response.status_code == 200
    assert "quantize_selected" not in response.content.decode()


def test_it_shows_the_int8_record_read_only(admin_client, rows):
    version = rows["modelversion"]
    ModelVersion.objects.filter(pk=version.pk).update(int8={"accepted": True, "agreement": 0.97})
    url = reverse("admin:webapp_modelversion_change", args=[version.pk])

    response = admin_client.post(url, {"notes": "checked", "int8": "{}"})
    page = admin_client.get(url).content.decode()

    assert response.status_code == 302
    version.refresh_from_db()
    assert version.int8 == {"accepted": True, "agreement": 0.97}
    assert version.notes == "checked"
    assert "agreement" in page and 'name="int8"' not in page


@pytest.mark.parametrize("model", ["trainingjob", "batchclassification"])
def test_it_shows_who_cancelled_read_only(admin_client, admin_user, rows, model):
    row = rows[model]
    type(row).objects.filter(pk=row.pk).update(
        status="running", cancel_requested=True, cancelled_by=admin_user
    )

    url = reverse(f"admin:webapp_{model}_change", args=[row.pk])
    page = admin_client.get(url).content.decode()

    field = page[page.index('class="form-row field-cancelled_by"') :]
    link = reverse("admin:auth_user_change", args=[admin_user.pk])
    assert f'<div class="readonly"><a href="{link}">alice</a></div>' in field
    assert 'name="cancelled_by"' not in page


def test_it_says_why_the_admin_action_cannot_activate_a_damaged_version(admin_client, rows):
    (rows["modelversion"].path / "model.tflite").unlink()

    response = admin_client.post(
        reverse("admin:webapp_modelversion_changelist"),
        {"action": "activate_selected", "_selected_action": [rows["modelversion"].pk]},
    )

    assert response.status_code == 302
    said = [str(message) for message in get_messages(response.wsgi_request)]
    assert len(said) == 1 and said[0].startswith("v1 cannot be activated")
    assert not ModelVersion.objects.get(pk=rows["modelversion"].pk).is_active


def test_it_deletes_an_inactive_version_with_its_files_and_audits_it(
    admin_client, admin_user, rows, django_capture_on_commit_callbacks
):
    version = rows["modelversion"]
    url = reverse("admin:webapp_modelversion_delete", args=[version.pk])

    with django_capture_on_commit_callbacks(execute=True):
        response = admin_client.post(url, {"post": "yes"})

    assert response.status_code == 302
    assert not ModelVersion.objects.filter(pk=version.pk).exists()
    assert not version.path.exists()
    event = ActivationEvent.objects.get()
    assert (event.action, event.version_number, event.user) == ("delete", 1, admin_user)


def test_it_offers_no_delete_for_the_active_version(admin_client, rows):
    version = rows["modelversion"]
    model_version_activate(version=version)
    url = reverse("admin:webapp_modelversion_delete", args=[version.pk])

    assert admin_client.post(url, {"post": "yes"}).status_code == 403
    assert ModelVersion.objects.get(pk=version.pk).is_active
    assert version.path.exists()


def test_it_offers_no_bulk_delete_of_versions(admin_client, rows):
    response = admin_client.get(reverse("admin:webapp_modelversion_changelist"))

    choices = [value for value, _ in response.context["action_form"].fields["action"].choices]
    assert "delete_selected" not in choices


def test_it_deletes_an_unused_dataset_with_its_folder(
    admin_client, rows, django_capture_on_commit_callbacks
):
    dataset = make_dataset(rows["project"], "unused")
    dataset.path.mkdir(parents=True)
    url = reverse("admin:webapp_dataset_delete", args=[dataset.pk])

    with django_capture_on_commit_callbacks(execute=True):
        response = admin_client.post(url, {"post": "yes"})

    assert response.status_code == 302
    assert not Dataset.objects.filter(pk=dataset.pk).exists()
    assert not dataset.path.exists()


def test_it_offers_no_delete_for_a_dataset_with_training_history(admin_client, rows):
    dataset = rows["dataset"]
    dataset.path.mkdir(parents=True)
    url = reverse("admin:webapp_dataset_delete", args=[dataset.pk])

    assert admin_client.post(url, {"post": "yes"}).status_code == 403
    assert Dataset.objects.filter(pk=dataset.pk).exists()
    assert dataset.path.is_dir()


def test_it_deletes_a_project_with_its_files(
    admin_client, rows, django_capture_on_commit_callbacks
):
    TrainingJob.objects.update(status="succeeded")
    model_version_activate(version=rows["modelversion"])  # goes with its project
    rows["dataset"].path.mkdir(parents=True)  # kept as training history, goes too
    url = reverse("admin:webapp_project_delete", args=[rows["project"].pk])

    with django_capture_on_commit_callbacks(execute=True):
        response = admin_client.post(url, {"post": "yes"})

    assert response.status_code == 302
    assert not Project.objects.exists()
    for path in (rows["dataset"].path, rows["modelversion"].path, rows["batchclassification"].path):
        assert not path.exists()


def test_it_offers_no_delete_for_a_project_at_work(admin_client, rows):
    url = reverse("admin:webapp_project_delete", args=[rows["project"].pk])  # its job is queued

    assert admin_client.post(url, {"post": "yes"}).status_code == 403
    assert Project.objects.exists()
    assert rows["modelversion"].path.is_dir()


@pytest.mark.parametrize("model", ["project", "dataset"])
def test_it_offers_no_bulk_delete_that_would_leave_files(admin_client, rows, model):
    response = admin_client.get(reverse(f"admin:webapp_{model}_changelist"))

    assert response.status_code == 200
    assert b'value="delete_selected"' not in response.content


def test_it_needs_the_permission_to_delete_what_goes_with_a_project(client, rows):
    from django.contrib.auth.models import Permission, User

    staff = User.objects.create_user("sam", is_staff=True)
    staff.user_permissions.set(
        Permission.objects.filter(codename__in=["view_project", "delete_project"])
    )
    client.force_login(staff)
    TrainingJob.objects.update(status="succeeded")
    url = reverse("admin:webapp_project_delete", args=[rows["project"].pk])

    assert client.post(url, {"post": "yes"}).status_code == 403
    assert Project.objects.exists()


def _kept_prediction(project) -> Prediction:
    prediction = Prediction(
        project=project,
        version_number=1,
        image_sha256="0" * 64,
        label="a",
        confidence=1.0,
        latency_ms=1.0,
    )
    prediction.image.save("kept.jpg", ContentFile(jpeg_bytes()), save=True)
    return prediction


def test_it_deletes_a_prediction_with_its_kept_photo(
    admin_client, rows, django_capture_on_commit_callbacks
):
    prediction = _kept_prediction(rows["project"])
    url = reverse("admin:webapp_prediction_delete", args=[prediction.pk])

    with django_capture_on_commit_callbacks(execute=True):
        response = admin_client.post(url, {"post": "yes"})

    assert response.status_code == 302
    assert not Prediction.objects.exists()
    assert not default_storage.exists(prediction.image.name)


def test_it_deletes_selected_predictions_with_their_kept_photos(
    admin_client, rows, django_capture_on_commit_callbacks
):
    predictions = [_kept_prediction(rows["project"]) for _ in range(2)]
    url = reverse("admin:webapp_prediction_changelist")
    chosen = {"action": "delete_selected", "_selected_action": [p.pk for p in predictions]}

    with django_capture_on_commit_callbacks(execute=True):
        response = admin_client.post(url, {**chosen, "post": "yes"})

    assert response.status_code == 302
    assert not Prediction.objects.exists()
    assert not any(default_storage.exists(p.image.name) for p in predictions)


def test_it_keeps_a_projects_slug_once_set(admin_client, rows):
    project = rows["project"]
    url = reverse("admin:webapp_project_change", args=[project.pk])

    page = admin_client.get(url).content.decode()
    admin_client.post(url, {"name": project.name, "slug": "renamed", "description": ""})

    assert 'name="slug"' not in page  # shown, not editable: it names folders and URLs
    project.refresh_from_db()
    assert project.slug != "renamed"
    assert admin_client.get(reverse("admin:webapp_project_add")).status_code == 200


@pytest.mark.parametrize("model", ["modelversion", "prediction"])
def test_it_offers_no_add_page_for_rows_only_the_app_creates(admin_client, rows, model):
    """A version comes from a training job and a prediction from a classified photo; the
    add form made every field but notes read-only, so its Save was a 500 (IntegrityError)."""
    changelist = admin_client.get(reverse(f"admin:webapp_{model}_changelist"))
    assert reverse(f"admin:webapp_{model}_add") not in changelist.content.decode()
    response = admin_client.post(reverse(f"admin:webapp_{model}_add"), {"notes": ""})
    assert response.status_code == 403


def test_it_keeps_a_datasets_source_and_status_read_only(admin_client, rows):
    """An import's status and source are set by the services: a dataset put back to
    importing from another server folder would have the reconcile copy that folder in,
    outside GRAFT_IMPORT_ROOTS."""
    dataset = rows["dataset"]
    before = (dataset.status, dataset.source, dataset.source_detail)
    url = reverse("admin:webapp_dataset_change", args=[dataset.pk])

    response = admin_client.post(
        url,
        {
            "project": dataset.project.pk,
            "name": "renamed",
            "source": "directory",
            "source_detail": "/etc",
            "status": "importing",
            "error": "",
            "attempts": 0,
            "max_attempts": 3,
            "celery_task_id": "",
        },
    )

    assert response.status_code == 302
    dataset.refresh_from_db()
    assert dataset.name == "renamed"
    assert (dataset.status, dataset.source, dataset.source_detail) == before


def test_it_keeps_a_jobs_request_read_only(admin_client, rows):
    """A job's config and dataset are checked when it is created (a weights file path is
    refused there); a queued job edited here would train on what nobody checked."""
    job = rows["trainingjob"]
    before = (job.config, job.dataset_id, job.project_id)
    url = reverse("admin:webapp_trainingjob_change", args=[job.pk])

    response = admin_client.post(
        url,
        {
            "project": make_project("Birds").pk,
            "dataset": make_dataset(job.project, "other").pk,
            "config": '{"weights": "/etc/passwd"}',
            "max_attempts": 3,
            "error": "",
            "epochs-TOTAL_FORMS": 0,
            "epochs-INITIAL_FORMS": 0,
        },
    )

    assert response.status_code == 302
    job.refresh_from_db()
    assert (job.config, job.dataset_id, job.project_id) == before
    assert admin_client.get(reverse("admin:webapp_trainingjob_add")).status_code == 403
