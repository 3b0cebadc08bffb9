"""The pages that show a study's rounds and model versions to the people who govern it.

Thin: find the study as the user sees it (an invisible one is a 404, and the attempt is audited),
record the read, call a selector or service, render."""

from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render
from django.views.decorators.http import require_GET

from aggregation import selectors, services
from aggregation.downloads import model_file_response
from consortium.audit.services import select_or_deny
from consortium.web import domain_errors
from studies import selectors as study_selectors
from studies.audit_actions import StudyAction
from studies.models import Study
from studies.services import study_viewed


def visible_study(request: HttpRequest, pk: int) -> Study:
    """The study as the user sees it; an invisible one is NotFound, audited as a refused study view."""
    return select_or_deny(request.user, StudyAction.STUDY_VIEW, lambda: study_selectors.study_get(request.user, pk),
                          study=pk)


@login_required
@require_GET
@domain_errors
def rounds_page(request: HttpRequest, pk: int) -> HttpResponse:
    """Every round of the study, newest first: status and reason, updates per site, the version produced."""
    study = visible_study(request, pk)
    study_viewed(actor=request.user, study=study, via="page:rounds")
    return render(request, "aggregation/rounds.html", {"study": study, "overview": selectors.rounds_overview(study)})


@login_required
@require_GET
@domain_errors
def version_page(request: HttpRequest, pk: int, number: int) -> HttpResponse:
    """One model version with its provenance and the sites' evaluation of it."""
    study = visible_study(request, pk)
    detail = selectors.version_detail(study, number)
    study_viewed(actor=request.user, study=study, via="page:version")
    return render(request, "aggregation/version.html", {"study": study, "detail": detail})


@login_required
@require_GET
@domain_errors
def version_download(request: HttpRequest, pk: int, number: int) -> HttpResponse:
    """The version's safetensors file; the service checks visibility and audits the download."""
    return model_file_response(*services.model_version_download(actor=request.user, study=pk, number=number))
