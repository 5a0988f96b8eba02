from __future__ import annotations

import pytest
from django.test import Client
from django.urls import reverse

from tests.factories import make_dataset, make_job, make_project, make_version
from webapp.models import BatchClassification, Project

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


def _many_jobs(count: int) -> list:
    project = make_project("Flowers")
    dataset = make_dataset(project)
    return [make_job(project, dataset) for _ in range(count)]  # newest last


def test_it_pages_the_job_list_instead_of_dropping_old_jobs(viewer_client):
    """The list showed the newest 200 jobs and nothing said that older ones existed."""
    jobs = _many_jobs(51)
    first = viewer_client.get(reverse("job_list"))
    assert f'href="/jobs/{jobs[-1].pk}/"'.encode() in first.content
    assert f'href="/jobs/{jobs[0].pk}/"'.encode() not in first.content
    assert b"Page 1 of 2" in first.content
    assert b'href="?page=2"' in first.content
    second = viewer_client.get(reverse("job_list"), {"page": 2})
    assert f'href="/jobs/{jobs[0].pk}/"'.encode() in second.content
    assert f'href="/jobs/{jobs[-1].pk}/"'.encode() not in second.content
    assert b'href="?page=1"' in second.content


def test_it_shows_no_pager_when_one_page_holds_everything(viewer_client):
    _many_jobs(3)
    assert b"Page 1 of" not in viewer_client.get(reverse("job_list")).content


def test_it_answers_an_out_of_range_page_with_the_last_one(viewer_client):
    jobs = _many_jobs(51)
    response = viewer_client.get(reverse("job_list"), {"page": "99"})
    assert response.status_code == 200
    assert f'href="/jobs/{jobs[0].pk}/"'.encode() in response.content


def test_it_lists_one_projects_jobs_and_keeps_the_filter_across_pages(viewer_client):
    jobs = _many_jobs(51)
    other = make_project("Birds")
    stranger = make_job(other, make_dataset(other))
    response = viewer_client.get(reverse("job_list"), {"project": "flowers"})
    assert b"Training jobs of Flowers" in response.content
    assert f'href="/jobs/{stranger.pk}/"'.encode() not in response.content
    assert b'href="?project=flowers&amp;page=2"' in response.content
    second = viewer_client.get(reverse("job_list"), {"project": "flowers", "page": 2})
    assert f'href="/jobs/{jobs[0].pk}/"'.encode() in second.content


def test_it_answers_404_for_the_jobs_of_an_unknown_project(viewer_client):
    assert viewer_client.get(reverse("job_list"), {"project": "nope"}).status_code == 404


def test_it_links_a_busy_project_page_to_all_its_jobs(viewer_client):
    """The project page shows its 20 latest jobs; older ones were out of reach."""
    _many_jobs(21)
    response = viewer_client.get(reverse("project_detail", args=["flowers"]))
    assert b'href="/jobs/?project=flowers"' in response.content
    assert b"All 21 jobs" in response.content


def test_it_pages_the_version_dataset_and_batch_lists(viewer_client):
    project = make_project("Flowers")
    for number in range(1, 52):
        make_version(project, number)
    for index in range(51):
        make_dataset(project, f"photos-{index}")
    for _ in range(51):
        BatchClassification.objects.create(project=project, version_number=1, total=1)
    pages = [
        reverse("version_list"),
        reverse("dataset_list"),
        reverse("batch_list"),
        reverse("project_batch_list", args=["flowers"]),
    ]
    for url in pages:
        response = viewer_client.get(url)
        assert b"Page 1 of 2" in response.content, url
        assert len(response.context["page"]) == 50, url
    oldest = viewer_client.get(reverse("version_list"), {"page": 2})
    assert b'href="/projects/flowers/models/1/"' in oldest.content


def test_it_explains_a_refusal_on_a_page_with_the_menu(viewer_client, db):
    """A refused page was Django's bare "403 Forbidden": no menu, no way on, no reason."""
    make_project("Flowers")
    response = viewer_client.get(reverse("dataset_new", args=["flowers"]))
    assert response.status_code == 403
    assert b'href="/projects/"' in response.content
    assert b"Trainers" in response.content


def test_it_answers_an_unknown_address_on_a_page_with_the_menu(viewer_client, db):
    response = viewer_client.get(reverse("job_detail", args=[999]))
    assert response.status_code == 404
    assert b'href="/jobs/"' in response.content
    assert b"<title>Not found" in response.content
