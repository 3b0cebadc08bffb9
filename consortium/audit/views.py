"""The audit log's page and its CSV and JSONL exports (all audited, a refused read too)."""

from typing import Any

from django.contrib.auth.decorators import login_required
from django.core.paginator import Paginator
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render

from consortium.audit import selectors
from consortium.audit.checkpoints import export_checkpoint, latest_checkpoint
from consortium.audit.details import readable_details
from consortium.audit.filters import AuditFilter, AuditFilterForm
from consortium.audit.log import verify_chain
from consortium.audit.services import audit_log_read, select_or_deny
from consortium.audit.streams import streamed_export
from consortium.errors import ValidationFailed
from consortium.web import domain_errors

AUDIT_PAGE_SIZE = 50


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
