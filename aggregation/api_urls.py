from django.urls import include, path

from aggregation import api, secure_api

urlpatterns = [
    path("me/", api.AgentMeApi.as_view(), name="api-agent-me"),
    path("rounds/", api.AgentRoundListApi.as_view(), name="api-agent-rounds"),
    path("rounds/<id:round_id>/model/", api.AgentModelDownloadApi.as_view(), name="api-agent-model"),
    path("rounds/<id:round_id>/update/", api.AgentUpdateSubmitApi.as_view(), name="api-agent-update"),
    path("rounds/<id:round_id>/statistics/", api.AgentStatisticsSubmitApi.as_view(), name="api-agent-statistics"),
    path("rounds/<id:round_id>/evaluation/", api.AgentEvaluationSubmitApi.as_view(), name="api-agent-evaluation"),
    path("rounds/<id:round_id>/secagg/", secure_api.AgentSecureStateApi.as_view(), name="api-agent-secagg"),
    path("rounds/<id:round_id>/secagg/keys/", secure_api.AgentSecureKeysApi.as_view(), name="api-agent-secagg-keys"),
    path("rounds/<id:round_id>/secagg/shares/", secure_api.AgentSecureSharesApi.as_view(),
         name="api-agent-secagg-shares"),
    path("rounds/<id:round_id>/secagg/masked-input/", secure_api.AgentSecureMaskedInputApi.as_view(),
         name="api-agent-secagg-masked-input"),
    path("rounds/<id:round_id>/secagg/unmask/", secure_api.AgentSecureUnmaskApi.as_view(),
         name="api-agent-secagg-unmask"),
    path("flower/", include("aggregation.flower_urls")),
    path("rounds/<id:round_id>/decline/", api.AgentRoundDeclineApi.as_view(), name="api-agent-decline"),
    path("studies/", api.AgentStudyListApi.as_view(), name="api-agent-studies"),
    path("studies/<id:study_id>/dataset/", api.AgentDatasetRegisterApi.as_view(), name="api-agent-dataset"),
    path("ledger/", api.AgentLedgerApi.as_view(), name="api-agent-ledger"),
]
