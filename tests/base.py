"""Personas every test speaks of, and a helper that walks a study through the real services
to a fully governed, active state."""

from dataclasses import dataclass
from datetime import timedelta

from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group
from django.utils import timezone

from consortium.roles import Role
from sites.agents import AgentPrincipal
from sites.models import AgentToken, Site
from sites.services import agent_token_create, signing_authority_grant, site_admin_assign
from studies import services
from studies.demo import approve_and_activate
from studies.models import Participation, Study

User = get_user_model()
PASSWORD = "correct horse battery staple"
DUA_TEXT = "The parties agree to process pseudonymised data solely for the study's stated purpose."


def make_user(username: str, *roles: Role, **extra) -> User:
    user = User.objects.create_user(username=username, password=PASSWORD, email=f"{username}@example.org", **extra)
    for role in roles:
        user.groups.add(Group.objects.get_or_create(name=role.value)[0])
    return user


@dataclass
class Personas:
    pi: User
    dpo: User
    dpo2: User  # a second DPO: the one who approves what `dpo` submits (four eyes on the DPIA)
    site_a_admin: User
    site_b_admin: User
    auditor: User
    outsider: User
    admin: User
    site_a: Site
    site_b: Site

    def site_admin_of(self, site: Site) -> User:
        return self.site_a_admin if site == self.site_a else self.site_b_admin


def make_personas() -> Personas:
    admin = make_user("admin", Role.CONSORTIUM_ADMIN)
    site_a = Site.objects.create(name="Amsterdam UMC", code="amc", city="Amsterdam", country="NL")
    site_b = Site.objects.create(name="Charité Berlin", code="charite", city="Berlin", country="DE",
                                 timezone="Europe/Berlin")
    site_a_admin = make_user("site_a_admin")
    site_b_admin = make_user("site_b_admin")
    site_admin_assign(actor=admin, site=site_a, user=site_a_admin)
    site_admin_assign(actor=admin, site=site_b, user=site_b_admin)
    # Each site records its admin as the one who signs its agreements (the DUA signatures of most tests).
    signing_authority_grant(actor=site_a_admin, site=site_a, user=site_a_admin)
    signing_authority_grant(actor=site_b_admin, site=site_b, user=site_b_admin)
    return Personas(
        pi=make_user("pi", Role.PI),
        dpo=make_user("dpo", Role.DPO),
        dpo2=make_user("dpo2", Role.DPO),
        site_a_admin=site_a_admin,
        site_b_admin=site_b_admin,
        auditor=make_user("auditor", Role.AUDITOR),
        outsider=make_user("outsider"),
        admin=admin,
        site_a=site_a,
        site_b=site_b,
    )


def appoint_site_admin(actor, site: Site, user) -> None:
    """Make `user` an admin of `site` who also holds its signing authority (as the personas' admins do)."""
    site_admin_assign(actor=actor, site=site, user=user)
    signing_authority_grant(actor=user, site=site, user=user)


def draft_study(p: Personas, *, title: str = "Sepsis risk", quorum: int = 2, **protocol) -> Study:
    return services.study_create(
        actor=p.pi, title=title, clinical_question="Can we predict sepsis within 48 h of admission?",
        agreement_text=DUA_TEXT, quorum=quorum, **protocol,
    )


def govern_site(p: Personas, study: Study, site: Site, *, days: int = 365) -> Participation:
    """Invite, grant, sign the current DUA, record ethics and accept the protocol for one site, as its admin
    would."""
    admin = p.site_admin_of(site)
    participation = services.participation_invite(actor=p.pi, study=study, site=site)
    services.participation_grant(actor=admin, participation=participation)
    agreement = study.agreement_versions.order_by("-version").first()
    services.agreement_sign(actor=admin, agreement=agreement, participation=participation)
    now = timezone.now()
    services.ethics_record(actor=admin, participation=participation, reference=f"IRB-{site.code}-1",
                           valid_from=now - timedelta(days=1), valid_until=now + timedelta(days=days))
    accept_protocol(admin, participation)
    register_dataset(p, study, site)
    return participation


# The rows each governed site registers by default: more than any test's update declares, unless it means to.
REGISTERED_ROWS = 100_000
REGISTRATION_TOKEN = "Agent next to the data"


def matching_summary(study: Study, *, rows: int = REGISTERED_ROWS, positives: int | None = None) -> dict:
    """A data set summary that matches the study's schema: its declared features, else `num_features` columns
    named x1, x2, ..., and its label column (binary, balanced unless `positives` says otherwise)."""
    study.refresh_from_db()
    names = list(study.feature_names) or [f"x{i}" for i in range(1, study.num_features + 1)]
    positives = rows // 2 if positives is None else positives
    return {"rows": rows, "label_column": study.label_column,
            "label": {"present": True, "positives": positives, "negatives": rows - positives, "other": 0},
            "features": [{"name": name, "type": "float", "missing": 0} for name in names]}


def site_agent(p: Personas, site: Site, admin: User | None = None) -> AgentPrincipal:
    """The site's agent, through a token its admin (default: the persona's) created, reused once made."""
    token = AgentToken.objects.filter(site=site, name=REGISTRATION_TOKEN, revoked_at__isnull=True).first()
    if token is None:
        token, _ = agent_token_create(actor=admin or p.site_admin_of(site), site=site, name=REGISTRATION_TOKEN)
    return AgentPrincipal(token)


def register_dataset(p: Personas, study: Study, site: Site, summary: dict | None = None, *,
                     admin: User | None = None, **shape):
    """The site's agent registers its data set for the study, as it does when it connects (by default one
    that matches the protocol's schema)."""
    return services.dataset_register(actor=site_agent(p, site, admin), study_id=study.pk,
                                     summary=summary if summary is not None else matching_summary(study, **shape))


def accept_protocol(admin, participation: Participation) -> None:
    """The site's admin accepts the study's current protocol (by its hash), as on the review page."""
    study = Study.objects.get(pk=participation.study_id)
    services.protocol_review(actor=admin, participation=participation, decision="accepted",
                             protocol_sha256=study.protocol_sha256())


def approve_dpia(p: Personas, study: Study, *, days: int = 365) -> None:
    services.dpia_save(actor=p.dpo, study=study, summary="Pseudonymised vitals; weights only leave sites.",
                       risk_level="medium", valid_until=timezone.now() + timedelta(days=days))
    services.dpia_submit(actor=p.dpo, study=study)
    services.dpia_approve(actor=p.dpo2, study=study)


def activate(p: Personas, study: Study) -> Study:
    """DPIA submitted by the DPO and approved by the second DPO; study submitted, approved by the PI and
    the DPO (four eyes), activated."""
    approve_and_activate(p.pi, p.dpo, study, dpia_reviewer=p.dpo2,
                         summary="Pseudonymised vitals; weights only leave sites.", risk_level="medium")
    study.refresh_from_db()
    return study


def active_study(p: Personas, *, sites: tuple[Site, ...] | None = None, **protocol) -> Study:
    """A study with its sites (default: site A and B) fully governed, a DPIA, both approvals, and activated."""
    study = draft_study(p, **protocol)
    for site in sites or (p.site_a, p.site_b):
        govern_site(p, study, site)
    return activate(p, study)
