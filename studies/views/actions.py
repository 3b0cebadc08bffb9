"""The buttons on the study and site pages: one POST endpoint per family, each action a row of data.

Each row names the service, the form that parses its input and what to tell the user afterwards.
The service checks permission and state and audits; a refusal comes back as a 404, a 403 page
or a message on the page the form was posted from (`consortium.web`)."""

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import redirect
from django.urls import reverse
from django.views.decorators.http import require_POST

from consortium.audit.services import select_or_deny
from consortium.errors import DomainError, NotFound
from consortium.web import domain_errors, error_response, form_errors_text, safe_next
from studies import forms, selectors, services
from studies.audit_actions import StudyAction
from studies.choices import StudyStatus
from studies.models import Participation
from studies.views.pages import visible_study


@dataclass(frozen=True)
class Action:
    attempt: str  # the audited action name, used when the target is refused before the service runs
    service: Callable[..., Any]
    form: type[forms.ActionForm]
    done: str | Callable[[Any], str]

    def message(self, result: Any) -> str:
        return self.done(result) if callable(self.done) else self.done


def _approved(approval: Any) -> str:
    if approval.study.status in {StudyStatus.APPROVED, StudyStatus.ACTIVE}:
        return f"Approval recorded. Both approvals are in: the study is {approval.study.get_status_display().lower()}."
    return f"Approval recorded as {approval.get_role_display()}. The other approval must come from someone else."


STUDY_ACTIONS: dict[str, Action] = {
    "submit": Action(
        StudyAction.STUDY_SUBMIT,
        services.study_submit,
        forms.NoInputForm,
        "Submitted: the study awaits the PI's and a DPO's approval.",
    ),
    "approve": Action(StudyAction.STUDY_APPROVE, services.study_approve, forms.CommentForm, _approved),
    "reject": Action(
        StudyAction.STUDY_REJECT, services.study_reject, forms.ReasonForm, "Rejected with your reason; the PI sees it."
    ),
    "activate": Action(
        StudyAction.STUDY_ACTIVATE,
        services.study_activate,
        forms.NoInputForm,
        "Activated: rounds may run for eligible sites.",
    ),
    "suspend": Action(
        StudyAction.STUDY_SUSPEND,
        services.study_suspend,
        forms.JustificationForm,
        "Suspended at once. Resuming needs the PI's and a DPO's approval again.",
    ),
    "close": Action(StudyAction.STUDY_CLOSE, services.study_close, forms.ReasonForm, "Closed for good."),
    "invite": Action(
        StudyAction.PARTICIPATION_INVITE,
        services.participation_invite,
        forms.InviteForm,
        lambda p: f"Invited {p.site}. Its admin now sees the invitation.",
    ),
    "dpia-submit": Action(
        StudyAction.DPIA_SUBMIT, services.dpia_submit, forms.NoInputForm, "The DPIA is under review."
    ),
    "dpia-approve": Action(StudyAction.DPIA_APPROVE, services.dpia_approve, forms.CommentForm, "DPIA approved."),
    "dpia-reject": Action(
        StudyAction.DPIA_REJECT, services.dpia_reject, forms.ReasonForm, "DPIA rejected with your reason."
    ),
    "dpia-revise": Action(
        StudyAction.DPIA_REVISE,
        services.dpia_revise,
        forms.ReasonForm,
        "The DPIA is a draft again; it no longer passes the gate until approved.",
    ),
}

PARTICIPATION_ACTIONS: dict[str, Action] = {
    "grant": Action(
        StudyAction.PARTICIPATION_GRANT,
        services.participation_grant,
        forms.OptionalReasonForm,
        "Participation granted.",
    ),
    "suspend": Action(
        StudyAction.PARTICIPATION_SUSPEND, services.participation_suspend, forms.ReasonForm, "Participation suspended."
    ),
    "resume": Action(
        StudyAction.PARTICIPATION_RESUME,
        services.participation_resume,
        forms.OptionalReasonForm,
        "Participation resumed.",
    ),
    "revoke": Action(
        StudyAction.PARTICIPATION_REVOKE,
        services.participation_revoke,
        forms.ReasonForm,
        "Participation revoked: from now on the gate refuses this site for every action.",
    ),
    "withdraw": Action(
        StudyAction.PARTICIPATION_WITHDRAW,
        services.participation_withdraw,
        forms.ReasonForm,
        "Site withdrawn from the study.",
    ),
    "sign": Action(
        StudyAction.AGREEMENT_SIGN,
        services.agreement_sign,
        forms.SignForm,
        lambda s: f"{s.site} signed DUA v{s.agreement.version} ({s.agreement_sha256[:12]}…).",
    ),
    "ethics": Action(StudyAction.ETHICS_RECORD, services.ethics_record, forms.EthicsForm, "Ethics approval recorded."),
}


def _run(request: HttpRequest, action: Action, form: forms.ActionForm, back: str, **target: Any) -> HttpResponse:
    if not form.is_valid():
        messages.error(request, form_errors_text(form))
        return redirect(back)
    try:
        result = action.service(actor=request.user, **target, **form.service_kwargs())
    except DomainError as exc:
        return error_response(request, exc, back=back)
    messages.success(request, action.message(result))
    return redirect(back)


@login_required
@require_POST
@domain_errors
def study_action(request: HttpRequest, pk: int, action: str) -> HttpResponse:
    spec = STUDY_ACTIONS.get(action)
    if spec is None:
        raise Http404("No such action.")
    study = visible_study(request, pk, spec.attempt)
    back = safe_next(request, reverse("studies:detail", args=[study.pk]))
    return _run(request, spec, spec.form(request.POST, target=study), back, study=study)


def _participation_in(request: HttpRequest, pk: int, participation_pk: int) -> Participation:
    """A participation the user may act on or see in study `pk`; another site's is a 404, as in the API."""
    participation = selectors.participation_get(request.user, participation_pk)
    if participation.study_id != pk:
        raise NotFound("No such participation in this study.", study=pk)
    return participation


@login_required
@require_POST
@domain_errors
def participation_action(request: HttpRequest, pk: int, participation_pk: int, action: str) -> HttpResponse:
    spec = PARTICIPATION_ACTIONS.get(action)
    if spec is None:
        raise Http404("No such action.")
    participation = select_or_deny(
        request.user, spec.attempt, lambda: _participation_in(request, pk, participation_pk), study=pk
    )
    back = safe_next(request, reverse("studies:detail", args=[pk]))
    return _run(request, spec, spec.form(request.POST, target=participation), back, participation=participation)
