"""Constraints that the database itself enforces."""

from __future__ import annotations

import pytest
from django.db import IntegrityError, transaction

from tests.factories import make_project, make_version
from webapp.models import ActivationEvent, ModelVersion
from webapp.services import model_version_activate


@pytest.mark.django_db
def test_it_rejects_a_second_active_version_in_a_project():
    project = make_project()
    make_version(project, 1, is_active=True)
    with pytest.raises(IntegrityError), transaction.atomic():
        make_version(project, 2, is_active=True)


@pytest.mark.django_db
def test_it_allows_one_active_version_in_each_project():
    make_version(make_project("Flowers"), 1, is_active=True)
    make_version(make_project("Birds"), 1, is_active=True)
    assert ModelVersion.objects.filter(is_active=True).count() == 2


@pytest.mark.django_db
def test_it_rejects_a_duplicate_version_number_in_a_project():
    project = make_project()
    make_version(project, 1)
    with pytest.raises(IntegrityError), transaction.atomic():
        make_version(project, 1)


@pytest.mark.django_db
def test_it_moves_the_active_flag_and_audits_the_activation(admin_user, data_dir):
    project = make_project()
    v1 = make_version(project, 1, with_files=True)
    v2 = make_version(project, 2, with_files=True)
    model_version_activate(version=v1, user=admin_user)
    model_version_activate(version=v2, user=admin_user)
    v1.refresh_from_db()
    assert not v1.is_active
    assert project.active_version == v2
    events = list(
        ActivationEvent.objects.order_by("id").values_list("version_number", "previous_number")
    )
    assert events == [(1, None), (2, 1)]
