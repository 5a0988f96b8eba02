from __future__ import annotations

import pytest
from django.contrib.auth.models import Group, User
from django.test import Client


def _user(username: str, *, groups: tuple[str, ...] = (), **flags) -> User:
    user = User.objects.create_user(username=username, password="pw-" + username, **flags)
    for name in groups:
        user.groups.add(Group.objects.get(name=name))
    return user


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
