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
from consortium.forms import AuditFilterForm
from consortium.permissions import can_read_audit
from consortium.request_limits import API_PREFIX
from consortium.roles import Role, has_role
from consortium.services import audit_log_read, select_or_deny
from consortium.web import csv_attachment, domain_errors
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


def _filters(request: HttpRequest) -> dict[str, Any]:
    """The audit filters from the query string; malformed ones are dropped, not guessed."""
    form = AuditFilterForm(request.GET or None)
    if not form.is_valid():
        return {"form": form, "study_id": None, "action_prefix": ""}
    return {"form": form, "study_id": form.cleaned_data["study"], "action_prefix": form.cleaned_data["action"]}


def _events(request: HttpRequest, via: str) -> tuple[Any, dict[str, Any]]:
    """The filtered log; a non-reader gets a 403 (the page's existence is no secret) and the attempt is audited."""
    filters = _filters(request)
    events = select_or_deny(request.user,
        f"consortium.audit.{via}",
        lambda: selectors.audit_events_for(
            request.user, study_id=filters["study_id"], action_prefix=filters["action_prefix"]
        ),
    )
    return events, filters


@login_required
@domain_errors
def audit_log(request: HttpRequest) -> HttpResponse:
    events, filters = _events(request, "viewed")
    page = Paginator(events, AUDIT_PAGE_SIZE).get_page(request.GET.get("page"))
    audit_log_read(
        actor=request.user,
        via="viewed",
        count=len(page.object_list),
        filters={"study_id": filters["study_id"], "action_prefix": filters["action_prefix"], "page": page.number},
    )
    query = request.GET.copy()
    query.pop("page", None)
    return render(
        request,
        "consortium/audit_log.html",
        {
            "form": filters["form"],
            "page": page,
            "chain": verify_chain(),
            "query": query.urlencode(),
        },
    )


@login_required
@domain_errors
def audit_export(request: HttpRequest) -> HttpResponse:
    events, filters = _events(request, "exported")
    events = list(events.order_by("seq"))
    audit_log_read(
        actor=request.user,
        via="exported",
        count=len(events),
        filters={"study_id": filters["study_id"], "action_prefix": filters["action_prefix"]},
    )
    return csv_attachment(selectors.audit_csv(events), "consortium-audit.csv")


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
