"""The rounds, model version and live dashboard pages, under /studies/<pk>/ (included from consortium/urls.py)."""

from django.urls import path

from aggregation.views import dashboard, ledger, rounds

app_name = "aggregation"

urlpatterns = [
    path("rounds/", rounds.rounds_page, name="rounds"),
    path("dashboard/", dashboard.dashboard_page, name="dashboard"),
    path("versions/<id:number>/", rounds.version_page, name="version"),
    path("versions/<id:number>/download/", rounds.version_download, name="version-download"),
    path("versions/<id:number>/card/", ledger.model_card_page, name="model-card"),
    path("ledger/", ledger.study_ledger_page, name="ledger"),
]
