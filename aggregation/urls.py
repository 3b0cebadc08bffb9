"""The rounds and model version pages, under /studies/<pk>/ (included from consortium/urls.py)."""

from django.urls import path

from aggregation import views

app_name = "aggregation"

urlpatterns = [
    path("rounds/", views.rounds_page, name="rounds"),
    path("versions/<int:number>/", views.version_page, name="version"),
    path("versions/<int:number>/download/", views.version_download, name="version-download"),
]
