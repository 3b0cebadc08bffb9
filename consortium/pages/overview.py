"""The consortium overview page: every study the user may see, at a glance, with what needs someone.
It spans studies and their rounds, so it lives with the project's pages; its data come from
`aggregation.overview`.

Thin: the selector reads (scoped to the user, in a fixed number of queries), the service records the
read (one audit event listing the studies shown), the template renders."""

from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render
from django.views.decorators.http import require_GET

from aggregation.overview import consortium_overview
from consortium.audit.services import overview_viewed


@login_required
@require_GET
def overview_page(request: HttpRequest) -> HttpResponse:
    """State, current round, last global metric and governance warnings of every visible study."""
    overview = consortium_overview(request.user)
    overview_viewed(actor=request.user, study_ids=overview.study_ids)
    return render(request, "aggregation/overview.html", {"overview": overview})
