"""Version pages: metrics, downloads, and the confirmed, permission-checked, audited actions."""

from __future__ import annotations

import hashlib

import pytest
from django.urls import reverse

from tests.factories import make_dataset, make_job, make_project, make_version
from webapp.models import ActivationEvent, EpochRecord, ModelVersion
from webapp.services import model_version_activate

METRICS = {
    "accuracy": 0.75,
    "loss": 0.61,
    "class_names": ["cat", "dog"],
    "per_class": {
        "cat": {"precision": 0.8, "recall": 0.667, "f1": 0.727, "support": 6},
        "dog": {"precision": 0.7, "recall": 0.833, "f1": 0.761, "support": 6},
    },
    "confusion_matrix": [[4, 2], [1, 5]],
    "most_confident_wrong": [
        {"path": "cat/c1.jpg", "true": "cat", "predicted": "dog", "confidence": 0.93}
    ],
}


@pytest.fixture
def project(db):
    return make_project("Pets")


@pytest.fixture
def versions(project, data_dir):
    """v1 (active) and v2, each with artifact files on disk."""
    dataset = make_dataset(project, "pets", class_counts={"cat": 6, "dog": 6})
    made = []
    for number in (1, 2):
        job = make_job(project, dataset, status="succeeded", config={"epochs": 2})
        EpochRecord.objects.create(job=job, epoch=1, loss=0.9, val_loss=1.0, accuracy=0.5)
        version = make_version(
            project,
            number,
            job=job,
            dataset=dataset,
            class_names=["cat", "dog"],
            metrics=METRICS,
            val_accuracy=0.75,
            config={"alpha": 0.35, "image_size": 32, "epochs": 2, "head_units": [16]},
        )
        version.path.mkdir(parents=True)
        for name in ModelVersion.DOWNLOADS:
            (version.path / name).write_bytes(b"x" * 10)
        made.append(version)
    model_version_activate(version=made[0])
    return made


def test_it_shows_metrics_heat_map_mistakes_lineage_and_downloads(viewer_client, versions):
    v1 = versions[0]
    content = viewer_client.get(v1.get_absolute_url()).content.decode()
    assert 'id="active-badge"' in content
    assert "0.727" in content  # per-class F1
    assert "--share: 67" in content and "--share: 83" in content  # heat map row shares
    assert f"/datasets/{v1.dataset.pk}/thumb/cat/c1.jpg" in content
    assert "α 0.35 · 32 px · 2 epochs · head 16" in content
    assert reverse("version_download", args=["pets", 1, "model.tflite"]) in content
    assert v1.job.get_absolute_url() in content
    assert "Activated" in content  # the activation log


def _record_int8_copy(version: ModelVersion, record: dict) -> None:
    """The row as quantization leaves it: the record, and the int8 file's checksum."""
    digest = hashlib.sha256((version.path / "model.int8.tflite").read_bytes()).hexdigest()
    ModelVersion.objects.filter(pk=version.pk).update(
        int8=record, files={"model.int8.tflite": {"sha256": digest, "bytes": 10}}
    )


def test_it_shows_the_int8_record_and_whether_it_is_served(viewer_client, versions, settings):
    from tests.int8 import int8_record

    settings.GRAFT_INT8 = True
    _record_int8_copy(versions[0], int8_record())

    content = viewer_client.get(versions[0].get_absolute_url()).content.decode()

    assert 'id="int8-status">accepted' in content
    assert "int8 <strong>0.895</strong> vs float32 0.900" in content
    assert "drop 0.005, allowed 0.010" in content
    assert "0.980" in content  # top-1 agreement
    assert "100 for calibration, 60 for validation" in content
    assert "<th>In int8</th><td>all but the first depthwise convolution" in content
    assert "all layers 0.970; all but the first depthwise convolution 0.980)" in content
    assert "int8 accuracy is within 0.01 of float32." in content
    assert "int8 (GRAFT_INT8 is on and the int8 copy was accepted)" in content
    assert reverse("version_download", args=["pets", 1, "model.int8.tflite"]) in content


@pytest.mark.parametrize("damage", ["missing", "changed"])
def test_it_says_float32_serves_when_the_int8_file_is_missing_or_damaged(
    viewer_client, versions, settings, damage
):
    from tests.int8 import int8_record

    settings.GRAFT_INT8 = True
    _record_int8_copy(versions[0], int8_record())
    int8_file = versions[0].path / "model.int8.tflite"
    if damage == "missing":
        int8_file.unlink()
    else:
        int8_file.write_bytes(b"y" * 10)

    content = viewer_client.get(versions[0].get_absolute_url()).content.decode()

    assert "float32 (the int8 file is missing or damaged" in content
    assert "int8 (GRAFT_INT8 is on" not in content


def test_it_shows_a_refused_int8_copy_as_not_served(viewer_client, versions, settings):
    from tests.int8 import int8_record

    settings.GRAFT_INT8 = True
    ModelVersion.objects.filter(pk=versions[0].pk).update(int8=int8_record(accepted=False))

    content = viewer_client.get(versions[0].get_absolute_url()).content.decode()

    assert 'id="int8-status">not accepted' in content
    assert "int8 accuracy dropped by 0.05" in content
    assert "float32 (no accepted int8 copy)" in content


def test_it_says_int8_is_off_for_an_accepted_copy(viewer_client, versions, settings):
    from tests.int8 import int8_record

    settings.GRAFT_INT8 = False
    ModelVersion.objects.filter(pk=versions[0].pk).update(int8=int8_record())

    content = viewer_client.get(versions[0].get_absolute_url()).content.decode()

    assert "float32 (GRAFT_INT8 is off)" in content


@pytest.mark.parametrize("served", [True, False])
def test_it_says_what_graft_int8_auto_chose_and_why(viewer_client, versions, settings, served):
    from tests.int8 import int8_record

    settings.GRAFT_INT8 = served
    settings.GRAFT_INT8_AUTO = "why auto chose"
    _record_int8_copy(versions[0], int8_record())

    content = viewer_client.get(versions[0].get_absolute_url()).content.decode()

    if served:
        assert "int8 (GRAFT_INT8 is auto: why auto chose, and the int8 copy was" in content
    else:
        assert "float32 (GRAFT_INT8 is auto: why auto chose)" in content


def test_it_shows_why_no_int8_copy_was_made(viewer_client, versions):
    reason = "The version's photos are not in /data."
    ModelVersion.objects.filter(pk=versions[0].pk).update(
        int8={"accepted": False, "file": None, "failed": True, "reason": reason}
    )

    content = viewer_client.get(versions[0].get_absolute_url()).content.decode()

    assert 'id="int8-status">not made' in content
    assert "The version&#x27;s photos are not in /data." in content
    assert "vs float32" not in content


def test_it_shows_nothing_about_int8_without_a_record(viewer_client, versions):
    content = viewer_client.get(versions[0].get_absolute_url()).content.decode()

    assert 'id="int8"' not in content


def test_it_lists_versions_per_project(viewer_client, versions):
    content = viewer_client.get(reverse("project_detail", args=["pets"])).content.decode()
    assert versions[1].get_absolute_url() in content
    assert "badge-active" in content
    assert "α 0.35" in content


def test_it_downloads_artifacts(viewer_client, versions):
    response = viewer_client.get(reverse("version_download", args=["pets", 2, "model.keras"]))
    assert response.status_code == 200
    assert b"".join(response.streaming_content) == b"x" * 10
    assert 'filename="pets-v2-model.keras"' in response["Content-Disposition"]


@pytest.mark.parametrize(
    "args", [("pets", 2, "secret.txt"), ("pets", 9, "model.keras"), ("other", 1, "model.keras")]
)
def test_it_returns_404_for_unknown_files_and_versions(viewer_client, versions, args):
    make_project("Other")
    assert viewer_client.get(reverse("version_download", args=args)).status_code == 404


def test_it_hides_a_version_under_another_project(viewer_client, versions):
    make_project("Other")
    assert viewer_client.get(reverse("version_detail", args=["other", 1])).status_code == 404


def test_it_shows_actions_to_managers_only(viewer_client, manager_client, versions):
    url = versions[1].get_absolute_url()
    assert b'id="version-actions"' not in viewer_client.get(url).content
    assert b'id="version-actions"' in manager_client.get(url).content


@pytest.mark.parametrize(
    "name,args",
    [
        ("version_activate", ["pets", 2]),
        ("version_delete", ["pets", 2]),
        ("project_rollback", ["pets"]),
    ],
)
def test_it_forbids_version_actions_without_the_permission(trainer_client, versions, name, args):
    url = reverse(name, args=args)
    assert trainer_client.get(url).status_code == 403
    assert trainer_client.post(url).status_code == 403
    assert ModelVersion.objects.get(is_active=True).number == 1
    assert ModelVersion.objects.count() == 2


@pytest.mark.parametrize(
    "name,args",
    [
        ("version_activate", ["pets", 2]),
        ("version_delete", ["pets", 2]),
        ("project_rollback", ["pets"]),
    ],
)
def test_it_refuses_other_methods_on_actions(manager_client, versions, name, args):
    assert manager_client.put(reverse(name, args=args)).status_code == 405


def test_it_confirms_then_activates_and_audits(manager_client, manager, versions):
    url = reverse("version_activate", args=["pets", 2])
    confirm = manager_client.get(url)
    assert b"Activate v2?" in confirm.content
    assert b"instead of v1" in confirm.content
    assert ModelVersion.objects.get(is_active=True).number == 1  # GET changes nothing

    response = manager_client.post(url, follow=True)
    assert ModelVersion.objects.get(is_active=True).number == 2
    event = ActivationEvent.objects.first()
    assert (event.action, event.version_number, event.previous_number, event.user) == (
        "activate",
        2,
        1,
        manager,
    )
    assert b"v2 is now active" in response.content


def test_it_refuses_to_activate_a_version_whose_model_file_is_missing(manager_client, versions):
    (versions[1].path / "model.tflite").unlink()

    response = manager_client.post(reverse("version_activate", args=["pets", 2]), follow=True)

    assert b"v2 cannot be activated: its files are missing or damaged" in response.content
    assert b"v1 stays active" in response.content
    assert ModelVersion.objects.get(is_active=True).number == 1


def test_it_rolls_back_to_the_previously_active_version(manager_client, versions):
    manager_client.post(reverse("version_activate", args=["pets", 2]))
    confirm = manager_client.get(reverse("project_rollback", args=["pets"]))
    assert b"Roll back from v2" in confirm.content
    response = manager_client.post(reverse("project_rollback", args=["pets"]), follow=True)
    assert ModelVersion.objects.get(is_active=True).number == 1
    assert ActivationEvent.objects.first().action == "rollback"
    assert b"Rolled back: v1 is active again" in response.content
    assert b"Rolled back" in response.content


def test_it_says_when_there_is_nothing_to_roll_back_to(manager_client, versions):
    response = manager_client.post(reverse("project_rollback", args=["pets"]), follow=True)
    assert b"no earlier active version" in response.content
    assert ModelVersion.objects.get(is_active=True).number == 1


def test_it_offers_no_rollback_when_nothing_came_before(manager_client, versions):
    """v1 is the first version ever active: the Roll back… buttons led to a confirm page
    whose button then answered "no earlier active version"."""
    project_page = manager_client.get(reverse("project_detail", args=["pets"])).content
    version_page = manager_client.get(versions[0].get_absolute_url()).content
    assert reverse("project_rollback", args=["pets"]).encode() not in project_page
    assert reverse("project_rollback", args=["pets"]).encode() not in version_page
    confirm = manager_client.get(reverse("project_rollback", args=["pets"])).content
    assert b'id="confirm-button"' not in confirm
    assert b"nothing to roll back to" in confirm


def test_it_names_the_version_a_rollback_returns_to(manager_client, versions):
    manager_client.post(reverse("version_activate", args=["pets", 2]))
    rollback = reverse("project_rollback", args=["pets"]).encode()
    assert rollback in manager_client.get(reverse("project_detail", args=["pets"])).content
    assert rollback in manager_client.get(versions[1].get_absolute_url()).content
    confirm = manager_client.get(reverse("project_rollback", args=["pets"])).content
    assert b"Roll back from v2 to v1" in confirm


def test_it_deletes_an_inactive_version_and_its_files(
    manager_client, versions, django_capture_on_commit_callbacks
):
    path = versions[1].path
    lock = path.parent / ".v2.quantize.lock"  # an int8 quantization's
    lock.write_bytes(b"")
    with django_capture_on_commit_callbacks(execute=True):
        response = manager_client.post(reverse("version_delete", args=["pets", 2]))
    assert response["Location"] == reverse("project_detail", args=["pets"])
    assert not ModelVersion.objects.filter(number=2).exists()
    assert not path.exists()
    assert not lock.exists()
    assert ActivationEvent.objects.first().action == "delete"


def test_it_never_deletes_the_active_version(manager_client, versions):
    response = manager_client.post(reverse("version_delete", args=["pets", 1]), follow=True)
    assert b"active version cannot be deleted" in response.content
    assert versions[0].path.exists()
    assert ModelVersion.objects.filter(number=1).exists()


def test_it_keeps_the_whole_activation_log_a_click_away(viewer_client, versions, project):
    for _ in range(30):  # 61 events in all with v1's first activation
        for version in (versions[1], versions[0]):
            model_version_activate(version=version)
    detail = viewer_client.get(project.get_absolute_url()).content.decode()
    url = reverse("project_activations", args=[project.slug])

    first = viewer_client.get(url).content.decode()
    second = viewer_client.get(url, {"page": 2}).content.decode()

    assert detail.count("<tr><td title=") == 10
    assert f'href="{url}">The whole log (61 events)' in detail
    assert first.count("<tr><td title=") == 50 and second.count("<tr><td title=") == 11
    assert "Page 2 of 2" in second


def test_it_links_no_whole_log_while_the_project_page_shows_it_all(viewer_client, versions):
    detail = viewer_client.get(versions[0].project.get_absolute_url()).content.decode()
    assert "The whole log" not in detail
    assert "v1" in detail
