"""The rounds, model version and live dashboard pages, under /studies/<pk>/ (included from consortium/urls.py)."""

from django.urls import path

from aggregation.views import dashboard, flower, ledger, rounds

app_name = "aggregation"

urlpatterns = [
    path("rounds/", rounds.rounds_page, name="rounds"),
    path("dashboard/", dashboard.dashboard_page, name="dashboard"),
    path("versions/<id:number>/", rounds.version_page, name="version"),
    path("flower-tokens/", flower.flower_token_issue, name="flower-token-issue"),
    path("flower-tokens/<id:token_pk>/revoke/", flower.flower_token_withdraw, name="flower-token-revoke"),
    path("versions/<id:number>/download/", rounds.version_download, name="version-download"),
    path("versions/<id:number>/card/", ledger.model_card_page, name="model-card"),
    path("ledger/", ledger.study_ledger_page, name="ledger"),
]
