"""Every REST endpoint, mounted at /api/ (the schema and Swagger UI are at /api/schema/ and /api/docs/)."""

from django.urls import include, path, re_path
from rest_framework.settings import api_settings

from consortium import api as consortium_api
from consortium.audit import api as audit_api
from sites import api as sites_api
from sites.authentication import AgentTokenAuthentication
from studies import api as studies_api

# Unknown /api/ paths answer in JSON too, never with the HTML 404 page; the caller (a person or a site
# agent) is identified so that the attempt can be audited.
api_not_found = consortium_api.ApiNotFound.as_view(
    authentication_classes=[*api_settings.DEFAULT_AUTHENTICATION_CLASSES, AgentTokenAuthentication])


def _study(suffix: str, view: type, name: str) -> object:
    return path(f"studies/<id:pk>/{suffix}", view.as_view(), name=name)


def _participation(suffix: str, view: type, name: str) -> object:
    return path(f"participations/<id:pk>/{suffix}", view.as_view(), name=name)


urlpatterns = [
    path("auth/token/", audit_api.TokenObtainApi.as_view(), name="api-token"),
    path("sites/", sites_api.SiteListApi.as_view(), name="api-site-list"),
    path("sites/<id:pk>/agent-tokens/", sites_api.SiteAgentTokenListCreateApi.as_view(),
         name="api-agent-token-list"),
    path("agent-tokens/<id:pk>/revoke/", sites_api.AgentTokenRevokeApi.as_view(), name="api-agent-token-revoke"),
    path("studies/", studies_api.StudyListCreateApi.as_view(), name="api-study-list"),
    _study("", studies_api.StudyDetailApi, "api-study-detail"),
    _study("submit/", studies_api.StudySubmitApi, "api-study-submit"),
    _study("approve/", studies_api.StudyApproveApi, "api-study-approve"),
    _study("reject/", studies_api.StudyRejectApi, "api-study-reject"),
    _study("activate/", studies_api.StudyActivateApi, "api-study-activate"),
    _study("suspend/", studies_api.StudySuspendApi, "api-study-suspend"),
    _study("close/", studies_api.StudyCloseApi, "api-study-close"),
    _study("gate/", studies_api.StudyGateApi, "api-study-gate"),
    _study("agreements/", studies_api.AgreementListPublishApi, "api-agreement-list"),
    _study("dpia/", studies_api.DpiaDetailApi, "api-dpia-detail"),
    _study("dpia/submit/", studies_api.DpiaSubmitApi, "api-dpia-submit"),
    _study("dpia/approve/", studies_api.DpiaApproveApi, "api-dpia-approve"),
    _study("dpia/reject/", studies_api.DpiaRejectApi, "api-dpia-reject"),
    _study("dpia/revise/", studies_api.DpiaReviseApi, "api-dpia-revise"),
    _study("participations/", studies_api.ParticipationListInviteApi, "api-participation-list"),
    _participation("", studies_api.ParticipationDetailApi, "api-participation-detail"),
    _participation("grant/", studies_api.ParticipationGrantApi, "api-participation-grant"),
    _participation("suspend/", studies_api.ParticipationSuspendApi, "api-participation-suspend"),
    _participation("resume/", studies_api.ParticipationResumeApi, "api-participation-resume"),
    _participation("revoke/", studies_api.ParticipationRevokeApi, "api-participation-revoke"),
    _participation("withdraw/", studies_api.ParticipationWithdrawApi, "api-participation-withdraw"),
    _participation("sign/", studies_api.AgreementSignApi, "api-agreement-sign"),
    _participation("ethics/", studies_api.EthicsRecordApi, "api-ethics-record"),
    path("audit/events/", audit_api.AuditEventListApi.as_view(), name="api-audit-list"),
    path("audit/events.csv", audit_api.AuditEventExportApi.as_view(), name="api-audit-export"),
    path("agent/", include("aggregation.api_urls")),
    re_path(r"^(?P<rest>.*)$", api_not_found, name="api-not-found"),
]
