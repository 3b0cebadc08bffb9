"""The rounds, model version and live dashboard pages, under /studies/<pk>/ (included from consortium/urls.py)."""

from django.urls import path

from aggregation.views import dashboard, rounds

app_name = "aggregation"

urlpatterns = [
    path("rounds/", rounds.rounds_page, name="rounds"),
    path("dashboard/", dashboard.dashboard_page, name="dashboard"),
    path("versions/<id:number>/", rounds.version_page, name="version"),
    path("versions/<id:number>/download/", rounds.version_download, name="version-download"),
]
