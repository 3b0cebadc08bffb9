"""The audit log's page and its CSV export (both audited, a refused read too)."""

from typing import Any

from django.contrib.auth.decorators import login_required
from django.core.paginator import Paginator
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render

from consortium.audit import selectors
from consortium.audit.forms import AuditFilterForm
from consortium.audit.log import verify_chain
from consortium.audit.services import audit_log_read, select_or_deny
from consortium.web import csv_attachment, domain_errors

AUDIT_PAGE_SIZE = 50


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
