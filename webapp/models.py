"""Graft's data model: projects, datasets, training jobs, model versions, predictions.

Rows are the source of truth; Celery is only transport. Status fields are TextChoices
whose transitions happen in one service function each (``webapp/services.py``), guarded
by conditional updates. Models carry small display helpers; no business logic.
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING

from django.conf import settings
from django.db import models
from django.db.models import Q
from django.urls import reverse
from django.utils import timezone

if TYPE_CHECKING:
    from django.contrib.auth.models import AbstractBaseUser, AnonymousUser


class Project(models.Model):
    """A classification problem. Everything else belongs to one."""

    name = models.CharField(max_length=100)
    slug = models.SlugField(max_length=100, unique=True)
    description = models.TextField(blank=True)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL
    )
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["name"]
        permissions = [
            ("train_models", "Can upload datasets and start training jobs"),
            ("manage_versions", "Can activate, roll back and delete model versions"),
        ]

    def __str__(self) -> str:
        return self.name

    def get_absolute_url(self) -> str:
        return reverse("project_detail", args=[self.slug])

    @property
    def active_version(self) -> ModelVersion | None:
        return self.versions.filter(is_active=True).first()


class Dataset(models.Model):
    """A named collection of labelled images under ``GRAFT_DATA_DIR/datasets``."""

    class Source(models.TextChoices):
        ZIP = "zip", "Zip upload"
        UPLOAD = "upload", "Per-class upload"
        DIRECTORY = "directory", "Server folder"
        URL = "url", "URL import"
        CORRECTIONS = "corrections", "Corrected predictions"

    class Status(models.TextChoices):
        IMPORTING = "importing", "Importing"
        READY = "ready", "Ready"
        FAILED = "failed", "Failed"

    project = models.ForeignKey(Project, on_delete=models.CASCADE, related_name="datasets")
    name = models.CharField(max_length=100)
    source = models.CharField(max_length=20, choices=Source.choices)
    source_detail = models.CharField(max_length=500, blank=True)
    status = models.CharField(max_length=20, choices=Status.choices, default=Status.IMPORTING)
    error = models.TextField(blank=True)
    directory = models.CharField(max_length=300, help_text="Relative to GRAFT_DATA_DIR")
    class_counts = models.JSONField(default=dict, blank=True)
    image_count = models.PositiveIntegerField(default=0)
    total_bytes = models.PositiveBigIntegerField(default=0)
    fingerprint = models.CharField(max_length=64, blank=True)
    rejected = models.JSONField(default=list, blank=True)
    heartbeat_at = models.DateTimeField(
        null=True,
        blank=True,
        help_text="Last sign of life of the attempt importing it; empty while none holds it.",
    )
    attempts = models.PositiveIntegerField(default=0)
    max_attempts = models.PositiveIntegerField(default=3)
    celery_task_id = models.CharField(max_length=64, blank=True)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL
    )
    created_at = models.DateTimeField(default=timezone.now)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["-created_at"]
        constraints = [
            models.UniqueConstraint(fields=["project", "name"], name="dataset_name_unique"),
        ]

    def __str__(self) -> str:
        return f"{self.project.slug}/{self.name}"

    def get_absolute_url(self) -> str:
        return reverse("dataset_detail", args=[self.project.slug, self.pk])

    @property
    def path(self) -> Path:
        return Path(settings.GRAFT_DATA_DIR) / self.directory

    @property
    def class_names(self) -> list[str]:
        return sorted(self.class_counts)

    @property
    def is_ready(self) -> bool:
        return self.status == self.Status.READY

    @property
    def status_badge(self) -> str:
        return {"ready": "ok", "failed": "bad"}.get(self.status, "busy")

    @property
    def is_importing(self) -> bool:
        return self.status == self.Status.IMPORTING

    @property
    def class_rows(self) -> list[tuple[str, int]]:
        """(class name, image count), alphabetical, for tables."""
        return [(name, self.class_counts[name]) for name in self.class_names]


class _RunTimes:
    """For rows with ``started_at``/``finished_at``: how long they ran (so far)."""

    started_at: datetime | None
    finished_at: datetime | None

    @property
    def duration_seconds(self) -> float | None:
        if not self.started_at:
            return None
        end = self.finished_at or timezone.now()
        return (end - self.started_at).total_seconds()


class _Cancellable(models.Model):
    """For rows a person can cancel (``cancel_requested``): who asked first, and in words."""

    status: str
    cancel_requested: bool

    cancelled_by = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="+",
        help_text="Who asked first to cancel it; empty when nobody did or the system did.",
    )

    class Meta:
        abstract = True

    @property
    def cancelled_by_label(self) -> str:
        """Who asked to cancel, for the pages: "Cancelled by ann", or "Cancel requested by
        ann" while it stops (or if it ended otherwise first); "" when nobody or the system did."""
        if not self.cancel_requested or self.cancelled_by is None:
            return ""
        asked = "Cancelled" if self.status == "cancelled" else "Cancel requested"
        return f"{asked} by {self.cancelled_by.get_username()}"


class TrainingJob(_RunTimes, _Cancellable, models.Model):
    """One training run: its config, live progress and outcome."""

    class Status(models.TextChoices):
        QUEUED = "queued", "Queued"
        RUNNING = "running", "Running"
        SUCCEEDED = "succeeded", "Succeeded"
        FAILED = "failed", "Failed"
        CANCELLED = "cancelled", "Cancelled"

    FINISHED = (Status.SUCCEEDED, Status.FAILED, Status.CANCELLED)

    project = models.ForeignKey(Project, on_delete=models.CASCADE, related_name="jobs")
    # RESTRICT, not PROTECT: a dataset with jobs cannot be deleted on its own, but its
    # project can, since the project's jobs go in the same cascade.
    dataset = models.ForeignKey(Dataset, on_delete=models.RESTRICT, related_name="jobs")
    config = models.JSONField(default=dict)
    status = models.CharField(
        max_length=20, choices=Status.choices, default=Status.QUEUED, db_index=True
    )
    activate_on_success = models.BooleanField(default=False)
    cancel_requested = models.BooleanField(default=False)
    phase = models.CharField(max_length=30, blank=True)
    epoch = models.PositiveIntegerField(default=0)
    epochs_total = models.PositiveIntegerField(default=0)
    batch = models.PositiveIntegerField(default=0)
    batches_total = models.PositiveIntegerField(default=0)
    progress = models.FloatField(default=0.0)
    eta_seconds = models.FloatField(null=True, blank=True)
    heartbeat_at = models.DateTimeField(null=True, blank=True)
    attempts = models.PositiveIntegerField(default=0)
    max_attempts = models.PositiveIntegerField(default=3)
    error = models.TextField(blank=True)
    celery_task_id = models.CharField(max_length=64, blank=True)
    worker = models.CharField(max_length=200, blank=True)
    dataset_fingerprint = models.CharField(max_length=64, blank=True)
    train_files = models.JSONField(default=list, blank=True)
    val_files = models.JSONField(default=list, blank=True)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL
    )
    created_at = models.DateTimeField(default=timezone.now)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]
        indexes = [models.Index(fields=["status", "heartbeat_at"])]

    def __str__(self) -> str:
        return f"Job {self.pk} ({self.get_status_display()})"

    def get_absolute_url(self) -> str:
        return reverse("job_detail", args=[self.pk])

    @property
    def is_finished(self) -> bool:
        return self.status in self.FINISHED

    @property
    def is_active(self) -> bool:
        return self.status in (self.Status.QUEUED, self.Status.RUNNING)

    @property
    def status_badge(self) -> str:
        return {
            "succeeded": "ok",
            "failed": "bad",
            "cancelled": "muted",
        }.get(self.status, "busy")

    @property
    def percent(self) -> int:
        return round(self.progress * 100)

    @property
    def eta_text(self) -> str:
        """Time left as "1 min 05 s"; "" when unknown or finished."""
        if self.eta_seconds is None or not self.is_active or self.progress >= 0.99:
            return ""  # past the last epoch (evaluating, exporting) the estimate is stale
        minutes, seconds = divmod(round(self.eta_seconds), 60)
        return f"{minutes} min {seconds:02d} s" if minutes else f"{seconds} s"

    @property
    def phase_label(self) -> str:
        return self.phase.replace("_", " ").capitalize() if self.phase else ""

    @property
    def quiet_text(self) -> str:
        """For a running job whose worker has not beaten for longer than
        ``GRAFT_HEARTBEAT_TIMEOUT`` (killed, machine lost): how long, and what happens
        next; "" otherwise. Until the reconcile requeues or fails it, it is still
        "running", and its progress does not move."""
        last = self.heartbeat_at or self.started_at
        if self.status != self.Status.RUNNING or last is None:
            return ""
        quiet = (timezone.now() - last).total_seconds()
        if quiet <= settings.GRAFT_HEARTBEAT_TIMEOUT:
            return ""
        minutes, seconds = divmod(int(quiet), 60)
        return (
            f"Its worker has not reported for {minutes} min {seconds:02d} s; it may have "
            "stopped. The periodic reconcile retries such a job from its last checkpoint "
            "(or fails it after its last attempt)."
        )

    @property
    def can_cancel(self) -> bool:
        return self.is_active and not self.cancel_requested


class EpochRecord(models.Model):
    """One finished epoch of a job; the history charts read these rows, live."""

    job = models.ForeignKey(TrainingJob, on_delete=models.CASCADE, related_name="epochs")
    epoch = models.PositiveIntegerField()
    phase = models.CharField(max_length=30, blank=True)
    loss = models.FloatField(null=True)
    accuracy = models.FloatField(null=True)
    val_loss = models.FloatField(null=True)
    val_accuracy = models.FloatField(null=True)
    learning_rate = models.FloatField(null=True)
    seconds = models.FloatField(null=True)
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["job", "epoch"]
        constraints = [
            models.UniqueConstraint(fields=["job", "epoch"], name="epoch_unique_per_job"),
        ]

    def __str__(self) -> str:
        return f"{self.job_id}#{self.epoch}"


class ModelVersion(models.Model):
    """A trained, exported classifier: numbered per project; at most one is active."""

    project = models.ForeignKey(Project, on_delete=models.CASCADE, related_name="versions")
    number = models.PositiveIntegerField()
    job = models.OneToOneField(
        TrainingJob, null=True, blank=True, on_delete=models.SET_NULL, related_name="version"
    )
    dataset = models.ForeignKey(
        Dataset, null=True, blank=True, on_delete=models.SET_NULL, related_name="versions"
    )
    dataset_fingerprint = models.CharField(max_length=64, blank=True)
    directory = models.CharField(max_length=300, help_text="Relative to GRAFT_DATA_DIR")
    files = models.JSONField(default=dict, blank=True, help_text="name -> {sha256, bytes}")
    size_bytes = models.PositiveBigIntegerField(default=0)
    class_names = models.JSONField(default=list)
    image_size = models.PositiveIntegerField(default=224)
    config = models.JSONField(default=dict, blank=True)
    metrics = models.JSONField(default=dict, blank=True)
    val_accuracy = models.FloatField(null=True, blank=True)
    val_loss = models.FloatField(null=True, blank=True)
    int8 = models.JSONField(
        default=dict,
        blank=True,
        help_text="The int8 quantization record (classifier.quantize); {} until one is made.",
    )
    is_active = models.BooleanField(default=False)
    activated_at = models.DateTimeField(null=True, blank=True)
    notes = models.TextField(blank=True)
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["project", "-number"]
        constraints = [
            models.UniqueConstraint(fields=["project", "number"], name="version_number_unique"),
            models.UniqueConstraint(
                fields=["project"],
                condition=Q(is_active=True),
                name="one_active_version_per_project",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.project.slug} v{self.number}"

    def get_absolute_url(self) -> str:
        return reverse("version_detail", args=[self.project.slug, self.number])

    @property
    def path(self) -> Path:
        return Path(settings.GRAFT_DATA_DIR) / self.directory

    @property
    def label(self) -> str:
        return f"v{self.number}"

    DOWNLOADS = ("model.keras", "model.tflite", "model.int8.tflite", "labels.json", "metadata.json")

    @property
    def downloads(self) -> list[tuple[str, int]]:
        """(file name, bytes) of the artifacts present on disk, in a fixed order."""
        out = []
        for name in self.DOWNLOADS:
            file = self.path / name
            if file.is_file():
                out.append((name, file.stat().st_size))
        return out

    @property
    def config_summary(self) -> str:
        """One line: "α 1.0 · 224 px · 5 epochs · head 1024-512 · functional"."""
        c = self.config or {}
        if not c:
            return ""
        parts = [
            f"α {c.get('alpha', 1.0)}",
            f"{c.get('image_size', self.image_size)} px",
            f"{c.get('epochs', '?')} epochs",
            "head " + "-".join(str(u) for u in c.get("head_units", [])),
            str(c.get("build", "")),
        ]
        if c.get("fine_tune_layers") and c.get("fine_tune_epochs"):
            parts.append(f"fine-tune {c['fine_tune_layers']} layers × {c['fine_tune_epochs']}")
        if c.get("weights") and c.get("weights") != "imagenet":
            parts.append(f"weights {c['weights']}")
        return " · ".join(p for p in parts if p)

    @property
    def per_class_rows(self) -> list[dict]:
        """[{name, precision, recall, f1, support}] in class order, for the metrics table."""
        per_class = (self.metrics or {}).get("per_class") or {}
        names = (self.metrics or {}).get("class_names") or self.class_names
        return [{"name": n, **per_class[n]} for n in names if n in per_class]

    @property
    def confusion_rows(self) -> list[dict]:
        """Confusion matrix rows for the heat map: true label, and per predicted label the
        count and its share of the row (0-100, the cell's colour strength)."""
        matrix = (self.metrics or {}).get("confusion_matrix") or []
        names = (self.metrics or {}).get("class_names") or self.class_names
        rows = []
        for i, (name, counts) in enumerate(zip(names, matrix, strict=False)):
            total = sum(counts) or 1
            cells = [
                {"count": n, "share": round(100 * n / total), "diagonal": i == j}
                for j, n in enumerate(counts)
            ]
            rows.append({"label": name, "cells": cells})
        return rows

    @property
    def confident_mistakes(self) -> list[dict]:
        """[{path, true, predicted, confidence}] (paths relative to the dataset folder)."""
        return list((self.metrics or {}).get("most_confident_wrong") or [])

    @property
    def int8_accepted(self) -> bool:
        """Its int8 copy exists and kept its accuracy (within the record's allowed drop)."""
        return bool((self.int8 or {}).get("accepted"))

    @property
    def int8_running(self) -> bool:
        """A quantization of this version is under way (or its worker died meanwhile)."""
        return bool((self.int8 or {}).get("running"))

    @property
    def int8_served(self) -> bool:
        """Whether its int8 copy answers in place of the float32 model: GRAFT_INT8 on, the
        copy accepted, and its file the one quantization recorded (serving skips a missing
        or damaged one and answers with float32)."""
        return settings.GRAFT_INT8 and self.int8_accepted and self._int8_file_intact()

    def _int8_file_intact(self) -> bool:
        from classifier.errors import ArtifactError
        from classifier.serving import MODEL_INT8, sha256_file

        entry = (self.files or {}).get(MODEL_INT8)
        expected = entry.get("sha256") if isinstance(entry, dict) else None
        try:
            return bool(expected) and sha256_file(self.path / MODEL_INT8) == expected
        except ArtifactError:  # unreadable or gone
            return False

    @property
    def int8_accuracy_drop(self) -> float | None:
        """float32 minus int8 accuracy on the validation photos (positive: int8 is worse)."""
        record = self.int8 or {}
        float32, int8 = record.get("float32_accuracy"), record.get("int8_accuracy")
        if float32 is None or int8 is None:
            return None
        return float32 - int8

    @property
    def int8_status_label(self) -> str:
        """The int8 record's outcome in a word or two; "" without a record."""
        record = self.int8 or {}
        if not record:
            return ""
        if self.int8_running:
            return "quantizing"
        if record.get("accepted"):
            return "accepted"
        return "not made" if record.get("failed") else "not accepted"

    @property
    def int8_badge(self) -> str:
        return {"accepted": "ok", "quantizing": "busy"}.get(self.int8_status_label, "bad")

    @property
    def int8_serving_label(self) -> str:
        """Which model answers for this version, and why, in a few words."""
        if not self.int8_accepted:
            return "float32 (no accepted int8 copy)"
        if not settings.GRAFT_INT8:
            return f"float32 ({int8_setting_said()})"
        if not self._int8_file_intact():
            return "float32 (the int8 file is missing or damaged; quantize the version again)"
        comma = "," if settings.GRAFT_INT8_AUTO else ""
        return f"int8 ({int8_setting_said()}{comma} and the int8 copy was accepted)"


def int8_setting_said() -> str:
    """``GRAFT_INT8`` and, for ``auto``, what decided it: "GRAFT_INT8 is on", "... is off"
    or "... is auto: this CPU has int8 dot products (avx512_vnni)"."""
    if settings.GRAFT_INT8_AUTO:
        return f"GRAFT_INT8 is auto: {settings.GRAFT_INT8_AUTO}"
    return f"GRAFT_INT8 is {'on' if settings.GRAFT_INT8 else 'off'}"


class ActivationEvent(models.Model):
    """Audit log: who activated, rolled back, retired or deleted which version, when."""

    class Action(models.TextChoices):
        ACTIVATE = "activate", "Activated"
        ROLLBACK = "rollback", "Rolled back"
        DEACTIVATE = "deactivate", "Deactivated"
        DELETE = "delete", "Deleted"

    project = models.ForeignKey(Project, on_delete=models.CASCADE, related_name="activations")
    version = models.ForeignKey(
        ModelVersion, null=True, blank=True, on_delete=models.SET_NULL, related_name="events"
    )
    version_number = models.PositiveIntegerField()
    previous_number = models.PositiveIntegerField(null=True, blank=True)
    action = models.CharField(max_length=20, choices=Action.choices)
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL
    )
    note = models.CharField(max_length=300, blank=True)
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["-created_at", "-id"]

    def __str__(self) -> str:
        return f"{self.get_action_display()} v{self.version_number}"

    @property
    def action_badge(self) -> str:
        return {"activate": "ok", "rollback": "busy", "delete": "bad"}.get(self.action, "muted")


class Prediction(models.Model):
    """One classified photo: who asked, which version answered, and what it said."""

    class Source(models.TextChoices):
        WEB = "web", "Web page"
        API = "api", "API"
        BATCH = "batch", "Batch job"

    class Precision(models.TextChoices):
        FLOAT32 = "float32", "float32"
        INT8 = "int8", "int8"

    project = models.ForeignKey(Project, on_delete=models.CASCADE, related_name="predictions")
    version = models.ForeignKey(
        ModelVersion, null=True, blank=True, on_delete=models.SET_NULL, related_name="predictions"
    )
    version_number = models.PositiveIntegerField()
    image_sha256 = models.CharField(max_length=64, db_index=True)
    image = models.FileField(upload_to="predictions/%Y/%m/%d", blank=True)
    filename = models.CharField(max_length=255, blank=True)
    top = models.JSONField(default=list, help_text="[{label, confidence}, ...] best first")
    label = models.CharField(max_length=200)
    confidence = models.FloatField()
    latency_ms = models.FloatField()
    precision = models.CharField(
        max_length=10,
        choices=Precision.choices,
        default=Precision.FLOAT32,
        blank=True,
        help_text="Which of the version's models answered.",
    )
    source = models.CharField(max_length=10, choices=Source.choices, default=Source.WEB)
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL
    )
    corrected_label = models.CharField(max_length=200, blank=True)
    corrected_by = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="+",
    )
    corrected_at = models.DateTimeField(null=True, blank=True)
    added_to_dataset = models.ForeignKey(
        Dataset, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    batch = models.ForeignKey(
        "BatchClassification",
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="predictions",
        help_text="The batch that logged it (source batch), so a retried batch logs once.",
    )
    created_at = models.DateTimeField(default=timezone.now, db_index=True)

    class Meta:
        ordering = ["-created_at", "-id"]

    def __str__(self) -> str:
        return f"{self.label} ({self.confidence:.0%})"

    @property
    def is_corrected(self) -> bool:
        return bool(self.corrected_label)

    @property
    def top_rows(self) -> list[dict]:
        """[{label, confidence, percent}] best first, for confidence bars."""
        return [
            {
                "label": row["label"],
                "confidence": row["confidence"],
                "percent": round(100 * row["confidence"], 1),
            }
            for row in self.top
        ]


class BatchClassification(_RunTimes, _Cancellable, models.Model):
    """Many photos (a zip or several files) classified in the background by one version.

    The uploaded input and the results (``results.csv``, ``results.json``) live under
    ``GRAFT_DATA_DIR/batches/<id>/``; ``done`` and ``total`` are the progress pages poll.
    """

    class Status(models.TextChoices):
        QUEUED = "queued", "Queued"
        RUNNING = "running", "Running"
        SUCCEEDED = "succeeded", "Succeeded"
        FAILED = "failed", "Failed"
        CANCELLED = "cancelled", "Cancelled"

    FINISHED = (Status.SUCCEEDED, Status.FAILED, Status.CANCELLED)

    project = models.ForeignKey(Project, on_delete=models.CASCADE, related_name="batches")
    version = models.ForeignKey(
        ModelVersion, null=True, blank=True, on_delete=models.SET_NULL, related_name="batches"
    )
    version_number = models.PositiveIntegerField(null=True, blank=True)
    status = models.CharField(
        max_length=20, choices=Status.choices, default=Status.QUEUED, db_index=True
    )
    directory = models.CharField(max_length=300, help_text="Relative to GRAFT_DATA_DIR")
    total = models.PositiveIntegerField(default=0)
    done = models.PositiveIntegerField(default=0)
    failed = models.PositiveIntegerField(default=0)
    error = models.TextField(blank=True)
    cancel_requested = models.BooleanField(
        default=False, help_text="Stop before the next chunk of photos (set while it runs)."
    )
    heartbeat_at = models.DateTimeField(
        null=True, blank=True, help_text="Last progress of the running attempt."
    )
    attempts = models.PositiveIntegerField(default=0)
    max_attempts = models.PositiveIntegerField(default=3)
    celery_task_id = models.CharField(max_length=64, blank=True)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL
    )
    created_at = models.DateTimeField(default=timezone.now, db_index=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        indexes = [models.Index(fields=["status", "heartbeat_at"])]

    def __str__(self) -> str:
        return f"Batch {self.pk} ({self.get_status_display()})"

    def get_absolute_url(self) -> str:
        return reverse("batch_detail", args=[self.pk])

    @property
    def path(self) -> Path:
        return Path(settings.GRAFT_DATA_DIR) / self.directory

    @property
    def is_finished(self) -> bool:
        return self.status in self.FINISHED

    @property
    def is_active(self) -> bool:
        return self.status in (self.Status.QUEUED, self.Status.RUNNING)

    @property
    def percent(self) -> int:
        return round(100 * self.done / self.total) if self.total else 0

    @property
    def classified(self) -> int:
        """Photos answered so far (``done`` counts the unreadable ones too)."""
        return self.done - self.failed

    @property
    def status_badge(self) -> str:
        return {"succeeded": "ok", "failed": "bad", "cancelled": "muted"}.get(self.status, "busy")

    @property
    def version_label(self) -> str:
        return f"v{self.version_number}" if self.version_number else ""

    @property
    def can_cancel(self) -> bool:
        return self.is_active and not self.cancel_requested

    @property
    def can_delete(self) -> bool:
        return self.is_finished

    def may_be_changed_by(self, user: AbstractBaseUser | AnonymousUser | None) -> bool:
        """Who may cancel or delete it: whoever started it, or anyone who may train models."""
        if user is None or not user.is_authenticated:
            return False
        return user.pk == self.created_by_id or user.has_perm("webapp.train_models")

    @property
    def has_results(self) -> bool:
        """Results to show and download: all of them, or those of a cancelled batch's
        photos classified before it stopped (see ``results_are_partial``)."""
        if self.status == self.Status.SUCCEEDED:
            return True
        return self.results_are_partial

    @property
    def results_are_partial(self) -> bool:
        return (
            self.status == self.Status.CANCELLED
            and self.done > 0
            and (self.path / "results.csv").is_file()
        )
