"""Django admin for studies: read-only. Every change to a study, its agreements, DPIA, ethics
approvals, participations and approvals goes through `studies.services` (the study pages and
the API call them), which check permission and state, run the gate and write the audit event."""

from typing import Any

from django.contrib import admin
from django.http import HttpRequest, HttpResponse

from consortium.audit.admin import ReadOnlyAdmin
from studies.models import AgreementSignature, AgreementVersion, Approval, Dpia, EthicsApproval, Participation, Study
from studies.services import study_viewed


@admin.register(Study)
class StudyAdmin(ReadOnlyAdmin):
    list_display = ("title", "pi", "status", "model_kind", "strategy", "rounds", "quorum", "created_at")
    list_filter = ("status", "model_kind", "strategy")
    search_fields = ("title", "clinical_question", "pi__username")
    list_select_related = ("pi",)
    date_hierarchy = "created_at"

    def change_view(self, request: HttpRequest, object_id: str, form_url: str = "",
                    extra_context: dict[str, Any] | None = None) -> HttpResponse:
        response = super().change_view(request, object_id, form_url, extra_context)
        study = getattr(response, "context_data", {}).get("original")
        if request.method == "GET" and response.status_code == 200 and study is not None:
            study_viewed(actor=request.user, study=study, via="admin")  # auditors answer "who saw what"
        return response


@admin.register(AgreementVersion)
class AgreementVersionAdmin(ReadOnlyAdmin):
    list_display = ("study", "version", "sha256", "effective_from", "effective_until", "created_by")
    list_filter = ("effective_from",)
    search_fields = ("study__title", "sha256", "text")
    list_select_related = ("study", "created_by")


@admin.register(AgreementSignature)
class AgreementSignatureAdmin(ReadOnlyAdmin):
    list_display = ("agreement", "site", "signed_by", "signed_at", "agreement_sha256")
    list_filter = ("site",)
    search_fields = ("agreement__study__title", "site__name", "signed_by__username")
    list_select_related = ("agreement__study", "site", "signed_by")


@admin.register(Dpia)
class DpiaAdmin(ReadOnlyAdmin):
    list_display = ("study", "status", "risk_level", "valid_until", "decided_by", "decided_at")
    list_filter = ("status", "risk_level")
    search_fields = ("study__title", "summary")
    list_select_related = ("study", "decided_by")


@admin.register(EthicsApproval)
class EthicsApprovalAdmin(ReadOnlyAdmin):
    list_display = ("reference", "study", "site", "valid_from", "valid_until", "recorded_by")
    list_filter = ("site",)
    search_fields = ("reference", "study__title", "site__name")
    list_select_related = ("study", "site", "recorded_by")


@admin.register(Participation)
class ParticipationAdmin(ReadOnlyAdmin):
    list_display = ("study", "site", "status", "invited_at", "decided_by", "decided_at", "reason")
    list_filter = ("status", "site")
    search_fields = ("study__title", "site__name", "reason")
    list_select_related = ("study", "site", "decided_by")


@admin.register(Approval)
class ApprovalAdmin(ReadOnlyAdmin):
    list_display = ("study", "role", "decision", "decided_by", "decided_at", "voided_at", "protocol_sha256")
    list_filter = ("role", "decision")
    search_fields = ("study__title", "decided_by__username", "comment", "protocol_sha256")
    list_select_related = ("study", "decided_by")
