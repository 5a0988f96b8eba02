"""Writes: every change to Graft's rows goes through a keyword-only function here.

Views, the API, management commands and Celery tasks are interfaces that call these.
Status transitions are conditional updates, so two callers racing cannot both win.
"""

from __future__ import annotations

from django.contrib.auth.models import AbstractBaseUser
from django.core.exceptions import ValidationError
from django.db import IntegrityError, transaction
from django.utils import timezone
from django.utils.text import slugify

from webapp.models import ActivationEvent, ModelVersion, Project


def project_create(
    *, name: str, description: str = "", user: AbstractBaseUser | None = None
) -> Project:
    """Create a project with a unique slug derived from its name."""
    name = name.strip()
    base = slugify(name)[:90]
    if not base:
        raise ValidationError({"name": "Use at least one letter or digit in the name."})
    slug, n = base, 2
    while Project.objects.filter(slug=slug).exists():
        slug, n = f"{base}-{n}", n + 1
    return Project.objects.create(name=name, slug=slug, description=description, created_by=user)


@transaction.atomic
def model_version_activate(
    *,
    version: ModelVersion,
    user: AbstractBaseUser | None = None,
    action: str = ActivationEvent.Action.ACTIVATE,
    note: str = "",
) -> ModelVersion:
    """Make ``version`` its project's active version and record who did it.

    The project row is locked so two activations in one project serialise; the database
    constraint ``one_active_version_per_project`` is the last line of defence.
    """
    Project.objects.select_for_update().get(pk=version.project_id)
    previous = ModelVersion.objects.filter(project_id=version.project_id, is_active=True).first()
    if previous and previous.pk == version.pk:
        return version
    if previous:
        ModelVersion.objects.filter(pk=previous.pk).update(is_active=False)
    now = timezone.now()
    try:
        with transaction.atomic():
            ModelVersion.objects.filter(pk=version.pk).update(is_active=True, activated_at=now)
    except IntegrityError as exc:  # pragma: no cover - guarded by the lock above
        raise ValidationError("Another version was activated at the same time.") from exc
    ActivationEvent.objects.create(
        project_id=version.project_id,
        version=version,
        version_number=version.number,
        previous_number=previous.number if previous else None,
        action=action,
        user=user,
        note=note,
    )
    version.refresh_from_db()
    return version
