"""The site page's Flower SuperNodes section (its admins): register a node's public key, revoke one. Thin:
parse, call `sites.flower_nodes`, redirect to the site page with a message."""

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect
from django.views.decorators.http import require_POST

from consortium.audit.services import select_or_deny
from consortium.errors import NotFound
from consortium.web import domain_errors, form_errors_text
from sites.audit_actions import SiteAction
from sites.flower_nodes import flower_node_get, flower_node_register, flower_node_revoke
from sites.forms import AgentTokenRevokeForm, FlowerNodeRegisterForm
from sites.selectors import site_get


@login_required
@require_POST
@domain_errors
def site_flower_node_register(request: HttpRequest, pk: int) -> HttpResponse:
    site = select_or_deny(request.user, SiteAction.FLOWER_NODE_REGISTER, lambda: site_get(request.user, pk), site=pk)
    form = FlowerNodeRegisterForm(request.POST)
    if not form.is_valid():
        messages.error(request, form_errors_text(form))
        return redirect("site-detail", pk=site.pk)
    node = flower_node_register(actor=request.user, site=site, **form.cleaned_data)
    messages.success(request, f"SuperNode “{node.name}” registered (key {node.fingerprint[:16]}…): it now acts for "
                              f"{site} in studies Flower runs, whenever the gate lets {site} take part.")
    return redirect("site-detail", pk=site.pk)


@login_required
@require_POST
@domain_errors
def site_flower_node_revoke(request: HttpRequest, pk: int, node_pk: int) -> HttpResponse:
    def select():
        node = flower_node_get(request.user, node_pk)
        if node.site_id != pk:
            raise NotFound("No such Flower node on this site.", site=pk)
        return node

    node = select_or_deny(request.user, SiteAction.FLOWER_NODE_REVOKE, select, site=pk)
    form = AgentTokenRevokeForm(request.POST)
    form.is_valid()  # a bare text field: the service refuses a blank reason (audited)
    flower_node_revoke(actor=request.user, node=node, reason=form.cleaned_data.get("reason", ""))
    messages.success(request, f"SuperNode “{node.name}” revoked: it acts for no site from now on.")
    return redirect("site-detail", pk=pk)
