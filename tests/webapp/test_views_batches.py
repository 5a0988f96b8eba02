"""Batch pages: start a batch from the classify page, follow it live, list and download,
cancel and delete."""

from __future__ import annotations

import io
import zipfile
from unittest import mock

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.urls import reverse

from tests.factories import make_project, make_version
from tests.images import jpeg_bytes
from tests.webapp.conftest import SERVED_LABELS
from webapp import services
from webapp.models import BatchClassification

pytestmark = pytest.mark.usefixtures("broker")

JSON = {"Accept": "application/json"}


@pytest.fixture
def worker_up():
    """A worker answers the ping (the real ones are started in tests/worker)."""
    with mock.patch(
        "webapp.health.check_workers", return_value={"ok": True, "workers": ["w@test"]}
    ):
        yield


def _zip(entries: dict[str, bytes], name: str = "photos.zip") -> SimpleUploadedFile:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for path, data in entries.items():
            archive.writestr(path, data)
    return SimpleUploadedFile(name, buffer.getvalue(), content_type="application/zip")


def _photos_zip() -> SimpleUploadedFile:
    return _zip(
        {
            "red/one.jpg": jpeg_bytes(),
            "blue/two.jpg": jpeg_bytes((20, 20, 200)),
            "broken.png": b"not a png",
        }
    )


def _photo(name: str = "cat.jpg") -> SimpleUploadedFile:
    return SimpleUploadedFile(name, jpeg_bytes(), content_type="image/jpeg")


def _start(client, files, project: str = "flowers", **kwargs):
    return client.post(reverse("batch_create"), {"project": project, "files": files}, **kwargs)


def _nothing_stored(data_dir) -> bool:
    folder = data_dir / "batches"
    return not BatchClassification.objects.exists() and (
        not folder.exists() or not any(folder.iterdir())
    )


# --- The classify page ------------------------------------------------------------------


def test_it_offers_a_batch_upload_on_the_classify_page(viewer_client, served_project):
    content = viewer_client.get(reverse("classify") + "?project=flowers").content.decode()
    assert 'id="batch-form"' in content
    assert f'action="{reverse("batch_create")}"' in content
    assert 'accept=".zip,application/zip,image/*" multiple' in content
    assert '<input type="hidden" name="project" value="flowers">' in content


def test_it_preselects_the_project_the_classify_page_was_opened_for(viewer_client, served_project):
    birds = make_project("Birds")
    make_version(birds, 1, is_active=True)
    content = viewer_client.get(reverse("classify") + "?project=birds").content.decode()
    form = content[content.index('id="batch-form"') :]
    assert '<option value="birds" selected>' in form


def test_it_offers_no_batch_upload_when_nothing_can_classify(viewer_client, db):
    assert b'id="batch-form"' not in viewer_client.get(reverse("classify")).content


def test_it_offers_a_batch_on_the_batches_page_only_when_something_can_classify(viewer_client, db):
    """The button led to a classify page that said there was nothing to classify with."""
    offer = f'href="{reverse("classify")}#batch"'.encode()
    make_version(make_project("Flowers"), 1)  # not active
    assert offer not in viewer_client.get(reverse("batch_list")).content
    make_version(make_project("Birds"), 1, is_active=True)
    assert offer in viewer_client.get(reverse("batch_list")).content


# --- Starting a batch -------------------------------------------------------------------


def test_it_starts_a_batch_from_a_zip_and_opens_its_page(
    viewer_client, viewer, served_project, data_dir, worker_up
):
    response = _start(viewer_client, _photos_zip())

    batch = BatchClassification.objects.get()
    assert response.status_code == 302
    assert response["Location"] == reverse("batch_detail", args=[batch.pk])
    assert (batch.status, batch.total, batch.version_number) == ("queued", 3, 1)
    assert batch.created_by == viewer
    assert (data_dir / "batches" / str(batch.pk) / "input.zip").is_file()
    page = viewer_client.get(response["Location"]).content.decode()
    assert f"Batch #{batch.pk} queued: 3 photos for Flowers v1." in page
    assert "waiting for a worker" in page
    assert 'hx-trigger="every 1s"' in page


def test_it_starts_a_batch_from_several_photos(viewer_client, served_project, worker_up):
    response = _start(viewer_client, [_photo("a.jpg"), _photo("b.jpg"), _photo("c.jpg")])

    assert response.status_code == 302
    assert BatchClassification.objects.get().total == 3


def test_it_answers_the_progress_bar_upload_in_json(viewer_client, served_project, worker_up):
    response = _start(viewer_client, _photos_zip(), headers=JSON)

    batch = BatchClassification.objects.get()
    assert response.status_code == 200
    assert response.json() == {"redirect": reverse("batch_detail", args=[batch.pk])}


BAD_INPUT = {
    "nothing uploaded": ([], "Choose a zip of photos, or one or more photos"),
    "not a zip": (
        SimpleUploadedFile("photos.zip", b"PK but not really a zip"),
        "photos.zip is not a zip file that can be read",
    ),
    "a zip without photos": (_zip({"readme.txt": b"hello"}), "The zip holds no photos"),
    "neither a zip nor a photo": (
        SimpleUploadedFile("notes.txt", b"some notes"),
        "notes.txt is neither a zip nor a photo",
    ),
    "a zip with other files": (
        [_zip({"a.jpg": jpeg_bytes()}), _photo()],
        "Send a zip on its own",
    ),
}


@pytest.mark.parametrize("files, message", BAD_INPUT.values(), ids=BAD_INPUT.keys())
def test_it_refuses_bad_input_clearly_and_stores_nothing(
    viewer_client, served_project, data_dir, worker_up, files, message
):
    response = _start(viewer_client, files)

    content = response.content.decode()
    assert response.status_code == 400
    assert message in content
    assert 'id="batch-form"' in content  # the page again, ready for another try
    assert _nothing_stored(data_dir)


def test_it_refuses_a_project_without_an_active_version(
    viewer_client, served_project, data_dir, worker_up
):
    make_project("Empty")

    response = _start(viewer_client, _photos_zip(), project="empty")

    assert response.status_code == 400
    assert "no active model version" in response.content.decode()
    assert _nothing_stored(data_dir)


def test_it_refuses_a_photo_over_the_limit(viewer_client, served_project, data_dir, settings):
    settings.GRAFT_MAX_IMAGE_MB = 1
    big = SimpleUploadedFile("big.jpg", jpeg_bytes() + b"\0" * 2**21)

    response = _start(viewer_client, [big, _photo()])

    assert response.status_code == 413
    assert "big.jpg is over the 1 MB limit" in response.content.decode()
    assert _nothing_stored(data_dir)


def test_it_asks_for_a_zip_when_too_many_photos_are_sent(
    viewer_client, served_project, data_dir, settings
):
    settings.DATA_UPLOAD_MAX_NUMBER_FILES = 2

    response = _start(viewer_client, [_photo("a.jpg"), _photo("b.jpg"), _photo("c.jpg")])

    assert response.status_code == 400
    assert "Send at most 2 photos at once; put more in a zip." in response.content.decode()
    assert _nothing_stored(data_dir)


def test_it_says_when_no_worker_would_run_the_batch(viewer_client, served_project, data_dir):
    response = _start(viewer_client, _photos_zip())  # a real broker, and no worker

    assert response.status_code == 503
    assert "No worker is running, so the batch would never start." in response.content.decode()
    assert _nothing_stored(data_dir)


def test_it_says_when_the_broker_is_down(
    viewer_client, served_project, data_dir, tmp_path, monkeypatch, worker_up
):
    from worker import app

    monkeypatch.setattr(app.conf, "broker_write_url", f"redis+socket://{tmp_path}/nothing.sock")

    response = _start(viewer_client, _photos_zip())

    assert response.status_code == 503
    assert "The job queue is unavailable" in response.content.decode()
    assert _nothing_stored(data_dir)


def test_it_answers_refusals_to_the_progress_bar_upload_in_json(
    viewer_client, served_project, data_dir, worker_up
):
    response = _start(viewer_client, _zip({"readme.txt": b"hi"}), headers=JSON)

    assert response.status_code == 400
    messages = [e["message"] for e in response.json()["errors"]["files"]]
    assert any("no photos" in m for m in messages)
    assert _nothing_stored(data_dir)


# --- The batch page -----------------------------------------------------------------------


def _finished_batch(client) -> BatchClassification:
    with mock.patch("webapp.health.check_workers", return_value={"ok": True, "workers": ["w"]}):
        _start(client, _photos_zip())
    batch = BatchClassification.objects.get()
    services.batch_run(batch_id=batch.pk)
    batch.refresh_from_db()
    return batch


def test_it_shows_the_outcome_errors_per_file_and_downloads(viewer_client, served_project):
    batch = _finished_batch(viewer_client)

    content = viewer_client.get(batch.get_absolute_url()).content.decode()

    assert batch.status == "succeeded"
    assert "every 1s" not in content  # finished: no more polling
    assert 'id="batch-status">Succeeded' in content
    assert '<strong id="batch-classified">2</strong> classified' in content
    assert '<strong id="batch-failed">1</strong> unreadable' in content
    assert f'href="{served_project.versions.get(number=1).get_absolute_url()}"' in content
    errors = content[content.index('id="batch-errors"') :]
    assert "<code>broken.png</code>" in errors and "not an image" in errors
    for fmt in ("csv", "json"):
        url = reverse("api:batch_results", args=[batch.pk, fmt])
        assert f'href="{url}"' in content
        download = viewer_client.get(url)
        assert download.status_code == 200
        assert b"red/one.jpg" in b"".join(download.streaming_content)
    labels = content[content.index('id="batch-labels"') :]
    assert any(label in labels for label in SERVED_LABELS[1])


def test_it_shows_file_names_escaped_in_the_csv_as_they_were(viewer_client, served_project):
    with mock.patch("webapp.health.check_workers", return_value={"ok": True, "workers": ["w"]}):
        _start(viewer_client, _zip({"=cmd.png": b"not a png", "'quoted.jpg": jpeg_bytes()}))
    batch = BatchClassification.objects.get()
    services.batch_run(batch_id=batch.pk)

    content = viewer_client.get(batch.get_absolute_url()).content.decode()

    errors = content[content.index('id="batch-errors"') :]
    assert "<code>=cmd.png</code>" in errors
    assert "<code>&#x27;quoted.jpg</code>" in content


def test_it_shows_live_progress_while_a_batch_runs(viewer_client, served_project):
    batch = BatchClassification.objects.create(
        project=served_project, version_number=1, status="running", total=5, done=2, failed=1
    )

    live = viewer_client.get(reverse("batch_live", args=[batch.pk])).content.decode()

    assert 'hx-trigger="every 1s"' in live
    assert 'value="40" max="100"' in live
    assert '<strong id="batch-done">2</strong> of 5 photos' in live
    assert "<html" not in live  # a partial for htmx
    assert "Download CSV" not in live


def test_it_shows_why_a_batch_failed(viewer_client, served_project):
    batch = BatchClassification.objects.create(
        project=served_project,
        version_number=3,
        status="failed",
        attempts=3,
        max_attempts=3,
        error="The worker classifying this batch stopped making progress.",
    )

    content = viewer_client.get(batch.get_absolute_url()).content.decode()

    assert "The batch failed." in content
    assert "stopped making progress" in content
    assert "attempt 3 of 3" in content
    assert 'v3</span> <span class="muted">(since deleted)' in content
    assert "Download CSV" not in content


def test_it_lists_a_projects_batches_only(viewer_client, served_project):
    mine = BatchClassification.objects.create(project=served_project, total=4)
    other = BatchClassification.objects.create(project=make_project("Birds"), total=9)

    content = viewer_client.get(reverse("project_batch_list", args=["flowers"])).content.decode()
    everything = viewer_client.get(reverse("batch_list")).content.decode()

    assert mine.get_absolute_url() in content and other.get_absolute_url() not in content
    assert mine.get_absolute_url() in everything and other.get_absolute_url() in everything


def test_it_links_batches_from_the_project_page_and_the_nav(viewer_client, served_project):
    batch = BatchClassification.objects.create(project=served_project, total=4)

    content = viewer_client.get(served_project.get_absolute_url()).content.decode()

    assert batch.get_absolute_url() in content
    assert reverse("project_batch_list", args=["flowers"]) in content
    assert f"{reverse('classify')}?project=flowers#batch" in content
    assert f'href="{reverse("batch_list")}"' in content


# --- Who may do what ------------------------------------------------------------------------


def _pages(batch: BatchClassification) -> list[str]:
    return [
        reverse("batch_detail", args=[batch.pk]),
        reverse("batch_live", args=[batch.pk]),
        reverse("batch_list"),
        reverse("project_batch_list", args=[batch.project.slug]),
    ]


def test_it_sends_strangers_to_the_login_page(client, served_project, data_dir):
    batch = BatchClassification.objects.create(project=served_project)

    for url in [*_pages(batch), reverse("batch_create")]:
        response = client.post(url) if url == reverse("batch_create") else client.get(url)
        assert response.status_code == 302, url
        assert response["Location"].startswith(reverse("login"))
    assert BatchClassification.objects.count() == 1


def test_it_returns_404_for_an_unknown_batch_or_project(viewer_client, db):
    assert viewer_client.get(reverse("batch_detail", args=[999])).status_code == 404
    assert viewer_client.get(reverse("batch_live", args=[999])).status_code == 404
    assert viewer_client.get(reverse("project_batch_list", args=["nope"])).status_code == 404


def test_it_refuses_the_wrong_methods(viewer_client, served_project):
    batch = BatchClassification.objects.create(project=served_project)

    assert viewer_client.get(reverse("batch_create")).status_code == 405
    for url in _pages(batch):
        assert viewer_client.post(url).status_code == 405, url
    for url in _actions(batch):
        assert viewer_client.get(url).status_code == 405, url


# --- Cancelling and deleting ----------------------------------------------------------------


def _actions(batch: BatchClassification) -> list[str]:
    return [reverse("batch_cancel", args=[batch.pk]), reverse("batch_delete", args=[batch.pk])]


def _batch_of(user, project, **fields) -> BatchClassification:
    """A batch ``user`` started, with its folder, as an upload leaves it."""
    batch = BatchClassification.objects.create(
        project=project, version_number=1, total=3, created_by=user, **fields
    )
    batch.directory = f"batches/{batch.pk}"
    batch.save(update_fields=["directory"])
    (batch.path / "inputs").mkdir(parents=True)
    return batch


def _messages(response) -> list[str]:
    return [str(m) for m in response.context["messages"]]


def test_it_offers_the_one_who_started_a_queued_batch_to_cancel_it(
    viewer_client, viewer, served_project
):
    batch = _batch_of(viewer, served_project)

    content = viewer_client.get(batch.get_absolute_url()).content.decode()

    form = content[content.index('id="batch-actions"') :]
    assert f'action="{reverse("batch_cancel", args=[batch.pk])}"' in form
    assert 'name="csrfmiddlewaretoken"' in form
    assert f"return confirm('Cancel batch #{batch.pk}?')" in form
    assert 'id="delete-batch"' not in content  # not while it may still run


def test_it_cancels_a_queued_batch_from_its_page(viewer_client, viewer, served_project):
    batch = _batch_of(viewer, served_project)

    response = viewer_client.post(reverse("batch_cancel", args=[batch.pk]), follow=True)

    batch.refresh_from_db()
    assert batch.status == "cancelled"
    assert response.redirect_chain == [(batch.get_absolute_url(), 302)]
    assert _messages(response) == [f"Batch #{batch.pk} cancelled."]
    content = response.content.decode()
    assert 'id="batch-status">Cancelled' in content and "badge-muted" in content
    assert "Cancelled before it started." in content
    assert 'id="batch-cancelled-by">Cancelled by victor</span>' in content
    assert "every 1s" not in content and 'id="cancel-batch"' not in content
    assert 'id="delete-batch"' in content


def test_it_asks_a_running_batch_to_stop_and_says_so_while_it_polls(
    viewer_client, viewer, served_project
):
    batch = _batch_of(viewer, served_project, status="running", done=1)

    response = viewer_client.post(reverse("batch_cancel", args=[batch.pk]), follow=True)
    live = viewer_client.get(reverse("batch_live", args=[batch.pk])).content.decode()

    assert "will stop after the photos it is classifying now" in _messages(response)[0]
    assert 'id="batch-stopping"' in live and 'hx-trigger="every 1s"' in live
    assert 'id="batch-cancelled-by">Cancel requested by victor</span>' in live
    assert 'id="cancel-batch"' not in live and 'id="delete-batch"' not in live


def test_it_stops_offering_cancel_in_the_live_part_once_the_batch_finished(
    viewer_client, viewer, served_project
):
    batch = _batch_of(viewer, served_project, status="running")
    live = reverse("batch_live", args=[batch.pk])
    assert 'id="cancel-batch"' in viewer_client.get(live).content.decode()

    BatchClassification.objects.filter(pk=batch.pk).update(status="succeeded", done=3)
    content = viewer_client.get(live).content.decode()

    assert 'id="cancel-batch"' not in content and "every 1s" not in content
    assert f'action="{reverse("batch_delete", args=[batch.pk])}"' in content


def test_it_says_clearly_that_a_finished_batch_cannot_be_cancelled(
    viewer_client, viewer, served_project
):
    batch = _batch_of(viewer, served_project, status="succeeded", done=3)

    response = viewer_client.post(reverse("batch_cancel", args=[batch.pk]), follow=True)

    assert _messages(response) == [
        f"Batch #{batch.pk} has already succeeded; there is nothing to cancel."
    ]
    batch.refresh_from_db()
    assert (batch.status, batch.cancel_requested) == ("succeeded", False)


def test_it_shows_and_serves_the_partial_results_of_a_batch_cancelled_while_running(
    viewer_client, viewer, served_project, monkeypatch
):
    from classifier.serving import Predictor

    with mock.patch("webapp.health.check_workers", return_value={"ok": True, "workers": ["w"]}):
        _start(viewer_client, [_photo("a.jpg"), _photo("b.jpg"), _photo("c.jpg")])
    batch = BatchClassification.objects.get()
    predict = Predictor.predict_array

    def cancel_first(self, pixels):
        viewer_client.post(reverse("batch_cancel", args=[batch.pk]))
        return predict(self, pixels)

    monkeypatch.setattr(services, "BATCH_CHUNK", 2)
    monkeypatch.setattr(Predictor, "predict_array", cancel_first)
    services.batch_run(batch_id=batch.pk)

    content = viewer_client.get(batch.get_absolute_url()).content.decode()

    assert 'id="batch-status">Cancelled' in content
    assert 'id="batch-cancelled-by">Cancelled by victor</span>' in content
    partial = content[content.index('id="batch-partial"') :]
    assert "Partial results." in partial and "cancelled after 2 of 3 photos" in partial
    url = reverse("api:batch_results", args=[batch.pk, "csv"])
    assert f'href="{url}"' in partial
    download = b"".join(viewer_client.get(url).streaming_content).decode()
    assert [line.split(",")[0] for line in download.splitlines()] == ["file", "a.jpg", "b.jpg"]


def test_it_deletes_a_finished_batch_for_a_trainer(
    trainer_client, viewer, served_project, django_capture_on_commit_callbacks
):
    batch = _batch_of(viewer, served_project, status="failed")
    content = trainer_client.get(batch.get_absolute_url()).content.decode()
    assert "return confirm('Delete batch #" in content

    with django_capture_on_commit_callbacks(execute=True):
        response = trainer_client.post(reverse("batch_delete", args=[batch.pk]), follow=True)

    assert response.redirect_chain == [(reverse("project_batch_list", args=["flowers"]), 302)]
    assert _messages(response) == [
        f"Batch #{batch.pk} and its files were deleted; its answers stay in the prediction log."
    ]
    assert not BatchClassification.objects.filter(pk=batch.pk).exists()
    assert not batch.path.exists()


def test_it_says_clearly_that_a_running_batch_cannot_be_deleted(
    viewer_client, viewer, served_project
):
    batch = _batch_of(viewer, served_project, status="running")

    response = viewer_client.post(reverse("batch_delete", args=[batch.pk]), follow=True)

    assert response.redirect_chain == [(batch.get_absolute_url(), 302)]
    assert _messages(response) == [
        f"Batch #{batch.pk} is running; cancel it first, then delete it once it has stopped."
    ]
    assert BatchClassification.objects.filter(pk=batch.pk).exists()
    assert batch.path.exists()


@pytest.mark.parametrize("status", ["queued", "succeeded"])
def test_it_offers_nothing_to_another_user_and_refuses_their_posts(
    outsider_client, viewer, served_project, status
):
    batch = _batch_of(viewer, served_project, status=status)

    content = outsider_client.get(batch.get_absolute_url()).content.decode()

    assert 'id="batch-actions"' not in content
    for url in _actions(batch):
        assert outsider_client.post(url).status_code == 403, url
    batch.refresh_from_db()
    assert (batch.status, batch.cancel_requested) == (status, False)
    assert batch.path.exists()


def test_it_sends_strangers_posting_actions_to_the_login_page(client, viewer, served_project):
    batch = _batch_of(viewer, served_project)

    for url in _actions(batch):
        response = client.post(url)
        assert response.status_code == 302, url
        assert response["Location"].startswith(reverse("login"))
    batch.refresh_from_db()
    assert batch.status == "queued"


def test_it_returns_404_for_actions_on_an_unknown_batch(viewer_client, db):
    assert viewer_client.post(reverse("batch_cancel", args=[999])).status_code == 404
    assert viewer_client.post(reverse("batch_delete", args=[999])).status_code == 404
