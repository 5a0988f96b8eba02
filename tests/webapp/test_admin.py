from __future__ import annotations

import pytest
from django.urls import reverse

from tests.factories import make_dataset, make_job, make_project, make_version
from webapp.models import ActivationEvent, ModelVersion

MODELS = ["project", "dataset", "trainingjob", "modelversion", "activationevent", "prediction"]


@pytest.fixture
def rows(db):
    project = make_project()
    dataset = make_dataset(project)
    job = make_job(project, dataset)
    version = make_version(project, 1, job=job, dataset=dataset)
    return {"project": project, "dataset": dataset, "trainingjob": job, "modelversion": version}


@pytest.mark.parametrize("model", MODELS)
def test_it_lists_every_model_for_staff(admin_client, rows, model):
    response = admin_client.get(reverse(f"admin:webapp_{model}_changelist"), {"q": "flow"})
    assert response.status_code == 200


@pytest.mark.parametrize("model", ["project", "dataset", "trainingjob", "modelversion"])
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
