"""The study pages: list, create, detail (with the gate's dry run), approval, protocol, agreement and DPIA.

Thin: parse a form, call a selector or service, render. Every page that shows a study's data
records the read (`study_viewed`) so auditors can answer "who saw what"."""

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.forms.models import model_to_dict
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.utils import timezone

from consortium.audit.services import select_or_deny
from consortium.roles import Role, has_role
from consortium.web import call_or_form_error, domain_errors, forbidden
from studies import selectors, services
from studies.audit_actions import StudyAction
from studies.forms import AgreementForm, DpiaForm, ProtocolForm, StudyCreateForm
from studies.models import PROTOCOL_FIELDS, Study
from studies.permissions import allowed_actions, dpia_actions
from studies.views._context import diff_rows, gate_context, protocol_rows, study_context


def visible_study(request: HttpRequest, pk: int, attempt: str = StudyAction.STUDY_VIEW) -> Study:
    """The study as the user sees it; an invisible one is a 404 and the attempt is audited as `attempt`."""
    return select_or_deny(request.user, attempt, lambda: selectors.study_get(request.user, pk), study=pk)


def _attempt(request: HttpRequest, writing: str) -> str:
    return writing if request.method == "POST" else StudyAction.STUDY_VIEW


@login_required
def study_list(request: HttpRequest) -> HttpResponse:
    studies = selectors.study_list(request.user)
    return render(request, "studies/list.html", {"studies": studies, "may_create": has_role(request.user, Role.PI)})


@login_required
@domain_errors
def study_create(request: HttpRequest) -> HttpResponse:
    if request.method != "POST" and not has_role(request.user, Role.PI):
        return forbidden(request, "Only principal investigators create studies.")
    form = StudyCreateForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        study = call_or_form_error(form, services.study_create, actor=request.user, **form.cleaned_data)
        if study is not None:
            messages.success(request, f"Created “{study.title}” as a draft. Invite sites, then submit it for approval.")
            return redirect("studies:detail", pk=study.pk)
    return render(request, "studies/create.html", {"form": form})


@login_required
@domain_errors
def study_detail(request: HttpRequest, pk: int) -> HttpResponse:
    study = visible_study(request, pk)
    services.study_viewed(actor=request.user, study=study, via="page")
    return render(request, "studies/detail.html", study_context(request.user, study))


@login_required
@domain_errors
def study_approval(request: HttpRequest, pk: int) -> HttpResponse:
    """Exactly what an approval binds: protocol and hash, DUA version, text and hash, DPIA, sites, and what changed."""
    study = visible_study(request, pk)
    services.study_viewed(actor=request.user, study=study, via="page:approval")
    approvals = selectors.study_approvals(study)
    agreements = selectors.study_agreements(study)
    snapshot = selectors.last_voided_snapshot(approvals)
    changes = selectors.protocol_diff(snapshot, study.protocol()) if snapshot is not None else {}
    return render(
        request,
        "studies/approval.html",
        {
            "study": study,
            "actions": allowed_actions(request.user, study),
            "protocol": protocol_rows(study.protocol()),
            "protocol_sha256": study.protocol_sha256(),
            "agreement": agreements[0] if agreements else None,
            "dpia": getattr(study, "dpia", None),
            "live_approvals": [a for a in approvals if a.is_live],
            "previously_voided": snapshot is not None,
            "changes": diff_rows(changes),
            **gate_context(study, selectors.study_participations(study)),
        },
    )


@login_required
@domain_errors
def study_edit(request: HttpRequest, pk: int) -> HttpResponse:
    study = visible_study(request, pk, _attempt(request, StudyAction.STUDY_UPDATE))
    if request.method != "POST" and "edit_protocol" not in allowed_actions(request.user, study):
        return forbidden(
            request, "Only the study's principal investigator may change its protocol, and not once it is closed."
        )
    initial = model_to_dict(study, fields=("title", *PROTOCOL_FIELDS))
    form = ProtocolForm(request.POST or None, initial=initial)
    if request.method == "POST" and form.is_valid():
        updated = call_or_form_error(
            form, services.study_update_protocol, actor=request.user, study=study, **form.cleaned_data
        )
        if updated is not None:
            messages.success(request, _edit_outcome(study.status, updated.status))
            return redirect("studies:detail", pk=study.pk)
    services.study_viewed(actor=request.user, study=study, via="page:edit")
    return render(request, "studies/edit.html", {"study": study, "form": form})


def _edit_outcome(before: str, after: str) -> str:
    if before != after:
        return "Protocol saved. The change voided the earlier approvals: the study awaits approval again."
    return "Protocol saved."


@login_required
@domain_errors
def agreement_publish(request: HttpRequest, pk: int) -> HttpResponse:
    study = visible_study(request, pk, _attempt(request, StudyAction.AGREEMENT_PUBLISH))
    if request.method != "POST" and "publish_agreement" not in allowed_actions(request.user, study):
        return forbidden(request, "Only the study's principal investigator may publish its data use agreement.")
    agreements = selectors.study_agreements(study)
    current = agreements[0] if agreements else None
    form = AgreementForm(request.POST or None, initial={"text": current.text if current else ""})
    if request.method == "POST" and form.is_valid():
        version = call_or_form_error(
            form, services.agreement_publish, actor=request.user, study=study, text=form.cleaned_data["text"]
        )
        if version is not None:
            messages.success(
                request,
                f"Published DUA v{version.version}. Sites must sign this version; "
                "approvals given for an earlier version no longer count.",
            )
            return redirect("studies:detail", pk=study.pk)
    services.study_viewed(actor=request.user, study=study, via="page:agreement")
    return render(
        request, "studies/agreement.html", {"study": study, "form": form, "current": current, "agreements": agreements}
    )


@login_required
@domain_errors
def dpia_page(request: HttpRequest, pk: int) -> HttpResponse:
    """The DPIA for everyone who may read it (`selectors.study_dpia`, as the API); its form and buttons only
    for the steps `dpia_actions` opens to the user."""
    study = visible_study(request, pk, _attempt(request, StudyAction.DPIA_SAVE))
    if request.method == "POST":
        dpia = getattr(study, "dpia", None)  # saving is the service's to allow or refuse
    else:
        dpia = select_or_deny(request.user, StudyAction.DPIA_VIEW,
                              lambda: selectors.study_dpia(request.user, study, drafted=False), study=study)
    actions = dpia_actions(request.user, study, dpia)
    initial = (
        {
            "summary": dpia.summary,
            "risk_level": dpia.risk_level,
            "valid_until": timezone.localtime(dpia.valid_until) if dpia.valid_until else None,
        }
        if dpia
        else {}
    )
    form = DpiaForm(request.POST or None, initial=initial)
    if request.method == "POST" and form.is_valid():
        saved = call_or_form_error(form, services.dpia_save, actor=request.user, study=study, **form.cleaned_data)
        if saved is not None:
            messages.success(request, "DPIA draft saved. Put it under review when it is complete.")
            return redirect("studies:dpia", pk=study.pk)
    services.study_viewed(actor=request.user, study=study, via="page:dpia")
    return render(request, "studies/dpia.html", {"study": study, "dpia": dpia, "form": form, "actions": actions})
