"""A body larger than any upload Graft takes is refused before anything reads it."""

from __future__ import annotations

import pytest
from django.test import Client
from django.urls import reverse

from webapp.middleware import max_request_bytes
from webapp.models import Dataset

pytestmark = pytest.mark.django_db


class Unreadable:
    """A request body that fails the test if anyone reads it."""

    def read(self, *args: object) -> bytes:
        raise AssertionError("the body was read")

    readline = read


def _post(client: Client, url: str, length: int, **extra: str):
    return client.generic(
        "POST",
        url,
        b"",
        content_type="multipart/form-data; boundary=xyz",
        CONTENT_LENGTH=str(length),
        **{"wsgi.input": Unreadable()},
        **extra,
    )


def test_an_anonymous_oversized_post_is_refused_before_the_csrf_check_reads_it(settings):
    # The CSRF check parses a POST's form (spooling its files to disk) before the login
    # check; a cookie of the attacker's own choosing is enough to get that far.
    client = Client(enforce_csrf_checks=True)
    client.cookies["csrftoken"] = "x" * 32
    settings.GRAFT_MAX_ZIP_MB = 10

    response = _post(client, reverse("login"), max_request_bytes() + 1)

    assert response.status_code == 413
    content = response.content.decode()
    assert "Upload too large" in content
    assert "the largest Graft accepts is a 10 MB zip (GRAFT_MAX_ZIP_MB)" in content


def test_an_oversized_dataset_upload_is_refused_and_creates_nothing(
    trainer_client, project, settings
):
    settings.GRAFT_MAX_ZIP_MB = 10
    url = reverse("dataset_upload_zip", args=[project.slug])

    response = _post(trainer_client, url, 3 * 2**30)

    assert response.status_code == 413
    assert "The upload is 3,072 MB" in response.content.decode()
    assert not Dataset.objects.exists()


def test_the_api_refuses_an_oversized_body_in_json(settings):
    settings.GRAFT_MAX_ZIP_MB = 10

    response = _post(Client(), "/api/v1/projects/any/batches", max_request_bytes() + 1)

    assert response.status_code == 413
    assert response.json()["code"] == "too_large"
    assert "GRAFT_MAX_ZIP_MB" in response.json()["detail"]


def test_a_body_within_the_limit_goes_through(trainer_client, project, settings):
    settings.GRAFT_MAX_ZIP_MB = 10
    url = reverse("dataset_upload_zip", args=[project.slug])

    response = trainer_client.post(url, {"name": "empty"})  # no zip: the form says so

    assert response.status_code == 400
    assert "Upload too large" not in response.content.decode()
