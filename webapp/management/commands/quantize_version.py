"""``python manage.py quantize_version SLUG NUMBER``: make a version's int8 copy, here and now."""

from __future__ import annotations

import json
from typing import Any

from django.core.management.base import BaseCommand, CommandError

from webapp import services
from webapp.models import ModelVersion


class Command(BaseCommand):
    help = (
        "Calibrate an int8 copy of a model version on its dataset's photos, in this process "
        "(TensorFlow, 10-25 s), and print the record as JSON. A version that already has a "
        "record is left as it is unless --force."
    )

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("project", help="project slug")
        parser.add_argument("number", type=int, help="version number")
        parser.add_argument(
            "--force", action="store_true", help="quantize again even if it has a record"
        )

    def handle(self, *args: Any, project: str, number: int, force: bool, **options: Any) -> None:
        version = ModelVersion.objects.filter(project__slug=project, number=number).first()
        if version is None:
            raise CommandError(f"No version {number} in a project with slug {project!r}.")
        version = services.model_version_quantize(version_id=version.pk, force=force)
        if version is None:
            raise CommandError(f"Version {number} of {project!r} was deleted meanwhile.")
        self.stdout.write(json.dumps(version.int8, indent=2, sort_keys=True))
        if version.int8.get("failed") or version.int8.get("last_error"):
            reason = version.int8.get("last_error") or version.int8.get("reason")
            again = "" if force else " (an earlier attempt's record; --force tries again)"
            raise CommandError(f"{version} could not be quantized: {reason}{again}")
