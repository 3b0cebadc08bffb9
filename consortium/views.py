"""Consortium-wide pages: the home dashboard, the audit log (with its CSV export), and the answers to
errors Django raises before any view (JSON under /api/)."""

from typing import Any

from django.contrib.auth.decorators import login_required
from django.core.paginator import Paginator
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import render
from django.views import defaults

from consortium import selectors
from consortium.audit import verify_chain
from consortium.audit_details import readable_details
from consortium.audit_filters import AuditFilter, AuditFilterForm
from consortium.audit_streams import streamed_export
from consortium.checkpoints import export_checkpoint, latest_checkpoint
from consortium.errors import ValidationFailed
from consortium.permissions import can_read_audit
from consortium.request_limits import API_PREFIX
from consortium.roles import Role, has_role
from consortium.services import audit_log_read, select_or_deny
from consortium.web import domain_errors
from studies import selectors as study_selectors
from studies.choices import ParticipationStatus
from studies.governance import evaluate_many

AUDIT_PAGE_SIZE = 50


@login_required
def home(request: HttpRequest) -> HttpResponse:
    user = request.user
    visible = list(study_selectors.study_list(user))
    verdicts = evaluate_many(visible, "aggregate")  # the gate for every study in one fixed set of queries
    studies = [(study, verdicts[study.pk]) for study in visible]
    is_dpo = has_role(user, Role.DPO)
    return render(
        request,
        "consortium/home.html",
        {
            "studies": studies,
            "awaiting_review": study_selectors.studies_awaiting_review(user) if is_dpo else [],
            "dpias_under_review": study_selectors.dpias_under_review(user) if is_dpo else [],
            "in_preparation": study_selectors.studies_in_preparation(user) if has_role(user, Role.PI) else [],
            "invitations": study_selectors.invitations_for(user).filter(status=ParticipationStatus.INVITED),
            "is_dpo": is_dpo,
            "is_pi": has_role(user, Role.PI),
            "is_site_admin": has_role(user, Role.SITE_ADMIN),
            "reads_audit": can_read_audit(user),
        },
    )


def _events(request: HttpRequest, via: str) -> tuple[Any, AuditFilterForm, AuditFilter | None]:
    """The filtered log; a non-reader gets a 403 (the page's existence is no secret) and the attempt is audited.
    An invalid filter selects nothing (the form says why): never a silently wider list."""
    form = AuditFilterForm({k: v for k, v in request.GET.items() if k != "page"})
    audit_filter = form.audit_filter() if form.is_valid() else None
    chosen = audit_filter or AuditFilter()
    events = select_or_deny(request.user, f"consortium.audit.{via}",
                            lambda: selectors.audit_events_for(request.user, audit_filter=chosen))
    return (events if audit_filter is not None else events.none()), form, audit_filter


@login_required
@domain_errors
def audit_log(request: HttpRequest) -> HttpResponse:
    events, form, audit_filter = _events(request, "viewed")
    page = Paginator(events, AUDIT_PAGE_SIZE).get_page(request.GET.get("page"))
    audit_log_read(
        actor=request.user,
        via="viewed",
        count=len(page.object_list),
        filters={**(audit_filter.details() if audit_filter else {"invalid": form.error_text()}), "page": page.number},
    )
    query = request.GET.copy()
    query.pop("page", None)
    return render(
        request,
        "consortium/audit_log.html",
        {
            "form": form,
            "page": page,
            "rows": [(event, readable_details(event.details)) for event in page.object_list],
            "chain": verify_chain(),
            "query": query.urlencode(),
            "checkpoint": latest_checkpoint(),
        },
        status=200 if audit_filter is not None else 400,
    )


@login_required
@domain_errors
def audit_export(request: HttpRequest, export_format: str = "csv") -> HttpResponse:
    events, form, audit_filter = _events(request, "exported")
    if audit_filter is None:
        raise ValidationFailed(f"Invalid filter. {form.error_text()}")
    checkpoint = export_checkpoint()
    audit_log_read(actor=request.user, via="exported", count=None,
                   filters={**audit_filter.details(), "format": export_format, "through_seq": checkpoint.tree_size,
                            "checkpoint": checkpoint.number})
    return streamed_export(events, checkpoint, export_format)


# --- Errors Django answers itself (handler400/404/500): JSON under /api/, pages elsewhere ---------------


def _json_error(code: str, detail: str, status: int) -> JsonResponse:
    return JsonResponse({"error": code, "detail": detail}, status=status)


def bad_request(request: HttpRequest, exception: Exception) -> HttpResponse:
    """A request Django refuses before any view (e.g. too many query parameters)."""
    if request.path.startswith(API_PREFIX):
        return _json_error("bad_request", "The request is malformed (e.g. too many parameters).", 400)
    return defaults.bad_request(request, exception)


def page_not_found(request: HttpRequest, exception: Exception) -> HttpResponse:
    if request.path.startswith(API_PREFIX):
        return _json_error("not_found", f"No API endpoint at {request.path[:200]}.", 404)
    return defaults.page_not_found(request, exception)


def server_error(request: HttpRequest) -> HttpResponse:
    if request.path.startswith(API_PREFIX):
        return _json_error("server_error", "The server failed to answer; the error is logged.", 500)
    return defaults.server_error(request)
