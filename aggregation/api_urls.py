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
    path("rounds/<id:round_id>/decline/", api.AgentRoundDeclineApi.as_view(), name="api-agent-decline"),
    path("studies/", api.AgentStudyListApi.as_view(), name="api-agent-studies"),
    path("studies/<id:study_id>/dataset/", api.AgentDatasetRegisterApi.as_view(), name="api-agent-dataset"),
    path("ledger/", api.AgentLedgerApi.as_view(), name="api-agent-ledger"),
]
