from django.urls import include, path

from aggregation import api

urlpatterns = [
    path("me/", api.AgentMeApi.as_view(), name="api-agent-me"),
    path("rounds/", api.AgentRoundListApi.as_view(), name="api-agent-rounds"),
    path("rounds/<id:round_id>/model/", api.AgentModelDownloadApi.as_view(), name="api-agent-model"),
    path("rounds/<id:round_id>/update/", api.AgentUpdateSubmitApi.as_view(), name="api-agent-update"),
    path("rounds/<id:round_id>/statistics/", api.AgentStatisticsSubmitApi.as_view(), name="api-agent-statistics"),
    path("rounds/<id:round_id>/evaluation/", api.AgentEvaluationSubmitApi.as_view(), name="api-agent-evaluation"),
    path("flower/", include("aggregation.flower_urls")),
]
