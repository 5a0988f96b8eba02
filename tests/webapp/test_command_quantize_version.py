"""manage.py quantize_version PROJECT_SLUG NUMBER [--force]."""

from __future__ import annotations

import io
import json

import pytest
from django.core.management import CommandError, call_command

from classifier.errors import DatasetError
from tests.factories import make_dataset, make_project, make_version
from tests.int8 import FakeQuantize, int8_record
from webapp.models import ModelVersion


@pytest.fixture
def version(db, data_dir) -> ModelVersion:
    project = make_project()
    version = make_version(project, 3, dataset=make_dataset(project))
    version.path.mkdir(parents=True)
    (version.path / "model.tflite").write_bytes(b"model")
    (version.path / "metadata.json").write_text(json.dumps({"files": {}}))
    return version


def run(*args: str) -> dict:
    out = io.StringIO()
    call_command("quantize_version", *args, stdout=out)
    return json.loads(out.getvalue())


def test_it_quantizes_here_and_prints_the_record(version, monkeypatch):
    fake = FakeQuantize().install(monkeypatch)

    printed = run("flowers", "3")

    assert printed == int8_record()
    assert fake.calls[0]["force"] is False
    version.refresh_from_db()
    assert version.int8 == printed
    assert "model.int8.tflite" in version.files


def test_it_prints_an_existing_record_without_quantizing_again(version, monkeypatch):
    fake = FakeQuantize().install(monkeypatch)
    run("flowers", "3")

    assert run("flowers", "3") == int8_record()
    assert len(fake.calls) == 1


def test_it_quantizes_again_with_force(version, monkeypatch):
    fake = FakeQuantize().install(monkeypatch)
    run("flowers", "3")
    fake.record = int8_record(accepted=False)

    printed = run("flowers", "3", "--force")

    assert [call["force"] for call in fake.calls] == [False, True]
    assert printed["accepted"] is False


def test_it_fails_with_the_reason_when_the_version_cannot_be_quantized(version, monkeypatch):
    FakeQuantize(error=DatasetError("The version's photos are not in /data.")).install(monkeypatch)
    out = io.StringIO()

    with pytest.raises(CommandError, match="could not be quantized: The version's photos"):
        call_command("quantize_version", "flowers", "3", stdout=out)

    assert json.loads(out.getvalue())["failed"] is True
    version.refresh_from_db()
    assert version.int8["reason"] == "The version's photos are not in /data."


def test_it_refuses_an_unknown_version(version, monkeypatch):
    fake = FakeQuantize().install(monkeypatch)

    with pytest.raises(CommandError, match="No version 9 in a project with slug 'flowers'"):
        call_command("quantize_version", "flowers", "9", stdout=io.StringIO())

    assert fake.calls == []
