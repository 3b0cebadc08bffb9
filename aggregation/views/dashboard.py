"""A study's live dashboard: the whole history rendered from the database, then extended in the browser
from the study's event stream (`static/js/dashboard.js`, `/ws/studies/<id>/`).

Thin: find the study as the user sees it (an invisible one is a 404, and the attempt is audited), record
the read, call the selector, render."""

from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render
from django.views.decorators.http import require_GET

from aggregation.dashboard import study_dashboard
from aggregation.site_summary import MAX_FILTER_CHARS
from aggregation.views.rounds import visible_study
from consortium.content_policy import allow_inline_styles
from consortium.web import domain_errors
from studies.disclosure import disclosure_for
from studies.services import study_viewed


@allow_inline_styles  # plotly.js styles its charts inline
@login_required
@require_GET
@domain_errors
def dashboard_page(request: HttpRequest, pk: int) -> HttpResponse:
    """Charts, round progress, the governance panel and the event feed of one study, live."""
    study = visible_study(request, pk)
    study_viewed(actor=request.user, study=study, via="page:dashboard")
    page = request.GET.get("page", "1")
    dashboard = study_dashboard(study, disclosure=disclosure_for(request.user, study),
                                site_filter=request.GET.get("site", "")[:MAX_FILTER_CHARS],
                                page=int(page) if page.isdigit() and len(page) < 6 else 1)
    return render(request, "aggregation/dashboard.html", {"study": study, "dashboard": dashboard})
