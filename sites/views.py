"""The site admin's pages: the list of their sites, and creating and revoking a site's agent tokens.

The site page itself spans apps (participations from studies, round activity from aggregation): it is
`consortium.pages.sites`, which shows the agent tokens these views create and revoke."""

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.urls import reverse
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_POST

from consortium.audit.services import select_or_deny
from consortium.errors import NotFound
from consortium.web import domain_errors, form_errors_text
from sites.audit_actions import SiteAction
from sites.forms import AgentTokenCreateForm, AgentTokenRevokeForm
from sites.models import AgentToken
from sites.selectors import agent_token_get, site_get, sites_administered
from sites.services import agent_token_create, agent_token_revoke


@login_required
def sites_list(request: HttpRequest) -> HttpResponse:
    return render(request, "sites/list.html", {"sites": sites_administered(request.user)})


@never_cache
@login_required
@require_POST
@domain_errors
def site_agent_token_create(request: HttpRequest, pk: int) -> HttpResponse:
    """Create a token and show it once, on this response only (never stored, never redirected with)."""
    site = select_or_deny(request.user, SiteAction.AGENT_TOKEN_CREATE, lambda: site_get(request.user, pk), site=pk)
    form = AgentTokenCreateForm(request.POST)
    if not form.is_valid():
        messages.error(request, form_errors_text(form))
        return redirect("site-detail", pk=site.pk)
    token, plaintext = agent_token_create(actor=request.user, site=site, name=form.cleaned_data["name"])
    server = request.build_absolute_uri("/").rstrip("/")
    return render(request, "sites/agent_token_created.html",
                  {"site": site, "token": token, "plaintext": plaintext, "server": server})


def _token_of_site(request: HttpRequest, pk: int, token_pk: int) -> AgentToken:
    """A token of site `pk` that the user administers; anything else is a 404, as in the API."""
    token = agent_token_get(request.user, token_pk)
    if token.site_id != pk:
        raise NotFound("No such agent token on this site.", site=pk)
    return token


@login_required
@require_POST
@domain_errors
def site_agent_token_revoke(request: HttpRequest, pk: int, token_pk: int) -> HttpResponse:
    token = select_or_deny(request.user, SiteAction.AGENT_TOKEN_REVOKE, lambda: _token_of_site(request, pk, token_pk),
                           site=pk)
    form = AgentTokenRevokeForm(request.POST)
    form.is_valid()  # a bare text field: always parses; the service refuses a blank reason (audited)
    agent_token_revoke(actor=request.user, token=token, reason=form.cleaned_data.get("reason", ""))
    messages.success(request, f"Token “{token.name}” ({token.prefix}) revoked: its agent is refused from now on.")
    return redirect(reverse("site-detail", args=[pk]))
