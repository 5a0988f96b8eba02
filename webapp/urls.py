from __future__ import annotations

from django.contrib import admin
from django.contrib.auth import views as auth_views
from django.urls import include, path

from webapp.views import health, pages

urlpatterns = [
    path("healthz", health.healthz, name="healthz"),
    path("login/", auth_views.LoginView.as_view(), name="login"),
    path("logout/", auth_views.LogoutView.as_view(), name="logout"),
    path("admin/", admin.site.urls),
    path("api/v1/", include("webapp.api.urls")),
    path("", pages.dashboard, name="dashboard"),
    path("projects/", pages.project_list, name="project_list"),
    path("projects/new/", pages.project_create, name="project_create"),
    path("projects/<slug:slug>/", pages.project_detail, name="project_detail"),
    path("datasets/", pages.dataset_list, name="dataset_list"),
    path("jobs/", pages.job_list, name="job_list"),
    path("models/", pages.version_list, name="version_list"),
    path("classify/", pages.classify, name="classify"),
]
