"""The home dashboard: what each user has to do, across every study they may see."""

from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render

from consortium.audit.permissions import can_read_audit
from consortium.roles import Role, has_role
from studies import selectors as study_selectors
from studies.choices import ParticipationStatus
from studies.governance import evaluate_many


@login_required
def home(request: HttpRequest) -> HttpResponse:
    user = request.user
    visible = list(study_selectors.study_list(user))
    verdicts = evaluate_many(visible, "aggregate")  # the gate for every study in one fixed set of queries
    studies = [(study, verdicts[study.pk]) for study in visible]
    is_dpo = has_role(user, Role.DPO)
    return render(
        request,
        "consortium/home.html",
        {
            "studies": studies,
            "awaiting_review": study_selectors.studies_awaiting_review(user) if is_dpo else [],
            "dpias_under_review": study_selectors.dpias_under_review(user) if is_dpo else [],
            "in_preparation": study_selectors.studies_in_preparation(user) if has_role(user, Role.PI) else [],
            "invitations": study_selectors.invitations_for(user).filter(status=ParticipationStatus.INVITED),
            "is_dpo": is_dpo,
            "is_pi": has_role(user, Role.PI),
            "is_site_admin": has_role(user, Role.SITE_ADMIN),
            "reads_audit": can_read_audit(user),
        },
    )
