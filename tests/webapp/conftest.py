from __future__ import annotations

from pathlib import Path

import pytest
from django.contrib.auth.models import User
from django.test import Client

from tests.factories import make_dataset, make_project, role_group


def _user(username: str, *, groups: tuple[str, ...] = (), **flags) -> User:
    user = User.objects.create_user(username=username, password="pw-" + username, **flags)
    for name in groups:
        user.groups.add(role_group(name))
    return user


@pytest.fixture
def project(db):
    """A project named Flowers (some modules define their own)."""
    return make_project("Flowers")


@pytest.fixture
def dataset(project):
    """A dataset "photos" of ``project``."""
    return make_dataset(project, "photos")


@pytest.fixture
def admin_user(db) -> User:
    return _user("alice", is_staff=True, is_superuser=True)


@pytest.fixture
def trainer(db) -> User:
    return _user("trent", groups=("Trainers",))


@pytest.fixture
def manager(db) -> User:
    return _user("maria", groups=("Version managers",))


@pytest.fixture
def viewer(db) -> User:
    return _user("victor")


@pytest.fixture
def outsider(db) -> User:
    """Logged in and without permissions, like ``viewer``, but another person."""
    return _user("oscar")


def _client_for(user: User) -> Client:
    client = Client()
    client.force_login(user)
    return client


@pytest.fixture
def admin_client(admin_user) -> Client:
    return _client_for(admin_user)


@pytest.fixture
def trainer_client(trainer) -> Client:
    return _client_for(trainer)


@pytest.fixture
def manager_client(manager) -> Client:
    return _client_for(manager)


@pytest.fixture
def viewer_client(viewer) -> Client:
    return _client_for(viewer)


@pytest.fixture
def outsider_client(outsider) -> Client:
    return _client_for(outsider)


# --- Serving and API (issue 6): tiny exported versions, served projects, token clients ---

SERVED_LABELS = {1: ["cat", "dog", "eel"], 2: ["ant", "bee", "cow"]}


@pytest.fixture(scope="session")
def tiny_version_dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[int, Path]:
    """Two real exported versions (32x32 LiteRT models), built once per session.

    Version 1 answers with ``SERVED_LABELS[1]``, version 2 (other weights) with
    ``SERVED_LABELS[2]``, so an answer's labels tell which version gave it.
    """
    pytest.importorskip("tensorflow")
    from classifier.config import TrainConfig
    from classifier.export import export_version
    from tests.classifier.conftest import TINY_SIZE, tiny_classifier

    root = tmp_path_factory.mktemp("served-versions")
    dirs = {}
    for number, labels in SERVED_LABELS.items():
        dirs[number] = export_version(
            tiny_classifier(len(labels), seed=number),
            root / f"v{number}",
            class_names=labels,
            config=TrainConfig(image_size=TINY_SIZE, weights="none", epochs=1),
            metrics={"val_accuracy": 0.5},
            history=[],
            dataset={},
        )
    return dirs


@pytest.fixture
def served_project(data_dir: Path, tiny_version_dirs: dict[int, Path], db):
    """Project "flowers" with versions 1 (active) and 2 (inactive), files under data_dir."""
    from webapp import predictor
    from webapp.models import ModelVersion, Project
    from webapp.services import model_version_activate

    predictor.cache().clear()
    project = Project.objects.create(name="Flowers", slug="flowers")
    for number, source in tiny_version_dirs.items():
        target = data_dir / "models" / project.slug / f"v{number}"
        target.parent.mkdir(parents=True, exist_ok=True)
        target.symlink_to(source, target_is_directory=True)
        ModelVersion.objects.create(
            project=project,
            number=number,
            directory=f"models/{project.slug}/v{number}",
            class_names=SERVED_LABELS[number],
            image_size=32,
        )
    model_version_activate(version=project.versions.get(number=1))
    yield project
    predictor.cache().clear()


def token_client(user: User):
    """A DRF test client that sends ``Authorization: Token <key>`` for ``user``."""
    from rest_framework.authtoken.models import Token
    from rest_framework.test import APIClient

    client = APIClient()
    token, _ = Token.objects.get_or_create(user=user)
    client.credentials(HTTP_AUTHORIZATION=f"Token {token.key}")
    return client


def documented(schema: dict, ref: dict, body: object) -> None:
    """Raises unless ``body`` fits the OpenAPI schema ``ref`` (resolved in ``schema``)."""
    import jsonschema

    jsonschema.validate(body, _json_schema({**ref, "components": schema["components"]}))


def _json_schema(node: object) -> object:
    """OpenAPI 3.0's ``nullable: true`` in JSON Schema's words."""
    if isinstance(node, list):
        return [_json_schema(item) for item in node]
    if not isinstance(node, dict):
        return node
    converted = {key: _json_schema(value) for key, value in node.items() if key != "nullable"}
    return {"anyOf": [converted, {"type": "null"}]} if node.get("nullable") else converted


@pytest.fixture
def viewer_api(viewer):
    return token_client(viewer)


@pytest.fixture
def outsider_api(outsider):
    return token_client(outsider)


@pytest.fixture
def trainer_api(trainer):
    return token_client(trainer)


@pytest.fixture
def manager_api(manager):
    return token_client(manager)


@pytest.fixture
def upload_reads(monkeypatch) -> list[int]:
    """The sizes of every ``read()`` a view makes of an uploaded file (the test client's own
    uploads are not counted): proves a view checks a size before it reads the bytes."""
    from django.core.files.uploadedfile import InMemoryUploadedFile, SimpleUploadedFile

    reads: list[int] = []

    def spy(upload):
        def read_and_count(*args):
            data = upload.file.read(*args)
            if not isinstance(upload, SimpleUploadedFile):  # the view's, not the client's
                reads.append(len(data))
            return data

        return read_and_count

    monkeypatch.setattr(InMemoryUploadedFile, "read", property(spy))
    return reads
