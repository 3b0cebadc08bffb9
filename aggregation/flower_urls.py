"""/api/agent/flower/: the study's Flower coordinator (`aggregation.flower.GovernedStrategy`)."""

from django.urls import path

from aggregation import flower_api

urlpatterns = [
    path("me/", flower_api.FlowerMeApi.as_view(), name="api-flower-me"),
    path("initial-model/", flower_api.FlowerInitialModelApi.as_view(), name="api-flower-initial-model"),
    path("rounds/", flower_api.FlowerRoundOpenApi.as_view(), name="api-flower-round-open"),
    path("rounds/<id:round_id>/results/", flower_api.FlowerRoundResultsApi.as_view(), name="api-flower-results"),
    path("rounds/<id:round_id>/version/", flower_api.FlowerRoundVersionApi.as_view(), name="api-flower-version"),
]
