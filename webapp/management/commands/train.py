"""``python manage.py train --project SLUG``: start a training job from the command line."""

from __future__ import annotations

import time
from typing import Any

from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError

from webapp import services
from webapp.models import Dataset, Project, TrainingJob


class Command(BaseCommand):
    help = "Start a training job on the project's newest ready dataset (or --dataset ID)."

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("--project", required=True, help="project slug")
        parser.add_argument("--dataset", type=int, help="dataset id (default: newest ready one)")
        parser.add_argument("--epochs", type=int, default=5)
        parser.add_argument("--fine-tune-layers", type=int, default=0)
        parser.add_argument("--fine-tune-epochs", type=int)
        parser.add_argument("--image-size", type=int, default=224)
        parser.add_argument("--alpha", type=float, default=1.0)
        parser.add_argument("--weights", default="imagenet", help="imagenet, none or a .h5 path")
        parser.add_argument("--batch-size", type=int, default=32)
        parser.add_argument("--seed", type=int, default=1337)
        parser.add_argument("--activate", action="store_true", help="activate on success")
        parser.add_argument("--wait", action="store_true", help="print progress until it ends")
        parser.add_argument("--timeout", type=float, default=0, help="with --wait: give up after S")

    def handle(self, *args: Any, **opts: Any) -> None:
        project = Project.objects.filter(slug=opts["project"]).first()
        if project is None:
            raise CommandError(f"No project with slug {opts['project']!r}.")
        datasets = Dataset.objects.filter(project=project, status=Dataset.Status.READY)
        dataset = (
            datasets.filter(pk=opts["dataset"]).first()
            if opts["dataset"]
            else datasets.order_by("-created_at").first()
        )
        if dataset is None:
            raise CommandError("No ready dataset found; import one with import_dataset first.")
        fine_tune_layers = opts["fine_tune_layers"]
        config = {
            "epochs": opts["epochs"],
            "image_size": opts["image_size"],
            "alpha": opts["alpha"],
            "weights": opts["weights"],
            "batch_size": opts["batch_size"],
            "seed": opts["seed"],
            "fine_tune_layers": fine_tune_layers,
            "fine_tune_epochs": opts["fine_tune_epochs"]
            if opts["fine_tune_epochs"] is not None
            else (opts["epochs"] if fine_tune_layers else 0),
        }
        try:
            job = services.training_job_create(
                project=project,
                dataset=dataset,
                config=config,
                activate_on_success=opts["activate"],
            )
        except ValidationError as exc:
            raise CommandError(" ".join(exc.messages)) from None
        except services.QueueUnavailable as exc:
            raise CommandError(str(exc)) from None
        self.stdout.write(f"Job {job.pk} queued.")
        if opts["wait"]:
            self.wait(job, opts["timeout"])

    def wait(self, job: TrainingJob, timeout: float) -> None:
        deadline = time.monotonic() + timeout if timeout else None
        last = None
        while True:
            job.refresh_from_db()
            line = (
                f"{job.get_status_display()}: {job.phase or '-'} epoch {job.epoch}/"
                f"{job.epochs_total} batch {job.batch}/{job.batches_total} ({job.percent} %)"
            )
            if line != last:
                self.stdout.write(line)
                last = line
            if job.is_finished:
                break
            if deadline and time.monotonic() > deadline:
                raise CommandError(f"Gave up waiting for job {job.pk} after {timeout:.0f} s.")
            time.sleep(1)
        for record in job.epochs.order_by("epoch"):
            values = " ".join(
                f"{key} {getattr(record, key):.4f}"
                for key in ("loss", "accuracy", "val_loss", "val_accuracy")
                if getattr(record, key) is not None
            )
            self.stdout.write(f"epoch {record.epoch}: {values}")
        if job.status != TrainingJob.Status.SUCCEEDED:
            raise CommandError(f"Job {job.pk} {job.status}: {job.error}")
        version = job.version
        self.stdout.write(
            f"Job {job.pk} succeeded: {project_version(version)}"
            f" (validation accuracy {version.val_accuracy:.3f})"
        )


def project_version(version: Any) -> str:
    return f"{version.project.slug} v{version.number}" + (" (active)" if version.is_active else "")
