"""A site's page: its participations across studies (from `studies`), for its admins its agent tokens (from
`sites`), and, for its admins and for auditors and consortium admins, what it contributed to the rounds,
which updates were excluded and why, and which submissions were refused (from `aggregation`).

It spans apps, so it lives with the project's pages. Thin: find the site as the user sees it (an invisible
one is a 404, audited), read, record the read, render."""

from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render
from django.views.decorators.http import require_GET

from aggregation.site_activity import site_activity
from consortium.audit.services import select_or_deny
from consortium.web import domain_errors
from sites.audit_actions import SiteAction
from sites.forms import AgentTokenCreateForm
from sites.selectors import administered_site_ids, site_agent_tokens, site_get
from sites.services import site_viewed
from studies.views.site_participations import site_participation_rows


@login_required
@require_GET
@domain_errors
def site_detail(request: HttpRequest, pk: int) -> HttpResponse:
    """The site's participations, its round activity (for those who may see it) and its agent tokens."""
    site = select_or_deny(request.user, SiteAction.SITE_VIEW, lambda: site_get(request.user, pk), site=pk)
    administers = site.pk in administered_site_ids(request.user)
    context = {"site": site, "administers": administers,
               "rows": site_participation_rows(request.user, site, administers=administers)}
    if administers:  # only its admins see the site's agent tokens, even their names
        context |= {"agent_tokens": site_agent_tokens(request.user, site), "token_form": AgentTokenCreateForm()}
    activity = site_activity(request.user, site)
    shown = {row["participation"].study_id for row in context["rows"]} | (activity.study_ids if activity else set())
    site_viewed(actor=request.user, site=site, study_ids=shown)
    return render(request, "sites/detail.html", {**context, "activity": activity})
