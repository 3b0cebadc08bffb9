"""The contribution ledger pages (per study, per site) and the printable model card.

Thin: find the study or site as the user sees it (an invisible one is a 404, audited), parse the filters
(an unknown one is a 400 page, never ignored), call the ledger, record the read, render."""

from typing import Any
from urllib.parse import urlencode

from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render
from django.views.decorators.http import require_GET

from aggregation import ledger
from aggregation.audit_actions import AggregationAction
from aggregation.model_card import model_card
from aggregation.views.rounds import visible_study
from consortium.audit.services import select_or_deny, study_data_read
from consortium.errors import ValidationFailed
from consortium.web import domain_errors
from sites.selectors import site_get
from studies.permissions import studies_for

COLUMNS = (("round", "Round"), ("site", "Site"), ("status", "Status"), ("num_examples", "Examples declared"),
           ("weight", "Weight applied"), ("audit_seq", "Audit event"))


def _filters(request: HttpRequest, allowed: tuple[str, ...]) -> dict[str, Any]:
    """The page's filters, typed; an unknown or malformed one is a 400 with the reason."""
    unknown = sorted(set(request.GET) - set(allowed))
    if unknown:
        raise ValidationFailed(f"Unknown filter: {', '.join(unknown)}. This page takes {', '.join(allowed)}.")
    values: dict[str, Any] = {}
    for name in ("round", "site", "study"):
        raw = request.GET.get(name, "").strip()
        if name in allowed and raw:
            if not raw.isdigit() or len(raw) > 18:
                raise ValidationFailed(f"The {name} filter takes a number (got {raw[:20]!r}).")
            values[name] = int(raw)
    status = request.GET.get("status", "").strip()
    if status and status not in ledger.STATUSES:
        raise ValidationFailed(f"The status filter takes one of {', '.join(ledger.STATUSES)}.")
    sort = request.GET.get("sort", "round").strip() or "round"
    if sort.lstrip("-") not in ledger.SORT_KEYS:
        raise ValidationFailed(f"Sort by one of {', '.join(ledger.SORT_KEYS)} (a leading - sorts descending).")
    return {**values, "status": status or None, "sort": sort}


def _apply(rows: list[ledger.LedgerRow], filters: dict[str, Any]) -> list[ledger.LedgerRow]:
    sort = filters["sort"]
    return ledger.filter_rows(rows, round=filters.get("round"), site=filters.get("site"), status=filters["status"],
                              sort=sort.lstrip("-"), descending=sort.startswith("-"))


def _page(request: HttpRequest, rows: list[ledger.LedgerRow], filters: dict[str, Any], **context: Any) -> HttpResponse:
    shown = _apply(rows, filters)
    kept = {k: v for k, v in filters.items() if v is not None and k != "sort"}
    headers = [{"key": key, "label": label, "sorted": filters["sort"].lstrip("-") == key,
                "descending": filters["sort"] == f"-{key}",
                "href": "?" + urlencode({**kept, "sort": f"-{key}" if filters["sort"] == key else key})}
               for key, label in COLUMNS]
    return render(request, "aggregation/ledger.html", {
        "rows": shown, "totals": ledger.totals(shown), "filters": filters, "headers": headers,
        "statuses": ledger.STATUSES, "rounds": sorted({row.round for row in rows}),
        "sites": sorted({(row.site_id, row.site) for row in rows}, key=lambda s: s[1]), **context})


@login_required
@require_GET
@domain_errors
def study_ledger_page(request: HttpRequest, pk: int) -> HttpResponse:
    """The study's contribution ledger: one row per round and site, sortable and filterable on the server."""
    study = visible_study(request, pk)
    filters = select_or_deny(request.user, AggregationAction.LEDGER_VIEW,
                             lambda: _filters(request, ("round", "site", "status", "sort")), study=study)
    rows = ledger.study_ledger(study)
    study_data_read(actor=request.user, action=AggregationAction.LEDGER_VIEWED, study=study, target=study,
                    details={"via": "page:ledger", "filters": {k: v for k, v in filters.items() if v is not None}})
    return _page(request, rows, filters, study=study)


@login_required
@require_GET
@domain_errors
def site_ledger_page(request: HttpRequest, pk: int) -> HttpResponse:
    """One site's contributions across the studies the user may see."""
    site = select_or_deny(request.user, AggregationAction.LEDGER_VIEW, lambda: site_get(request.user, pk), site=pk)
    filters = select_or_deny(request.user, AggregationAction.LEDGER_VIEW,
                             lambda: _filters(request, ("round", "study", "status", "sort")), site=site)
    studies = studies_for(request.user).filter(participations__site=site).distinct().order_by("pk")
    if filters.get("study") is not None:
        studies = studies.filter(pk=filters["study"])
    rows = ledger.site_ledger(site, studies)
    study_data_read(actor=request.user, action=AggregationAction.LEDGER_VIEWED, site=site, target=site,
                    details={"via": "page:site-ledger", "studies": sorted({row.study_id for row in rows})})
    return _page(request, rows, filters, site=site)


@login_required
@require_GET
@domain_errors
def model_card_page(request: HttpRequest, pk: int, number: int) -> HttpResponse:
    """The printable model card of a version."""
    study = visible_study(request, pk)
    card = select_or_deny(request.user, AggregationAction.MODEL_CARD_VIEW, lambda: model_card(study, number),
                          study=study)
    study_data_read(actor=request.user, action=AggregationAction.MODEL_CARD_VIEWED, study=study, target=study,
                    details={"via": "page:model-card", "version": number})
    return render(request, "aggregation/model_card.html", {"study": study, "card": card})
