"""Dataset imports: good zips, folders and uploads become datasets; bad ones change nothing."""

from __future__ import annotations

import io
import stat
import zipfile
from datetime import timedelta
from pathlib import Path

import pytest
from django.conf import settings
from django.core.exceptions import ValidationError
from django.utils import timezone

from tests.factories import make_dataset, make_job, make_version
from tests.images import image_folder, jpeg_bytes, zip_of_folder
from webapp import services
from webapp.models import Dataset
from worker.tasks import import_dataset

pytestmark = pytest.mark.django_db


def import_zip(project, data: bytes, tmp_path: Path, name: str = "photos") -> Dataset:
    path = tmp_path / f"{name}.zip"
    path.write_bytes(data)
    return services.dataset_import_zip(project=project, name=name, upload=path, background=False)


def test_it_imports_a_zip_of_class_folders(project, data_dir, tmp_path):
    folder = image_folder(tmp_path / "src", {"cats": 4, "dogs": 3})
    dataset = import_zip(project, zip_of_folder(folder), tmp_path)
    assert dataset.status == Dataset.Status.READY
    assert dataset.class_counts == {"cats": 4, "dogs": 3}
    assert dataset.image_count == 7
    assert len(dataset.fingerprint) == 64
    assert sorted(p.name for p in dataset.path.iterdir()) == ["cats", "dogs"]
    assert not (data_dir / "incoming" / f"dataset-{dataset.pk}.zip").exists()


def test_it_keeps_the_import_scans_hashes_for_the_folder_it_moved_in(project, data_dir, tmp_path):
    from classifier.data import hash_cache_path

    folder = image_folder(tmp_path / "src", {"cats": 2, "dogs": 2})
    dataset = import_zip(project, zip_of_folder(folder), tmp_path)
    refused = import_zip(project, b"not a zip", tmp_path, name="broken")

    assert refused.status == Dataset.Status.FAILED
    # One file, for the dataset's own folder: none left behind for the staging folders.
    assert list((data_dir / "cache" / "scans").iterdir()) == [
        hash_cache_path(data_dir / "cache", dataset.path)
    ]


def test_it_accepts_the_dataset_folder_zipped_as_a_whole(project, data_dir, tmp_path):
    folder = image_folder(tmp_path / "src", {"a": 2, "b": 2})
    dataset = import_zip(project, zip_of_folder(folder, prefix="flower_photos/"), tmp_path)
    assert dataset.class_counts == {"a": 2, "b": 2}


def test_it_reports_non_images_and_corrupt_files_but_imports_the_rest(project, data_dir, tmp_path):
    folder = image_folder(tmp_path / "src", {"a": 3, "b": 3})
    (folder / "a" / "notes.txt").write_text("hello")
    (folder / "b" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    (folder / "README.md").write_text("top-level file")
    dataset = import_zip(project, zip_of_folder(folder), tmp_path)
    assert dataset.status == Dataset.Status.READY
    assert dataset.class_counts == {"a": 3, "b": 3}
    reasons = {item["path"]: item["reason"] for item in dataset.rejected}
    assert "not a JPEG" in reasons["a/notes.txt"]
    assert "not inside a class folder" in reasons["README.md"]
    assert any("broken" in path for path in reasons)
    assert not list(dataset.path.rglob("broken*"))


def test_it_refuses_a_zip_with_the_wrong_layout_and_keeps_nothing(project, data_dir, tmp_path):
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zf:
        zf.writestr("one.jpg", jpeg_bytes())
        zf.writestr("two.jpg", jpeg_bytes())
    dataset = import_zip(project, buffer.getvalue(), tmp_path)
    assert dataset.status == Dataset.Status.FAILED
    assert "one folder per class" in dataset.error
    assert not dataset.path.exists()
    assert not list((data_dir / "datasets").rglob("*.jpg"))


def test_it_skips_zip_slip_entries_and_links(project, data_dir, tmp_path):
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zf:
        for name in ("a/1.jpg", "a/2.jpg", "b/1.jpg", "b/2.jpg"):
            zf.writestr(name, jpeg_bytes())
        zf.writestr("../../evil.jpg", jpeg_bytes())
        zf.writestr("/etc/evil.jpg", jpeg_bytes())
        link = zipfile.ZipInfo("a/link.jpg")
        link.external_attr = (stat.S_IFLNK | 0o777) << 16
        zf.writestr(link, "/etc/passwd")
    dataset = import_zip(project, buffer.getvalue(), tmp_path)
    assert dataset.status == Dataset.Status.READY
    assert dataset.class_counts == {"a": 2, "b": 2}
    reasons = " ".join(item["reason"] for item in dataset.rejected)
    assert "unsafe path" in reasons
    assert "symbolic links" in reasons
    assert not (data_dir.parent / "evil.jpg").exists()
    assert not list(data_dir.rglob("evil.jpg"))


def test_it_refuses_a_zip_bomb(project, data_dir, tmp_path):
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("a/1.jpg", jpeg_bytes())
        zf.writestr("b/1.jpg", jpeg_bytes())
        zf.writestr("b/bomb.jpg", b"\0" * (20 * 2**20))
    dataset = import_zip(project, buffer.getvalue(), tmp_path)
    assert dataset.status == Dataset.Status.FAILED
    assert "zip bomb" in dataset.error
    assert not dataset.path.exists()


def test_it_refuses_a_zip_that_unpacks_beyond_the_limit(project, data_dir, tmp_path, settings):
    settings.GRAFT_MAX_UNZIPPED_MB = 1
    folder = image_folder(tmp_path / "src", {"a": 2, "b": 2}, size=(900, 900))
    dataset = import_zip(project, zip_of_folder(folder), tmp_path)
    assert dataset.status == Dataset.Status.FAILED
    assert "limit" in dataset.error


def test_it_refuses_something_that_is_not_a_zip(project, data_dir, tmp_path):
    dataset = import_zip(project, b"this is not a zip", tmp_path)
    assert dataset.status == Dataset.Status.FAILED
    assert "not a readable zip" in dataset.error


def test_it_refuses_a_zip_over_the_upload_limit_before_creating_anything(
    project, data_dir, tmp_path, settings
):
    settings.GRAFT_MAX_ZIP_MB = 1
    with pytest.raises(ValidationError, match="larger than the limit"):
        import_zip(project, b"x" * (2 * 2**20), tmp_path)
    assert not Dataset.objects.exists()


def test_it_refuses_a_duplicate_dataset_name(project, data_dir, tmp_path):
    folder = image_folder(tmp_path / "src")
    import_zip(project, zip_of_folder(folder), tmp_path)
    with pytest.raises(ValidationError, match="already has a dataset"):
        import_zip(project, zip_of_folder(folder), tmp_path)


def test_it_imports_a_server_folder_only_under_an_allowed_root(project, data_dir, tmp_path):
    folder = image_folder(tmp_path / "allowed" / "set")
    with pytest.raises(ValidationError, match="outside"):
        services.dataset_import_directory(
            project=project,
            name="x",
            source_dir=folder,
            allowed_roots=[tmp_path / "elsewhere"],
            background=False,
        )
    dataset = services.dataset_import_directory(
        project=project,
        name="x",
        source_dir=folder,
        allowed_roots=[tmp_path / "allowed"],
        background=False,
    )
    assert dataset.class_counts == {"a": 6, "b": 6}


def test_it_fails_a_url_import_with_a_clear_message_when_offline(project, data_dir, monkeypatch):
    def offline(*args, **kwargs):
        raise OSError("Network is unreachable")

    monkeypatch.setattr("urllib.request.urlopen", offline)
    dataset = services.dataset_import_url(project=project, name="flowers", background=False)
    assert dataset.status == Dataset.Status.FAILED
    assert "flower_photos.tgz" in dataset.error
    assert "internet" in dataset.error


def _serve_flower_photos_tgz(tmp_path: Path, monkeypatch, *, licence: bool = False) -> None:
    """Answer the flower_photos URL with a small tgz laid out as TensorFlow's."""
    import tarfile

    folder = image_folder(tmp_path / "flower_photos", {"daisy": 2, "roses": 2})
    if licence:
        (folder / "LICENSE.txt").write_text("CC-BY")
    archive = tmp_path / "flower_photos.tgz"
    with tarfile.open(archive, "w:gz") as tf:
        tf.add(folder, arcname="flower_photos")
    monkeypatch.setattr(
        "urllib.request.urlopen",
        lambda url, timeout: archive.open("rb"),  # noqa: SIM115 - urlopen is used as a context
    )


def test_it_imports_a_tgz_from_a_url(project, data_dir, tmp_path, monkeypatch):
    _serve_flower_photos_tgz(tmp_path, monkeypatch)
    dataset = services.dataset_import_url(project=project, name="flowers", background=False)
    assert dataset.status == Dataset.Status.READY
    assert dataset.class_counts == {"daisy": 2, "roses": 2}


def test_it_adds_photos_class_by_class_and_rejects_bad_ones(project, data_dir):
    dataset = services.dataset_create_empty(project=project, name="manual")
    report = services.dataset_add_images(
        dataset=dataset,
        class_name="red",
        files=[("r1.jpg", jpeg_bytes()), ("r2.jpg", jpeg_bytes()), ("x.txt", b"no")],
    )
    services.dataset_add_images(
        dataset=dataset, class_name="blue", files=[("b.jpg", jpeg_bytes((0, 0, 200)))] * 2
    )
    dataset.refresh_from_db()
    assert report.written == 2
    assert [name for name, _ in report.rejected] == ["x.txt"]
    assert dataset.class_counts == {"blue": 2, "red": 2}
    assert dataset.fingerprint


@pytest.mark.parametrize("bad", ["../up", ".hidden", "a/b", ""])
def test_it_refuses_class_names_users_could_not_type(project, data_dir, bad):
    dataset = services.dataset_create_empty(project=project, name="manual")
    with pytest.raises(ValidationError):
        services.dataset_add_images(
            dataset=dataset, class_name=bad, files=[("a.jpg", jpeg_bytes())]
        )


def test_it_strips_a_wrapping_folder_that_also_holds_a_licence(project, data_dir, tmp_path):
    # TensorFlow's flower_photos.tgz holds flower_photos/LICENSE.txt beside the class folders.
    folder = image_folder(tmp_path / "src", {"daisy": 2, "roses": 2})
    (folder / "LICENSE.txt").write_text("CC-BY")
    dataset = import_zip(project, zip_of_folder(folder, prefix="flower_photos/"), tmp_path)
    assert dataset.status == Dataset.Status.READY, dataset.error
    assert dataset.class_counts == {"daisy": 2, "roses": 2}
    reasons = {item["path"]: item["reason"] for item in dataset.rejected}
    assert "not inside a class folder" in reasons["flower_photos/LICENSE.txt"]


def test_it_imports_the_flower_photos_tgz_with_its_licence(
    project, data_dir, tmp_path, monkeypatch
):
    _serve_flower_photos_tgz(tmp_path, monkeypatch, licence=True)
    dataset = services.dataset_import_url(project=project, name="flowers", background=False)
    assert dataset.status == Dataset.Status.READY, dataset.error
    assert dataset.class_counts == {"daisy": 2, "roses": 2}


def test_it_adds_no_empty_class_when_every_photo_is_refused(project, data_dir):
    dataset = services.dataset_create_empty(project=project, name="manual")
    for name in ("red", "blue"):
        services.dataset_add_images(
            dataset=dataset,
            class_name=name,
            files=[(f"{name}{i}.jpg", jpeg_bytes()) for i in (1, 2)],
        )
    report = services.dataset_add_images(
        dataset=dataset, class_name="green", files=[("notes.txt", b"no"), ("x.jpg", b"broken")]
    )
    dataset.refresh_from_db()
    assert report.written == 0
    assert dataset.class_counts == {"blue": 2, "red": 2}
    assert not (dataset.path / "green").exists()


def test_it_reads_accented_class_names_zipped_on_a_mac(project, data_dir, tmp_path):
    # macOS writes names decomposed (e + combining accent), and its Archive Utility stores
    # them as UTF-8 without the zip flag that says so.
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zf:
        for name in ("cafe\u0301/1.jpg", "cafe\u0301/2.jpg", "XXXXX/1.jpg", "XXXXX/2.jpg"):
            zf.writestr(name, jpeg_bytes())
    unflagged = buffer.getvalue().replace(b"XXXXX", "The\u0301".encode())
    assert len(unflagged) == len(buffer.getvalue())
    dataset = import_zip(project, unflagged, tmp_path)
    assert dataset.status == Dataset.Status.READY, dataset.error
    assert dataset.class_counts == {"café": 2, "Thé": 2}
    report = services.dataset_add_images(
        dataset=dataset, class_name="café", files=[("3.jpg", jpeg_bytes())]
    )
    dataset.refresh_from_db()
    assert report.written == 1
    assert dataset.class_counts == {"café": 3, "Thé": 2}


def test_class_names_that_differ_only_in_case_are_one_class(project, data_dir, tmp_path):
    # Windows and macOS cannot even hold both folders; a person means one class.
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zf:
        for name in ("Roses/1.jpg", "roses/2.jpg", "ROSES/3.jpg", "tulips/1.jpg"):
            zf.writestr(name, jpeg_bytes())
    dataset = import_zip(project, buffer.getvalue(), tmp_path)
    assert dataset.status == Dataset.Status.READY, dataset.error
    assert dataset.class_counts == {"Roses": 3, "tulips": 1}

    services.dataset_add_images(
        dataset=dataset, class_name="ROSES", files=[("4.jpg", jpeg_bytes())]
    )
    services.dataset_add_images(
        dataset=dataset, class_name="Tulips", files=[("2.jpg", jpeg_bytes())]
    )
    dataset.refresh_from_db()
    assert dataset.class_counts == {"Roses": 4, "tulips": 2}
    assert sorted(p.name for p in dataset.path.iterdir()) == ["Roses", "tulips"]


@pytest.mark.parametrize("when", ["before the photos are written", "while they are written"])
def test_photos_added_while_the_dataset_is_deleted_leave_nothing_behind(
    project, data_dir, monkeypatch, when, django_capture_on_commit_callbacks
):
    dataset = services.dataset_create_empty(project=project, name="manual")
    services.dataset_add_images(dataset=dataset, class_name="red", files=[("r.jpg", jpeg_bytes())])
    folder = dataset.path
    real_write = services.dataset_files.write_uploads

    def deleted_meanwhile(files, class_dir, limits, report):
        files = iter(files)
        if when == "while they are written":
            real_write([next(files)], class_dir, limits, report)
        with django_capture_on_commit_callbacks(execute=True):  # as if it had committed
            services.dataset_delete(dataset=Dataset.objects.get(pk=dataset.pk))
        assert not folder.exists()
        real_write(files, class_dir, limits, report)  # recreates the folder

    monkeypatch.setattr(services.dataset_files, "write_uploads", deleted_meanwhile)

    with pytest.raises(ValidationError, match="was deleted meanwhile"):
        services.dataset_add_images(
            dataset=dataset, class_name="blue", files=[("b1.jpg", jpeg_bytes())] * 2
        )

    assert not Dataset.objects.exists()
    assert not folder.exists()


def _zip_of_four(compression: int = zipfile.ZIP_STORED) -> bytearray:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=compression) as zf:
        for name in ("a/1.jpg", "a/2.jpg", "a/3.jpg", "b/1.jpg", "b/2.jpg"):
            zf.writestr(name, jpeg_bytes())
    return bytearray(buffer.getvalue())


@pytest.mark.parametrize("compression", [zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED])
def test_it_skips_an_entry_damaged_in_the_zip_and_imports_the_rest(
    project, data_dir, tmp_path, compression
):
    data = _zip_of_four(compression)
    data[len(b"PK\x03\x04") + 26 + len("a/1.jpg") + 40] ^= 0xFF  # inside a/1.jpg's data
    dataset = import_zip(project, bytes(data), tmp_path)
    assert dataset.status == Dataset.Status.READY, dataset.error
    assert dataset.class_counts == {"a": 2, "b": 2}
    reasons = {item["path"]: item["reason"] for item in dataset.rejected}
    assert "damaged" in reasons["a/1.jpg"]
    assert not (dataset.path / "a" / "1.jpg").exists()


def test_it_refuses_a_password_protected_zip_in_words(project, data_dir, tmp_path):
    data = _zip_of_four()
    for header, flags_at in ((b"PK\x03\x04", 6), (b"PK\x01\x02", 8)):
        start = 0
        while (start := data.find(header, start)) != -1:
            data[start + flags_at] |= 0x1  # "encrypted"
            start += 1
    dataset = import_zip(project, bytes(data), tmp_path)
    assert dataset.status == Dataset.Status.FAILED
    assert "password" in dataset.error
    assert "unexpectedly" not in dataset.error
    assert not dataset.path.exists()


def test_it_refuses_a_zip_compressed_with_an_unsupported_method_in_words(
    project, data_dir, tmp_path
):
    data = _zip_of_four()
    for header, method_at in ((b"PK\x03\x04", 8), (b"PK\x01\x02", 10)):
        start = 0
        while (start := data.find(header, start)) != -1:
            data[start + method_at] = 9  # Deflate64, which Windows uses for large zips
            start += 1
    dataset = import_zip(project, bytes(data), tmp_path)
    assert dataset.status == Dataset.Status.FAILED
    assert "deflate" in dataset.error
    assert "unexpectedly" not in dataset.error
    assert not dataset.path.exists()


@pytest.fixture
def web_server(tmp_path):
    """A real HTTP server on 127.0.0.1 serving ``tmp_path / "www"``; yields its base URL."""
    import http.server
    import threading
    from functools import partial

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args) -> None:
            pass

    root = tmp_path / "www"
    root.mkdir()
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), partial(Quiet, directory=root))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}"
    server.shutdown()
    server.server_close()
    thread.join(timeout=10)


def _flowers_tgz(tmp_path: Path) -> bytes:
    import tarfile

    folder = image_folder(tmp_path / "flower_photos", {"daisy": 3, "roses": 3})
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tf:
        tf.add(folder, arcname="flower_photos")
    return buffer.getvalue()


def test_it_refuses_a_tgz_download_cut_short_in_words(
    project, data_dir, tmp_path, web_server, caplog
):
    data = _flowers_tgz(tmp_path)
    (tmp_path / "www" / "flower_photos.tgz").write_bytes(data[: len(data) // 2])
    url = f"{web_server}/flower_photos.tgz"
    dataset = services.dataset_import_url(
        project=project, name="flowers", url=url, background=False
    )
    assert dataset.status == Dataset.Status.FAILED
    assert "damaged or cut short" in dataset.error
    assert "unexpectedly" not in dataset.error
    assert not [r for r in caplog.records if r.exc_info]  # no traceback in the log
    assert not dataset.path.exists()
    assert not list(dataset.path.parent.iterdir())  # no staging or download left behind


def test_it_says_which_http_error_a_url_import_got(project, data_dir, web_server):
    url = f"{web_server}/not-there.tgz"
    dataset = services.dataset_import_url(
        project=project, name="flowers", url=url, background=False
    )
    assert dataset.status == Dataset.Status.FAILED
    assert url in dataset.error
    assert "404" in dataset.error
    assert "internet" not in dataset.error  # the server answered: the network is fine


def test_it_asks_about_the_network_when_a_url_cannot_be_reached(project, data_dir):
    dataset = services.dataset_import_url(
        project=project,
        name="flowers",
        url="http://127.0.0.1:9/flower_photos.tgz",
        background=False,
    )
    assert dataset.status == Dataset.Status.FAILED
    assert "http://127.0.0.1:9/flower_photos.tgz" in dataset.error
    assert "internet" in dataset.error
    assert "unexpectedly" not in dataset.error


def test_it_imports_a_tgz_downloaded_over_http(project, data_dir, tmp_path, web_server):
    (tmp_path / "www" / "flower_photos.tgz").write_bytes(_flowers_tgz(tmp_path))
    dataset = services.dataset_import_url(
        project=project, name="flowers", url=f"{web_server}/flower_photos.tgz", background=False
    )
    assert dataset.status == Dataset.Status.READY, dataset.error
    assert dataset.class_counts == {"daisy": 3, "roses": 3}


def _later():
    return timezone.now() + timedelta(seconds=settings.GRAFT_HEARTBEAT_TIMEOUT + 1)


def _start_zip_import(project, tmp_path: Path) -> Dataset:
    """A zip upload enqueued (on commit, which never comes here) like the upload page does."""
    folder = image_folder(tmp_path / "src", {"cats": 3, "dogs": 2})
    path = tmp_path / "photos.zip"
    path.write_bytes(zip_of_folder(folder))
    return services.dataset_import_zip(project=project, name="photos", upload=path)


def _die_halfway(dataset: Dataset) -> Dataset:
    """A worker claims the import, unpacks part of it, then dies (nothing tells the row)."""
    lost = services.dataset_import_claim(dataset_id=dataset.pk)
    half = dataset.path.parent / f".staging-{dataset.pk}-0dead0/cats/1.jpg"
    half.parent.mkdir(parents=True)
    half.write_bytes(jpeg_bytes())
    return lost


@pytest.mark.usefixtures("broker")  # imports start only while the queue is up
def test_it_retries_an_import_whose_worker_died_and_imports_it_once(project, data_dir, tmp_path):
    dataset = _start_zip_import(project, tmp_path)
    lost = _die_halfway(dataset)

    assert services.datasets_reconcile()["requeued"] == []  # silent, but not for long enough
    assert services.datasets_reconcile(now=_later())["requeued"] == [dataset.pk]
    dataset.refresh_from_db()
    assert dataset.status == Dataset.Status.IMPORTING
    assert "Attempt 1 was lost" in dataset.error
    # The lost attempt wakes up and finishes: it no longer holds the import, so it
    # changes nothing, and the zip stays for the retry.
    assert services.dataset_run_import(dataset=lost).status == Dataset.Status.IMPORTING
    assert not dataset.path.exists()
    assert (data_dir / "incoming" / f"dataset-{dataset.pk}.zip").is_file()

    assert import_dataset.apply(args=[dataset.pk]).get() == Dataset.Status.READY

    dataset.refresh_from_db()
    assert (dataset.attempts, dataset.error) == (2, "")
    assert dataset.class_counts == {"cats": 3, "dogs": 2}
    assert sorted(p.name for p in dataset.path.parent.iterdir()) == [str(dataset.pk)]
    assert not (data_dir / "incoming" / f"dataset-{dataset.pk}.zip").exists()
    assert import_dataset.apply(args=[dataset.pk]).get().startswith("skipped")


@pytest.mark.usefixtures("broker")
def test_it_fails_an_import_after_its_last_attempt_and_removes_its_files(
    project, data_dir, tmp_path, settings, django_capture_on_commit_callbacks
):
    settings.GRAFT_JOB_MAX_ATTEMPTS = 1
    dataset = _start_zip_import(project, tmp_path)
    _die_halfway(dataset)

    with django_capture_on_commit_callbacks(execute=True):
        report = services.datasets_reconcile(now=_later())

    assert report == {"requeued": [], "failed": [dataset.pk], "reenqueued": []}
    dataset.refresh_from_db()
    assert dataset.status == Dataset.Status.FAILED
    assert "stopped answering on each of its 1 attempt " in dataset.error
    assert "import it again" in dataset.error
    assert not list(dataset.path.parent.iterdir())
    assert not (data_dir / "incoming" / f"dataset-{dataset.pk}.zip").exists()
    assert import_dataset.apply(args=[dataset.pk]).get().startswith("skipped")
    assert services.datasets_reconcile(now=_later())["failed"] == []


@pytest.mark.usefixtures("broker")
def test_it_reenqueues_an_import_whose_message_was_lost(project, data_dir, tmp_path):
    dataset = _start_zip_import(project, tmp_path)  # its message never reached the broker

    assert services.datasets_reconcile()["reenqueued"] == []  # too recent to judge
    assert services.datasets_reconcile(now=_later())["reenqueued"] == [dataset.pk]
    dataset.refresh_from_db()
    assert dataset.status == Dataset.Status.IMPORTING


@pytest.mark.usefixtures("broker")
def test_it_leaves_an_import_alone_while_its_worker_beats(project, data_dir, tmp_path):
    dataset = _start_zip_import(project, tmp_path)
    held = services.dataset_import_claim(dataset_id=dataset.pk)
    assert services.dataset_import_claim(dataset_id=dataset.pk) is None  # held once

    services.dataset_import_beat(dataset=held)

    assert services.datasets_reconcile() == {"requeued": [], "failed": [], "reenqueued": []}
    assert services.dataset_run_import(dataset=held).status == Dataset.Status.READY


# --- Deleting ---------------------------------------------------------------------------


def _imported(project, tmp_path: Path, name: str) -> Dataset:
    """A ready dataset imported from a zip and rescanned (as adding photos or training
    does), so its folder and its folder's scan hash cache are on disk."""
    folder = image_folder(tmp_path / f"src-{name}", {"cats": 2, "dogs": 2})
    dataset = services.dataset_refresh(
        dataset=import_zip(project, zip_of_folder(folder), tmp_path, name=name)
    )
    assert _scan_cache(dataset).is_file()
    return dataset


def _scan_cache(dataset: Dataset) -> Path:
    from classifier.data import hash_cache_path

    return hash_cache_path(Path(settings.GRAFT_DATA_DIR) / "cache", dataset.path)


def test_it_deletes_a_dataset_with_its_files_and_leaves_the_others(
    project, data_dir, tmp_path, django_capture_on_commit_callbacks
):
    dataset = _imported(project, tmp_path, "photos")
    other = _imported(project, tmp_path, "others")
    staging = dataset.path.parent / f".staging-{dataset.pk}-0dead0"
    staging.mkdir()
    upload = data_dir / "incoming" / f"dataset-{dataset.pk}.zip"
    upload.parent.mkdir(exist_ok=True)
    upload.write_bytes(b"PK")
    features = data_dir / "cache" / "features" / "key" / "shard-0.npz"
    features.parent.mkdir(parents=True)
    features.write_bytes(b"shared by every dataset")

    with django_capture_on_commit_callbacks() as callbacks:
        services.dataset_delete(dataset=dataset)
    assert dataset.path.is_dir()  # the files wait for the commit
    for callback in callbacks:
        callback()

    assert not Dataset.objects.filter(pk=dataset.pk).exists()
    assert not dataset.path.exists()
    assert not staging.exists()
    assert not upload.exists()
    assert not _scan_cache(dataset).exists()
    assert features.is_file()
    assert sorted(p.name for p in other.path.iterdir()) == ["cats", "dogs"]
    assert _scan_cache(other).is_file()


def test_it_deletes_a_failed_import(
    project, data_dir, tmp_path, django_capture_on_commit_callbacks
):
    dataset = import_zip(project, b"not a zip", tmp_path)
    assert dataset.status == Dataset.Status.FAILED

    with django_capture_on_commit_callbacks(execute=True):
        services.dataset_delete(dataset=dataset)

    assert not Dataset.objects.exists()


def test_it_refuses_to_delete_a_dataset_while_it_imports(project, data_dir):
    dataset = make_dataset(project, status=Dataset.Status.IMPORTING)
    dataset.path.mkdir(parents=True)

    with pytest.raises(ValidationError, match="still importing"):
        services.dataset_delete(dataset=dataset)

    assert Dataset.objects.filter(pk=dataset.pk).exists()
    assert dataset.path.is_dir()


@pytest.mark.parametrize("status", ["queued", "running"])
def test_it_refuses_to_delete_a_dataset_a_job_is_training_on(project, data_dir, status):
    dataset = make_dataset(project)
    dataset.path.mkdir(parents=True)
    job = make_job(project, dataset, status=status)

    with pytest.raises(ValidationError) as refused:
        services.dataset_delete(dataset=dataset)

    assert refused.value.messages == [
        f"Job #{job.pk} on dataset “photos” is queued or running; cancel it, then delete "
        "the dataset once stopped."
    ]
    assert Dataset.objects.filter(pk=dataset.pk).exists()
    assert dataset.path.is_dir()


def test_it_keeps_a_dataset_as_training_history_and_names_it(project, data_dir):
    dataset = make_dataset(project)
    dataset.path.mkdir(parents=True)
    jobs = [make_job(project, dataset, status=s) for s in ("succeeded", "failed")]
    make_version(project, 1, job=jobs[0], dataset=dataset)
    make_version(project, 2, dataset=dataset)  # its job since deleted

    with pytest.raises(ValidationError) as refused:
        services.dataset_delete(dataset=dataset)

    assert refused.value.messages == [
        f"Dataset “photos” is kept as training history: versions v1, v2 and jobs "
        f"#{jobs[0].pk}, #{jobs[1].pk} learned from it, and their pages show its photos. "
        "Delete those first (jobs in the admin) to delete the dataset."
    ]
    assert Dataset.objects.filter(pk=dataset.pk).exists()
    assert dataset.path.is_dir()


def test_it_keeps_a_folder_another_dataset_names(
    project, data_dir, django_capture_on_commit_callbacks
):
    dataset = make_dataset(project, "photos", directory="datasets/flowers/shared")
    make_dataset(project, "copy", directory="datasets/flowers/shared")
    dataset.path.mkdir(parents=True)

    with django_capture_on_commit_callbacks(execute=True):
        services.dataset_delete(dataset=dataset)

    assert not Dataset.objects.filter(pk=dataset.pk).exists()
    assert dataset.path.is_dir()


def test_it_keeps_a_dataset_a_job_was_started_on_since_the_check(project, data_dir, monkeypatch):
    dataset = make_dataset(project)
    dataset.path.mkdir(parents=True)
    make_job(project, dataset)
    monkeypatch.setattr(services.selectors, "dataset_delete_refusal", lambda dataset: "")

    with pytest.raises(ValidationError, match="A training job started on dataset “photos”"):
        services.dataset_delete(dataset=dataset)

    assert Dataset.objects.filter(pk=dataset.pk).exists()
    assert dataset.path.is_dir()
