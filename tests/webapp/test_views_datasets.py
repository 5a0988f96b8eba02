"""Dataset pages: the four ways in, the import report, adding photos, thumbnails."""

from __future__ import annotations

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.test import override_settings
from django.urls import reverse

from tests.factories import make_dataset, make_job, make_project, make_version
from tests.html_checks import dangling_descriptions, duplicate_ids, unlabelled_controls
from tests.images import image_folder, jpeg_bytes, zip_of_folder
from webapp import services
from webapp.models import Dataset
from worker.tasks import import_dataset


def _zip(tmp_path, name="photos.zip"):
    folder = image_folder(tmp_path / "src", {"daisy": 3, "tulip": 3})
    (folder / "daisy" / "notes.txt").write_text("not a photo")
    return SimpleUploadedFile(name, zip_of_folder(folder), content_type="application/zip")


def test_it_shows_the_four_ways_to_add_a_dataset(trainer_client, project):
    response = trainer_client.get(reverse("dataset_new", args=[project.slug]))
    assert response.status_code == 200
    for text in (b"Upload a zip", b"class by class", b"folder on the server", b"flower_photos"):
        assert text in response.content
    assert b"data-upload-progress" in response.content


@pytest.mark.parametrize(
    "name", ["dataset_new", "dataset_upload_zip", "dataset_create", "dataset_import_url"]
)
def test_it_forbids_adding_datasets_without_the_train_permission(viewer_client, project, name):
    method = viewer_client.get if name == "dataset_new" else viewer_client.post
    assert method(reverse(name, args=[project.slug])).status_code == 403
    assert not Dataset.objects.exists()


@pytest.mark.parametrize("name", ["dataset_upload_zip", "dataset_create", "dataset_import_folder"])
def test_it_refuses_get_on_dataset_mutations(trainer_client, project, name):
    assert trainer_client.get(reverse(name, args=[project.slug])).status_code == 405


def test_it_returns_404_for_an_unknown_project(trainer_client, db):
    assert trainer_client.get(reverse("dataset_new", args=["nope"])).status_code == 404


@pytest.mark.usefixtures("broker")  # imports start only while the queue is up
def test_it_uploads_a_zip_and_shows_the_import_report(trainer_client, project, data_dir, tmp_path):
    response = trainer_client.post(
        reverse("dataset_upload_zip", args=[project.slug]),
        {"name": "garden", "archive": _zip(tmp_path)},
    )
    dataset = Dataset.objects.get()
    assert response.status_code == 302
    assert response["Location"] == dataset.get_absolute_url()
    assert dataset.status == Dataset.Status.IMPORTING

    page = trainer_client.get(dataset.get_absolute_url())
    assert b'hx-trigger="every 1s"' in page.content  # polls while importing

    import_dataset.apply(args=[dataset.pk])  # what the worker does
    page = trainer_client.get(dataset.get_absolute_url())
    assert page.status_code == 200
    assert b"every 1s" not in page.content
    content = page.content.decode()
    assert "daisy" in content and "tulip" in content
    assert "notes.txt" in content  # refused, with its reason
    assert content.count(f"/projects/flowers/datasets/{dataset.pk}/thumb/") == 6


@pytest.mark.usefixtures("broker")  # imports start only while the queue is up
def test_it_answers_the_progress_bar_upload_with_json(trainer_client, project, data_dir, tmp_path):
    url = reverse("dataset_upload_zip", args=[project.slug])
    response = trainer_client.post(
        url, {"name": "garden", "archive": _zip(tmp_path)}, headers={"Accept": "application/json"}
    )
    assert response.json() == {"redirect": Dataset.objects.get().get_absolute_url()}

    again = trainer_client.post(
        url, {"name": "garden", "archive": _zip(tmp_path)}, headers={"Accept": "application/json"}
    )
    assert again.status_code == 400
    assert "already has a dataset" in again.json()["errors"]["name"][0]["message"]


@pytest.mark.usefixtures("broker")  # imports start only while the queue is up
def test_it_shows_a_duplicate_name_inline(trainer_client, project, data_dir, tmp_path):
    make_dataset(project, "garden")
    response = trainer_client.post(
        reverse("dataset_upload_zip", args=[project.slug]),
        {"name": "garden", "archive": _zip(tmp_path)},
    )
    assert response.status_code == 400
    assert "already has a dataset named" in response.content.decode()
    assert Dataset.objects.count() == 1


def test_it_polls_the_status_until_the_import_finishes(trainer_client, project):
    dataset = make_dataset(project, status=Dataset.Status.IMPORTING)
    url = reverse("dataset_status", args=[project.slug, dataset.pk])
    assert b"every 1s" in trainer_client.get(url).content
    Dataset.objects.filter(pk=dataset.pk).update(status=Dataset.Status.READY)
    done = trainer_client.get(url)
    assert done.status_code == 204
    assert done["HX-Refresh"] == "true"


def test_it_shows_a_failed_import_and_why(viewer_client, project):
    dataset = make_dataset(project, status=Dataset.Status.FAILED, error="The zip is damaged.")
    response = viewer_client.get(dataset.get_absolute_url())
    assert b"The import failed" in response.content
    assert b"The zip is damaged." in response.content


def test_it_hides_another_projects_dataset(viewer_client, project):
    other = make_project("Birds")
    dataset = make_dataset(other)
    url = reverse("dataset_detail", args=[project.slug, dataset.pk])
    assert viewer_client.get(url).status_code == 404


def test_it_creates_an_empty_dataset_and_adds_photos_per_class(trainer_client, project, data_dir):
    response = trainer_client.post(reverse("dataset_create", args=[project.slug]), {"name": "mine"})
    dataset = Dataset.objects.get()
    assert response["Location"] == dataset.get_absolute_url()

    files = [
        SimpleUploadedFile("a.jpg", jpeg_bytes(), content_type="image/jpeg"),
        SimpleUploadedFile("b.jpg", jpeg_bytes((0, 90, 0)), content_type="image/jpeg"),
        SimpleUploadedFile("c.jpg", b"not an image", content_type="image/jpeg"),
    ]
    url = reverse("dataset_add_images", args=[project.slug, dataset.pk])
    response = trainer_client.post(url, {"class_name": "roses", "files": files}, follow=True)
    dataset.refresh_from_db()
    assert dataset.class_counts == {"roses": 2}
    content = response.content.decode()
    assert "Added 2 photo(s) to “roses”" in content
    assert "Refused c.jpg" in content

    more = [SimpleUploadedFile("d.jpg", jpeg_bytes(), content_type="image/jpeg")]
    response = trainer_client.post(url, {"class_name": "Roses", "files": more}, follow=True)
    dataset.refresh_from_db()
    assert dataset.class_counts == {"roses": 3}  # the existing class, not a second one
    assert "Added 1 photo(s) to “roses”" in response.content.decode()


def test_it_refuses_a_photo_over_the_limit_without_reading_it_whole(
    trainer_client, project, data_dir, settings, upload_reads
):
    """Uploads reach the view at any size (spooled to disk); reading each whole into
    memory before the size check let one request exhaust a web worker."""
    settings.GRAFT_MAX_IMAGE_MB = 1
    read = upload_reads
    dataset = services.dataset_create_empty(project=project, name="mine")
    files = [
        SimpleUploadedFile("big.jpg", b"\xff" * (3 * 2**20), content_type="image/jpeg"),
        SimpleUploadedFile("a.jpg", jpeg_bytes(), content_type="image/jpeg"),
    ]
    url = reverse("dataset_add_images", args=[project.slug, dataset.pk])

    response = trainer_client.post(url, {"class_name": "roses", "files": files}, follow=True)

    content = response.content.decode()
    assert "Added 1 photo(s) to “roses”" in content
    assert "Refused big.jpg: larger than 1 MB" in content
    assert max(read) <= 2**20 + 1


def test_it_refuses_a_bad_class_name_inline(trainer_client, project, data_dir):
    dataset = services.dataset_create_empty(project=project, name="mine")
    url = reverse("dataset_add_images", args=[project.slug, dataset.pk])
    photo = SimpleUploadedFile("a.jpg", jpeg_bytes(), content_type="image/jpeg")
    response = trainer_client.post(url, {"class_name": "../etc", "files": [photo]})
    assert response.status_code == 400
    assert "cannot be a class name" in response.content.decode()
    assert not list(dataset.path.iterdir())


def test_it_forbids_adding_photos_without_the_train_permission(viewer_client, project, data_dir):
    dataset = services.dataset_create_empty(project=project, name="mine")
    url = reverse("dataset_add_images", args=[project.slug, dataset.pk])
    photo = SimpleUploadedFile("a.jpg", jpeg_bytes(), content_type="image/jpeg")
    assert viewer_client.post(url, {"class_name": "x", "files": [photo]}).status_code == 403


@pytest.mark.usefixtures("broker")  # imports start only while the queue is up
def test_it_imports_only_from_allowed_server_folders(trainer_client, project, data_dir, tmp_path):
    allowed = tmp_path / "allowed"
    folder = image_folder(allowed / "flowers")
    url = reverse("dataset_import_folder", args=[project.slug])
    with override_settings(GRAFT_IMPORT_ROOTS=[allowed]):
        outside = trainer_client.post(url, {"name": "x", "path": str(tmp_path)})
        assert outside.status_code == 400
        assert "outside the folders" in outside.content.decode()
        inside = trainer_client.post(url, {"name": "x", "path": str(folder)})
    assert inside.status_code == 302
    assert Dataset.objects.get().source_detail == str(folder.resolve())


def test_it_says_folder_imports_are_off_without_roots(trainer_client, project, settings):
    settings.GRAFT_IMPORT_ROOTS = []
    response = trainer_client.get(reverse("dataset_new", args=[project.slug]))
    assert b"GRAFT_IMPORT_ROOTS" in response.content


@pytest.mark.usefixtures("broker")  # imports start only while the queue is up
def test_it_starts_the_flowers_import(trainer_client, project, data_dir):
    response = trainer_client.post(
        reverse("dataset_import_url", args=[project.slug]), {"name": "flower_photos"}
    )
    dataset = Dataset.objects.get()
    assert response["Location"] == dataset.get_absolute_url()
    assert dataset.source == Dataset.Source.URL
    assert "flower_photos.tgz" in dataset.source_detail


def _ready_dataset(project, data_dir):
    dataset = services.dataset_create_empty(project=project, name="mine")
    services.dataset_add_images(
        dataset=dataset, class_name="roses", files=[("big.jpg", jpeg_bytes(size=(400, 300)))]
    )
    return dataset


def test_it_serves_small_thumbnails(viewer_client, project, data_dir):
    from io import BytesIO

    from PIL import Image

    dataset = _ready_dataset(project, data_dir)
    url = reverse("dataset_thumbnail", args=[project.slug, dataset.pk, "roses/big.jpg"])
    response = viewer_client.get(url + "?size=96")
    assert response.status_code == 200
    assert response["Content-Type"] == "image/jpeg"
    assert max(Image.open(BytesIO(response.content)).size) == 96


@pytest.mark.parametrize("relpath", ["../../../etc/passwd", "roses/missing.jpg", "roses"])
def test_it_serves_no_file_outside_the_dataset(viewer_client, project, data_dir, relpath):
    dataset = _ready_dataset(project, data_dir)
    (data_dir / "secret.jpg").write_bytes(jpeg_bytes())
    url = reverse("dataset_thumbnail", args=[project.slug, dataset.pk, relpath])
    assert viewer_client.get(url).status_code == 404
    url = reverse("dataset_thumbnail", args=[project.slug, dataset.pk, "../../../secret.jpg"])
    assert viewer_client.get(url).status_code == 404


@pytest.mark.parametrize("via", ["zip", "json", "folder", "url"])
def test_it_says_when_the_broker_is_down_and_starts_no_import(
    trainer_client, project, data_dir, tmp_path, monkeypatch, via
):
    from worker import app

    monkeypatch.setattr(app.conf, "broker_write_url", f"redis+socket://{tmp_path}/nothing.sock")
    folder = image_folder(tmp_path / "allowed" / "flowers")
    posts = {
        "zip": ("dataset_upload_zip", {"archive": _zip(tmp_path)}, {}),
        "json": (
            "dataset_upload_zip",
            {"archive": _zip(tmp_path)},
            {"headers": {"Accept": "application/json"}},
        ),
        "folder": ("dataset_import_folder", {"path": str(folder)}, {}),
        "url": ("dataset_import_url", {}, {}),
    }
    view, data, extra = posts[via]
    with override_settings(GRAFT_IMPORT_ROOTS=[tmp_path / "allowed"]):
        response = trainer_client.post(
            reverse(view, args=[project.slug]), {"name": "garden", **data}, **extra
        )
    assert response.status_code == 503
    assert "The job queue is unavailable" in response.content.decode()
    assert not Dataset.objects.exists()
    assert not (data_dir / "incoming").exists()


# --- Deleting ---------------------------------------------------------------------------


@pytest.fixture
def doomed(project, data_dir):
    """A ready dataset with photos on disk that no job or version used."""
    dataset = make_dataset(project, "doomed", image_count=4, total_bytes=4000)
    image_folder(dataset.path, {"daisy": 2, "tulip": 2})
    return dataset


def _delete_url(dataset: Dataset) -> str:
    return reverse("dataset_delete", args=[dataset.project.slug, dataset.pk])


def test_it_offers_delete_on_the_dataset_page_only_to_trainers(
    trainer_client, viewer_client, doomed
):
    assert _delete_url(doomed).encode() in trainer_client.get(doomed.get_absolute_url()).content
    assert _delete_url(doomed).encode() not in viewer_client.get(doomed.get_absolute_url()).content


def test_it_forbids_deleting_a_dataset_without_the_train_permission(viewer_client, doomed):
    assert viewer_client.get(_delete_url(doomed)).status_code == 403
    assert viewer_client.post(_delete_url(doomed)).status_code == 403
    assert Dataset.objects.filter(pk=doomed.pk).exists()
    assert doomed.path.is_dir()


def test_it_refuses_other_methods_on_delete(trainer_client, doomed):
    assert trainer_client.put(_delete_url(doomed)).status_code == 405


def test_it_answers_404_for_a_dataset_of_another_project(trainer_client, doomed):
    make_project("Pets")
    url = reverse("dataset_delete", args=["pets", doomed.pk])
    assert trainer_client.get(url).status_code == 404
    assert trainer_client.post(url).status_code == 404
    assert Dataset.objects.filter(pk=doomed.pk).exists()


def test_it_asks_before_deleting_and_get_changes_nothing(trainer_client, doomed):
    response = trainer_client.get(_delete_url(doomed))

    assert b"Delete doomed?" in response.content
    assert b"4 photos (3.9\xc2\xa0KB)" in response.content
    assert b'id="confirm-button"' in response.content
    assert b"csrfmiddlewaretoken" in response.content
    assert Dataset.objects.filter(pk=doomed.pk).exists()


def test_it_says_why_a_dataset_cannot_be_deleted_instead_of_asking(trainer_client, doomed):
    make_version(doomed.project, 1, dataset=doomed)

    response = trainer_client.get(_delete_url(doomed))

    assert "is kept as training history: version v1 learned" in response.content.decode()
    assert b'id="confirm-button"' not in response.content


def test_it_deletes_a_dataset_and_its_photos_then_shows_the_project(
    trainer_client, doomed, django_capture_on_commit_callbacks
):
    with django_capture_on_commit_callbacks(execute=True):
        response = trainer_client.post(_delete_url(doomed))

    assert response["Location"] == doomed.project.get_absolute_url()
    assert not Dataset.objects.filter(pk=doomed.pk).exists()
    assert not doomed.path.exists()
    page = trainer_client.get(response["Location"]).content.decode()
    assert "Dataset “doomed” and its photos were deleted." in page


def test_it_says_why_it_kept_a_dataset_on_post(trainer_client, doomed):
    job = make_job(doomed.project, doomed, status="running")

    response = trainer_client.post(_delete_url(doomed), follow=True)

    assert response.redirect_chain == [(doomed.get_absolute_url(), 302)]
    assert f"Job #{job.pk} on dataset “doomed” is queued or running" in response.content.decode()
    assert Dataset.objects.filter(pk=doomed.pk).exists()
    assert doomed.path.is_dir()


def test_it_gives_each_of_the_four_forms_its_own_field_ids(trainer_client, project, settings):
    """Every form has a Name field; all four were id="id_name", so the label of the second,
    third and fourth focused the first (in its closed <details>)."""
    settings.GRAFT_IMPORT_ROOTS = ["/srv/photos"]
    page = trainer_client.get(reverse("dataset_new", args=[project.slug])).content.decode()
    assert duplicate_ids(page) == []
    assert unlabelled_controls(page) == []
    assert dangling_descriptions(page) == []


def test_it_keeps_its_own_ids_when_a_form_comes_back_with_errors(trainer_client, project):
    response = trainer_client.post(reverse("dataset_create", args=[project.slug]), {"name": ""})
    assert response.status_code == 400
    assert duplicate_ids(response.content.decode()) == []


def test_it_labels_every_control_of_the_add_photos_form(trainer_client, dataset):
    page = trainer_client.get(dataset.get_absolute_url()).content.decode()
    assert 'name="files"' in page
    assert unlabelled_controls(page) == []
