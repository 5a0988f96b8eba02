"""``python manage.py import_dataset PATH --project SLUG``: a folder or zip becomes a dataset."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError

from webapp import services
from webapp.models import Dataset, Project


class Command(BaseCommand):
    help = "Import a folder of class folders (or a .zip of one) as a dataset; prints its id."

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument(
            "path", type=Path, help="a folder with one sub-folder per class, or a .zip"
        )
        parser.add_argument("--project", required=True, help="project slug (created if missing)")
        parser.add_argument("--name", help="dataset name (default: the folder or zip name)")

    def handle(
        self, *args: Any, path: Path, project: str, name: str | None, **options: Any
    ) -> None:
        path = path.expanduser().resolve()
        if not path.exists():
            raise CommandError(f"{path} does not exist.")
        project_row = Project.objects.filter(slug=project).first()
        if project_row is None:
            project_row = services.project_create(name=project)
            self.stderr.write(f"Created project {project_row.slug!r}.")
        name = name or path.stem
        try:
            if path.is_dir():
                dataset = services.dataset_import_directory(
                    project=project_row, name=name, source_dir=path, background=False
                )
            else:
                dataset = services.dataset_import_zip(
                    project=project_row, name=name, upload=path, background=False
                )
        except ValidationError as exc:
            raise CommandError(" ".join(exc.messages)) from None
        if dataset.status != Dataset.Status.READY:
            raise CommandError(f"Import failed: {dataset.error}")
        counts = ", ".join(f"{k}: {v}" for k, v in sorted(dataset.class_counts.items()))
        self.stderr.write(
            f"Dataset {dataset.name!r}: {dataset.image_count} images ({counts}); "
            f"{len(dataset.rejected)} file(s) rejected."
        )
        for item in dataset.rejected[:20]:
            self.stderr.write(f"  rejected {item['path']}: {item['reason']}")
        self.stdout.write(str(dataset.pk))
