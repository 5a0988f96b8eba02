"""Awkward and hostile files posted to the classify API: readable ones are classified,
the rest get a 400 that says what is wrong, and nothing is logged for them."""

from __future__ import annotations

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile

from tests.classifier.conftest import bad_image_files, odd_image_files
from tests.webapp.conftest import SERVED_LABELS
from webapp.models import Prediction

URL = "/api/v1/projects/flowers/classify"
ODD = odd_image_files()
BAD = bad_image_files()
READABLE = ["cmyk_jpeg", "png_16bit_grey", "png_alpha", "gif_animated", "exif_rotated"]
REFUSED = {
    "truncated_jpeg": "could not be read",
    "empty": "empty (0 bytes)",
    "png_bomb": "too large",
    "text": "not an image",
}


@pytest.mark.parametrize("name", READABLE)
def test_it_classifies_awkward_but_valid_photos(served_project, viewer_api, name):
    response = viewer_api.post(URL, {"image": SimpleUploadedFile(f"{name}.img", ODD[name])})

    assert response.status_code == 200, response.json()
    assert {p["label"] for p in response.json()["predictions"]} == set(SERVED_LABELS[1])


@pytest.mark.parametrize("name", sorted(REFUSED))
def test_it_refuses_broken_or_hostile_files_with_a_clear_400(served_project, viewer_api, name):
    response = viewer_api.post(URL, {"image": SimpleUploadedFile(f"{name}.jpg", BAD[name])})

    assert response.status_code == 400
    assert response.json()["code"] == "invalid_image"
    assert REFUSED[name] in response.json()["detail"]
    assert not Prediction.objects.exists()


def test_it_reads_a_20000_by_20000_image_as_too_many_pixels(served_project, viewer_api):
    response = viewer_api.post(URL, {"image": SimpleUploadedFile("huge.png", BAD["png_bomb"])})

    assert response.status_code == 400
    assert "400000000 pixels" in response.json()["detail"]
