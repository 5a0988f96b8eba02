"""Django admin: useful lists, filters and search; audit-relevant fields read-only."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from django.contrib import admin, messages
from django.core.exceptions import ValidationError
from django.db.models import QuerySet
from django.http import HttpRequest

from webapp import selectors, services
from webapp.models import (
    ActivationEvent,
    BatchClassification,
    Dataset,
    EpochRecord,
    ModelVersion,
    Prediction,
    Project,
    TrainingJob,
)


class _DeletedThroughService(admin.ModelAdmin):
    """An admin whose deletes go through a service (files, audit log), one object at a time:
    no "Delete selected" action (it would skip the service), and no delete link where the
    service would refuse. Subclasses say when (``may_delete``) and how (``delete_model``)."""

    def may_delete(self, obj: Any) -> bool:
        return True

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        allowed = super().has_delete_permission(request, obj)
        return allowed and (obj is None or self.may_delete(obj))

    def get_actions(self, request: HttpRequest) -> dict:
        actions = super().get_actions(request)
        actions.pop("delete_selected", None)
        return actions


@admin.register(Project)
class ProjectAdmin(_DeletedThroughService):
    """Deleting a project goes through ``services.project_delete`` (not while an import,
    job or batch of it is under way; its files go too)."""

    list_display = ["name", "slug", "created_by", "created_at"]
    search_fields = ["name", "slug", "description"]
    prepopulated_fields = {"slug": ["name"]}
    readonly_fields = ["created_at"]

    def may_delete(self, obj: Project) -> bool:
        return not selectors.project_delete_refusal(project=obj)

    # The slug names the project's folders and URLs (API clients use it): set once.
    def get_readonly_fields(self, request: HttpRequest, obj: Project | None = None) -> list[str]:
        fields = list(super().get_readonly_fields(request, obj))
        return [*fields, "slug"] if obj else fields

    def get_prepopulated_fields(self, request: HttpRequest, obj: Project | None = None) -> dict:
        return {} if obj else super().get_prepopulated_fields(request, obj)

    def delete_model(self, request: HttpRequest, obj: Project) -> None:
        services.project_delete(project=obj, user=request.user)

    def get_deleted_objects(self, objs: Sequence[Project], request: HttpRequest) -> tuple:
        """As the admin's, except that what the dataset, version and batch admins refuse to
        delete on its own (a dataset kept as training history, the active version) goes
        with its project: ``project_delete`` judges the project as a whole. A missing
        model permission still holds it back."""
        deleted, counts, perms_needed, protected = super().get_deleted_objects(objs, request)
        allowed = {
            str(model._meta.verbose_name)
            for model, model_admin in self.admin_site._registry.items()
            if model_admin.has_delete_permission(request)
        }
        return deleted, counts, {p for p in perms_needed if str(p) not in allowed}, protected


@admin.register(Dataset)
class DatasetAdmin(_DeletedThroughService):
    """Deleting a dataset goes through ``services.dataset_delete`` (not while it imports or
    while training history uses it; its files go too)."""

    list_display = [
        "name",
        "project",
        "status",
        "source",
        "image_count",
        "total_bytes",
        "created_at",
    ]
    list_filter = ["status", "source", "project"]
    search_fields = ["name", "project__name", "fingerprint", "source_detail"]
    # Status and source are the services' (the reconcile imports an "importing" dataset from
    # its source again, so an edited folder would skip GRAFT_IMPORT_ROOTS).
    readonly_fields = [
        "status",
        "source",
        "source_detail",
        "heartbeat_at",
        "attempts",
        "celery_task_id",
        "fingerprint",
        "class_counts",
        "image_count",
        "total_bytes",
        "rejected",
        "directory",
        "created_at",
        "updated_at",
    ]

    def may_delete(self, obj: Dataset) -> bool:
        return not selectors.dataset_delete_refusal(dataset=obj)

    def delete_model(self, request: HttpRequest, obj: Dataset) -> None:
        services.dataset_delete(dataset=obj, user=request.user)


class EpochRecordInline(admin.TabularInline):
    model = EpochRecord
    extra = 0
    can_delete = False
    fields = ["epoch", "phase", "loss", "accuracy", "val_loss", "val_accuracy", "seconds"]
    readonly_fields = fields

    def has_add_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return False


@admin.register(TrainingJob)
class TrainingJobAdmin(admin.ModelAdmin):
    list_display = [
        "id",
        "project",
        "dataset",
        "status",
        "phase",
        "epoch",
        "attempts",
        "created_at",
    ]
    list_filter = ["status", "project"]
    search_fields = ["id", "project__name", "dataset__name", "celery_task_id", "error"]
    date_hierarchy = "created_at"
    inlines = [EpochRecordInline]
    # What was asked for is checked once, by training_job_create (which also makes every
    # job: none is added here); the worker trains what the row says.
    readonly_fields = [
        "project",
        "dataset",
        "config",
        "activate_on_success",
        "status",
        "cancelled_by",
        "phase",
        "epoch",
        "epochs_total",
        "batch",
        "batches_total",
        "progress",
        "eta_seconds",
        "heartbeat_at",
        "attempts",
        "celery_task_id",
        "worker",
        "dataset_fingerprint",
        "started_at",
        "finished_at",
        "created_at",
    ]
    exclude = ["train_files", "val_files"]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False


@admin.register(ModelVersion)
class ModelVersionAdmin(_DeletedThroughService):
    """Versions come from training jobs, so none is added here; deleting one goes through
    ``services.model_version_delete`` (never the active one; audited; its files go too)."""

    list_display = ["__str__", "project", "number", "is_active", "val_accuracy", "created_at"]
    list_filter = ["is_active", "project"]
    search_fields = ["project__name", "notes", "dataset_fingerprint"]
    actions = ["activate_selected", "quantize_selected"]
    readonly_fields = [
        "project",
        "number",
        "job",
        "dataset",
        "dataset_fingerprint",
        "directory",
        "files",
        "size_bytes",
        "class_names",
        "image_size",
        "config",
        "metrics",
        "val_accuracy",
        "val_loss",
        "int8",
        "is_active",
        "activated_at",
        "created_at",
    ]

    @admin.action(description="Activate the selected version", permissions=["activate"])
    def activate_selected(self, request: HttpRequest, queryset: QuerySet[ModelVersion]) -> None:
        if queryset.count() != 1:
            self.message_user(request, "Select exactly one version to activate.", messages.ERROR)
            return
        try:
            version = services.model_version_activate(version=queryset.get(), user=request.user)
        except ValidationError as exc:
            self.message_user(request, " ".join(exc.messages), messages.ERROR)
            return
        self.message_user(request, f"{version} is now active.", messages.SUCCESS)

    @admin.action(description="Quantize to int8 (background)", permissions=["activate"])
    def quantize_selected(self, request: HttpRequest, queryset: QuerySet[ModelVersion]) -> None:
        """Make a new int8 copy of each selected version, even those that have one."""
        versions = list(queryset.select_related("project"))
        try:
            for version in versions:
                services.model_version_enqueue_quantize(version=version, force=True)
        except services.QueueUnavailable as exc:
            self.message_user(request, str(exc), messages.ERROR)
            return
        names = ", ".join(str(version) for version in versions)
        self.message_user(
            request,
            f"Quantizing {names} to int8 in the background; the record appears on the "
            "version when it is done.",
            messages.SUCCESS,
        )

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_activate_permission(self, request: HttpRequest) -> bool:
        return request.user.has_perm("webapp.manage_versions")

    def may_delete(self, obj: ModelVersion) -> bool:
        return not obj.is_active

    def delete_model(self, request: HttpRequest, obj: ModelVersion) -> None:
        services.model_version_delete(version=obj, user=request.user)


@admin.register(ActivationEvent)
class ActivationEventAdmin(admin.ModelAdmin):
    list_display = ["created_at", "project", "action", "version_number", "previous_number", "user"]
    list_filter = ["action", "project"]
    search_fields = ["project__name", "user__username", "note"]

    def has_change_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return False

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False


@admin.register(Prediction)
class PredictionAdmin(admin.ModelAdmin):
    """Predictions come from classified photos, so none is added here; deleting them goes
    through ``services.predictions_delete`` (the photos kept for them go too)."""

    list_display = ["created_at", "project", "version_number", "label", "confidence", "source"]
    list_filter = ["source", "project"]
    search_fields = ["label", "corrected_label", "image_sha256", "filename"]
    readonly_fields = [
        "project",
        "version",
        "version_number",
        "image_sha256",
        "image",
        "filename",
        "top",
        "label",
        "confidence",
        "latency_ms",
        "source",
        "user",
        "created_at",
    ]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def delete_model(self, request: HttpRequest, obj: Prediction) -> None:
        services.predictions_delete(predictions=Prediction.objects.filter(pk=obj.pk))

    def delete_queryset(self, request: HttpRequest, queryset: QuerySet[Prediction]) -> None:
        services.predictions_delete(predictions=queryset)


@admin.register(BatchClassification)
class BatchClassificationAdmin(_DeletedThroughService):
    """Batches come from uploads, so none is added here; deleting one goes through
    ``services.batch_delete`` (finished batches only, and their folders go too)."""

    list_display = [
        "id",
        "project",
        "version_number",
        "status",
        "total",
        "done",
        "failed",
        "attempts",
        "created_by",
        "created_at",
    ]
    list_filter = ["status", "project"]
    list_select_related = ["project", "created_by"]
    search_fields = ["id", "project__name", "created_by__username", "celery_task_id", "error"]
    date_hierarchy = "created_at"
    readonly_fields = [
        "project",
        "version",
        "version_number",
        "status",
        "cancel_requested",
        "cancelled_by",
        "directory",
        "total",
        "done",
        "failed",
        "error",
        "heartbeat_at",
        "attempts",
        "celery_task_id",
        "created_by",
        "created_at",
        "started_at",
        "finished_at",
    ]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def may_delete(self, obj: BatchClassification) -> bool:
        return obj.is_finished

    def delete_model(self, request: HttpRequest, obj: BatchClassification) -> None:
        services.batch_delete(batch=obj, user=request.user)
