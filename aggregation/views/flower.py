"""The rounds page's Flower coordinator section (the study's PI): issue the coordinator's token (shown once)
and revoke it. Thin: parse, call `aggregation.services.flower`, render or redirect."""

from django import forms
from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_POST

from aggregation.audit_actions import AggregationAction
from aggregation.models import FlowerCoordinatorToken
from aggregation.services.flower import flower_token_create, flower_token_revoke
from consortium.audit.services import select_or_deny
from consortium.errors import NotFound
from consortium.web import domain_errors, form_errors_text
from studies.permissions import can_lead
from studies.selectors import study_get


class FlowerTokenForm(forms.Form):
    name = forms.CharField(max_length=100, label="Name", help_text="Where the coordinator (Flower's SuperLink and "
                                                                   "ServerApp) runs, e.g. 'SuperLink at the AMC'.")


class FlowerTokenRevokeForm(forms.Form):
    reason = forms.CharField(widget=forms.Textarea(attrs={"rows": 2}), required=False)


def flower_section(user, study) -> dict:
    """The rounds page's context for the PI: the study's coordinator tokens and the form; nothing for others."""
    if not can_lead(user, study):
        return {}
    tokens = FlowerCoordinatorToken.objects.filter(study=study).select_related("created_by", "revoked_by")
    return {"flower_tokens": list(tokens), "flower_form": FlowerTokenForm()}


@never_cache
@login_required
@require_POST
@domain_errors
def flower_token_issue(request: HttpRequest, pk: int) -> HttpResponse:
    study = select_or_deny(request.user, AggregationAction.FLOWER_TOKEN_CREATE, lambda: study_get(request.user, pk),
                           study=pk)
    form = FlowerTokenForm(request.POST)
    if not form.is_valid():
        messages.error(request, form_errors_text(form))
        return redirect("aggregation:rounds", pk=study.pk)
    token, plaintext = flower_token_create(actor=request.user, study=study, name=form.cleaned_data["name"])
    server = request.build_absolute_uri("/").rstrip("/")
    return render(request, "aggregation/flower_token_created.html",
                  {"study": study, "token": token, "plaintext": plaintext, "server": server})


@login_required
@require_POST
@domain_errors
def flower_token_withdraw(request: HttpRequest, pk: int, token_pk: int) -> HttpResponse:
    def select() -> FlowerCoordinatorToken:
        token = FlowerCoordinatorToken.objects.select_related("study").filter(pk=token_pk, study_id=pk).first()
        if token is None or not can_lead(request.user, token.study):
            raise NotFound("No such Flower coordinator token.", study=pk)
        return token

    token = select_or_deny(request.user, AggregationAction.FLOWER_TOKEN_REVOKE, select, study=pk)
    form = FlowerTokenRevokeForm(request.POST)
    form.is_valid()  # a bare text field: the service refuses a blank reason (audited)
    flower_token_revoke(actor=request.user, token=token, reason=form.cleaned_data.get("reason", ""))
    messages.success(request, f"Flower coordinator token “{token.name}” revoked: its next request is refused.")
    return redirect("aggregation:rounds", pk=pk)
