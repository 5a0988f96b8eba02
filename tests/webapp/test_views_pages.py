from __future__ import annotations

import pytest
from django.test import Client
from django.urls import reverse

from tests.factories import make_dataset, make_job, make_project, make_version
from webapp.models import Project

NAV = [
    "dashboard",
    "project_list",
    "dataset_list",
    "job_list",
    "version_list",
    "classify",
    "batch_list",
]


@pytest.mark.parametrize("name", NAV)
def test_it_sends_strangers_to_the_login_page(client, db, name):
    response = client.get(reverse(name))
    assert response.status_code == 302
    assert response["Location"].startswith(reverse("login"))


def test_it_logs_in_behind_a_tls_terminating_proxy(viewer):
    """README's production set-up: gunicorn behind a proxy that speaks HTTPS to browsers and
    HTTP to Graft, under the same host name. The browser's Origin is https://…, so Django
    must learn from X-Forwarded-Proto that the request was secure, or CSRF refuses it."""
    proxied = {"Host": "testserver", "X-Forwarded-Proto": "https"}
    browser = Client(enforce_csrf_checks=True, headers=proxied)
    token = browser.get(reverse("login")).cookies["csrftoken"].value
    response = browser.post(
        reverse("login"),
        {
            "username": viewer.username,
            "password": f"pw-{viewer.username}",
            "csrfmiddlewaretoken": token,
        },
        headers={"Origin": "https://testserver", "Referer": "https://testserver/login/"},
    )
    assert response.status_code == 302
    assert response["Location"] == reverse("dashboard")


@pytest.mark.parametrize("name", NAV)
def test_it_opens_every_nav_entry_for_a_logged_in_user(viewer_client, name):
    assert viewer_client.get(reverse(name)).status_code == 200


@pytest.mark.parametrize("name", NAV)
def test_it_refuses_post_on_read_only_pages(viewer_client, name):
    assert viewer_client.post(reverse(name)).status_code == 405


def test_it_tells_a_new_user_the_next_step(trainer_client):
    response = trainer_client.get(reverse("dashboard"))
    assert b"Create your first project" in response.content


def test_it_shows_real_counts_active_versions_and_recent_jobs(viewer_client):
    project = make_project("Flowers")
    dataset = make_dataset(project)
    make_job(project, dataset)
    make_version(project, 1, is_active=True, val_accuracy=0.912)
    response = viewer_client.get(reverse("dashboard"))
    assert response.context["counts"]["projects"] == 1
    assert response.context["counts"]["versions"] == 1
    assert response.context["counts"]["jobs_running"] == 1
    assert b"0.912" in response.content
    assert b"Recent jobs" in response.content


def test_it_shows_the_admin_link_to_staff_only(viewer_client, admin_client):
    assert b'href="/admin/"' not in viewer_client.get(reverse("dashboard")).content
    assert b'href="/admin/"' in admin_client.get(reverse("dashboard")).content


def test_it_lets_a_trainer_create_a_project(trainer_client):
    response = trainer_client.post(reverse("project_create"), {"name": "Garden Flowers"})
    project = Project.objects.get()
    assert response.status_code == 302
    assert response["Location"] == reverse("project_detail", args=["garden-flowers"])
    assert project.slug == "garden-flowers"


def test_it_gives_a_second_project_with_the_same_name_its_own_slug(trainer_client):
    trainer_client.post(reverse("project_create"), {"name": "Flowers"})
    trainer_client.post(reverse("project_create"), {"name": "Flowers"})
    assert sorted(Project.objects.values_list("slug", flat=True)) == ["flowers", "flowers-2"]


def test_it_shows_form_errors_inline(trainer_client):
    response = trainer_client.post(reverse("project_create"), {"name": "!!!"})
    assert response.status_code == 200
    assert b"at least one letter or digit" in response.content
    assert not Project.objects.exists()


def test_it_forbids_project_creation_without_the_train_permission(viewer_client):
    assert viewer_client.post(reverse("project_create"), {"name": "X"}).status_code == 403
    assert not Project.objects.exists()


def test_it_returns_404_for_an_unknown_project(viewer_client):
    assert viewer_client.get(reverse("project_detail", args=["nope"])).status_code == 404
