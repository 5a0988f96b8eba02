from __future__ import annotations

from django.contrib import admin
from django.contrib.auth import views as auth_views
from django.urls import include, path

from webapp.views import batches, classify, datasets, health, jobs, pages, projects, versions

urlpatterns = [
    path("healthz", health.healthz, name="healthz"),
    path("login/", auth_views.LoginView.as_view(), name="login"),
    path("logout/", auth_views.LogoutView.as_view(), name="logout"),
    path("admin/", admin.site.urls),
    path("api/v1/", include("webapp.api.urls")),
    path("", pages.dashboard, name="dashboard"),
    path("datasets/", pages.dataset_list, name="dataset_list"),
    path("jobs/", pages.job_list, name="job_list"),
    path("models/", pages.version_list, name="version_list"),
    path("batches/", pages.batch_list, name="batch_list"),
    # Projects
    path("projects/", projects.project_list, name="project_list"),
    path("projects/new/", projects.project_create, name="project_create"),
    path("projects/<slug:slug>/", projects.project_detail, name="project_detail"),
    path("projects/<slug:slug>/rollback/", versions.project_rollback, name="project_rollback"),
    path(
        "projects/<slug:slug>/activations/",
        projects.project_activations,
        name="project_activations",
    ),
    # Datasets
    path("projects/<slug:slug>/datasets/new/", datasets.dataset_new, name="dataset_new"),
    path(
        "projects/<slug:slug>/datasets/upload/",
        datasets.dataset_upload_zip,
        name="dataset_upload_zip",
    ),
    path("projects/<slug:slug>/datasets/create/", datasets.dataset_create, name="dataset_create"),
    path(
        "projects/<slug:slug>/datasets/import-folder/",
        datasets.dataset_import_folder,
        name="dataset_import_folder",
    ),
    path(
        "projects/<slug:slug>/datasets/import-url/",
        datasets.dataset_import_url,
        name="dataset_import_url",
    ),
    path("projects/<slug:slug>/datasets/<int:pk>/", datasets.dataset_detail, name="dataset_detail"),
    path(
        "projects/<slug:slug>/datasets/<int:pk>/status/",
        datasets.dataset_status,
        name="dataset_status",
    ),
    path(
        "projects/<slug:slug>/datasets/<int:pk>/add/",
        datasets.dataset_add_images,
        name="dataset_add_images",
    ),
    path(
        "projects/<slug:slug>/datasets/<int:pk>/delete/",
        datasets.dataset_delete,
        name="dataset_delete",
    ),
    path(
        "projects/<slug:slug>/datasets/<int:pk>/thumb/<path:relpath>",
        datasets.dataset_thumbnail,
        name="dataset_thumbnail",
    ),
    # Training jobs
    path("projects/<slug:slug>/train/", jobs.job_create, name="job_create"),
    path("jobs/<int:pk>/", jobs.job_detail, name="job_detail"),
    path("jobs/<int:pk>/live/", jobs.job_live, name="job_live"),
    path("jobs/<int:pk>/cancel/", jobs.job_cancel, name="job_cancel"),
    # Model versions
    path(
        "projects/<slug:slug>/models/<int:number>/", versions.version_detail, name="version_detail"
    ),
    path(
        "projects/<slug:slug>/models/<int:number>/activate/",
        versions.version_activate,
        name="version_activate",
    ),
    path(
        "projects/<slug:slug>/models/<int:number>/delete/",
        versions.version_delete,
        name="version_delete",
    ),
    path(
        "projects/<slug:slug>/models/<int:number>/files/<str:filename>",
        versions.version_download,
        name="version_download",
    ),
    # Batches (started from the classify page)
    path("projects/<slug:slug>/batches/", batches.project_batch_list, name="project_batch_list"),
    path("batches/<int:pk>/", batches.batch_detail, name="batch_detail"),
    path("batches/<int:pk>/live/", batches.batch_live, name="batch_live"),
    path("batches/<int:pk>/cancel/", batches.batch_cancel, name="batch_cancel"),
    path("batches/<int:pk>/delete/", batches.batch_delete, name="batch_delete"),
    # Classify
    path("classify/", classify.classify, name="classify"),
    path("classify/photos/", classify.classify_photos, name="classify_photos"),
    path("classify/batches/", classify.batch_create, name="batch_create"),
    path("predictions/<int:pk>/correct/", classify.prediction_correct, name="prediction_correct"),
    path(
        "predictions/<int:pk>/add-to-dataset/",
        classify.prediction_add_to_dataset,
        name="prediction_add_to_dataset",
    ),
]
