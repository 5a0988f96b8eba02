"""What the API shows of each row (read-only) and what it accepts (job and batch requests)."""

from __future__ import annotations

from rest_framework import serializers

from webapp.models import (
    BatchClassification,
    Dataset,
    EpochRecord,
    ModelVersion,
    Prediction,
    Project,
    TrainingJob,
)

# What ``config.weights`` may be over the API (the job form offers the same two).
API_WEIGHTS = ("imagenet", "none")


class ProjectSerializer(serializers.ModelSerializer):
    active_version = serializers.SerializerMethodField()

    class Meta:
        model = Project
        fields = ["slug", "name", "description", "created_at", "active_version"]

    def get_active_version(self, project: Project) -> int | None:
        version = project.active_version
        return version.number if version else None


class DatasetSerializer(serializers.ModelSerializer):
    project = serializers.SlugRelatedField(slug_field="slug", read_only=True)

    class Meta:
        model = Dataset
        fields = [
            "id",
            "project",
            "name",
            "source",
            "status",
            "error",
            "class_counts",
            "image_count",
            "total_bytes",
            "fingerprint",
            "created_at",
            "updated_at",
        ]


class EpochSerializer(serializers.ModelSerializer):
    class Meta:
        model = EpochRecord
        fields = [
            "epoch",
            "phase",
            "loss",
            "accuracy",
            "val_loss",
            "val_accuracy",
            "learning_rate",
            "seconds",
        ]


def cancelled_by_field() -> serializers.SlugRelatedField:
    """A job's or batch's ``cancelled_by``, as the username."""
    return serializers.SlugRelatedField(
        slug_field="username",
        read_only=True,
        allow_null=True,
        help_text="Username of who asked first to cancel it; null when nobody did or the "
        "system did.",
    )


class JobSerializer(serializers.ModelSerializer):
    project = serializers.SlugRelatedField(slug_field="slug", read_only=True)
    version = serializers.SerializerMethodField()
    history = EpochSerializer(source="epochs", many=True, read_only=True)
    cancelled_by = cancelled_by_field()

    class Meta:
        model = TrainingJob
        fields = [
            "id",
            "project",
            "dataset",
            "status",
            "config",
            "activate_on_success",
            "phase",
            "epoch",
            "epochs_total",
            "batch",
            "batches_total",
            "progress",
            "eta_seconds",
            "attempts",
            "error",
            "cancel_requested",
            "cancelled_by",
            "version",
            "created_at",
            "started_at",
            "finished_at",
            "history",
        ]

    def get_version(self, job: TrainingJob) -> int | None:
        version = getattr(job, "version", None)
        return version.number if version else None


class JobCreateSerializer(serializers.Serializer):
    dataset = serializers.IntegerField(help_text="Id of a ready dataset of this project.")
    config = serializers.DictField(
        required=False, default=dict, help_text="Training settings (TrainConfig fields)."
    )
    activate_on_success = serializers.BooleanField(required=False, default=False)

    def validate_config(self, config: dict) -> dict:
        """``weights`` as on the job form: a file path would have the worker open any file
        on its machine (and say in the job's error whether it exists); paths are for the
        command line, whose user has the server's files anyway."""
        if config.get("weights", "imagenet") not in API_WEIGHTS:
            raise serializers.ValidationError(
                f"weights must be one of {', '.join(API_WEIGHTS)}; a weights file can be "
                "given on the server's command line (manage.py train --weights)."
            )
        return config


class VersionSerializer(serializers.ModelSerializer):
    project = serializers.SlugRelatedField(slug_field="slug", read_only=True)

    class Meta:
        model = ModelVersion
        fields = [
            "number",
            "project",
            "job",
            "dataset",
            "dataset_fingerprint",
            "class_names",
            "image_size",
            "config",
            "metrics",
            "val_accuracy",
            "val_loss",
            "int8",
            "size_bytes",
            "is_active",
            "activated_at",
            "notes",
            "created_at",
        ]


class LabelConfidenceSerializer(serializers.Serializer):
    label = serializers.CharField()
    confidence = serializers.FloatField()


class ClassifySerializer(serializers.Serializer):
    image = serializers.FileField(help_text="The photo (JPEG, PNG, BMP, WebP or GIF).")


class ClassifyResponseSerializer(serializers.Serializer):
    id = serializers.IntegerField(help_text="The logged prediction's id.")
    version = serializers.IntegerField(help_text="Number of the version that answered.")
    predictions = LabelConfidenceSerializer(many=True)
    latency_ms = serializers.FloatField(help_text="Decoding plus inference, in ms.")
    precision = serializers.ChoiceField(
        choices=Prediction.Precision.choices,
        help_text="Which of the version's models answered: float32, or its accepted int8 copy "
        "(GRAFT_INT8, on by default where the CPU has int8 dot products).",
    )

    @staticmethod
    def of(prediction: Prediction) -> dict:
        return {
            "id": prediction.pk,
            "version": prediction.version_number,
            "predictions": prediction.top,
            "latency_ms": round(prediction.latency_ms, 3),
            "precision": prediction.precision,
        }


class BatchCreateSerializer(serializers.Serializer):
    files = serializers.ListField(
        child=serializers.FileField(),
        help_text="One zip of photos, or several photos (repeat the field).",
    )


class BatchResultSerializer(serializers.Serializer):
    """One photo's row in ``results.json`` (``results.csv`` has the same columns)."""

    file = serializers.CharField(help_text="Its name, with its folders in the zip.")
    label = serializers.CharField(allow_null=True)
    confidence = serializers.FloatField(allow_null=True)
    top = LabelConfidenceSerializer(many=True)
    error = serializers.CharField(
        allow_null=True, help_text="Why the file was not classified; null when it was."
    )


class BatchResultsSerializer(serializers.Serializer):
    """``results.json``: every file of the batch, in upload order."""

    batch = serializers.IntegerField()
    project = serializers.CharField(help_text="The project's slug.")
    version = serializers.IntegerField(help_text="Number of the version that answered.")
    results = BatchResultSerializer(many=True)


class BatchSerializer(serializers.ModelSerializer):
    """A batch; the results links appear once it succeeded, or after it was cancelled
    while running (then the results hold the photos classified before it stopped)."""

    project = serializers.SlugRelatedField(slug_field="slug", read_only=True)
    version = serializers.IntegerField(source="version_number", read_only=True)
    percent = serializers.IntegerField(read_only=True)
    results_csv = serializers.SerializerMethodField()
    results_json = serializers.SerializerMethodField()
    cancelled_by = cancelled_by_field()

    class Meta:
        model = BatchClassification
        fields = [
            "id",
            "project",
            "version",
            "status",
            "total",
            "done",
            "failed",
            "percent",
            "error",
            "cancel_requested",
            "cancelled_by",
            "created_at",
            "started_at",
            "finished_at",
            "results_csv",
            "results_json",
        ]

    def get_results_csv(self, batch: BatchClassification) -> str | None:
        return self._url(batch, "csv")

    def get_results_json(self, batch: BatchClassification) -> str | None:
        return self._url(batch, "json")

    def _url(self, batch: BatchClassification, fmt: str) -> str | None:
        from django.urls import reverse

        if not batch.has_results:
            return None
        url = reverse("api:batch_results", args=[batch.pk, fmt])
        request = self.context.get("request")
        return request.build_absolute_uri(url) if request else url
