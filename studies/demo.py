"""The demo consortium: four hospitals, their admins, a PI, two DPOs, an auditor and two studies.

Everything governed is built through the services with the person who would do it in real life as
the actor, so the audit log records the whole story. Only users are created directly: managing them
is the consortium admin's job in the Django admin, and there is no user service. Used by
`seed_demo` and by the headless `run_study_demo`.
"""

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, time, timedelta
from typing import Any

from django.contrib.auth import get_user_model
from django.contrib.auth.models import AbstractBaseUser
from django.utils import timezone

from consortium.audit.log import SYSTEM
from consortium.audit.services import user_roles_add
from consortium.roles import Role
from sites.agent.demo_data import feature_names
from sites.models import Site
from sites.services import signing_authority_grant, site_admin_assign, site_create
from studies import services
from studies.models import Participation, Study

DEMO_PASSWORD = "consortium-demo"
URL = "http://127.0.0.1:8000/"
ACTIVE_TITLE = "Breast cancer malignancy from FNA cytology"
PENDING_TITLE = "Sepsis onset within 48 hours of ICU admission"


@dataclass(frozen=True)
class DemoSite:
    code: str
    name: str
    city: str
    country: str
    timezone: str
    ethics_reference: str
    admin_name: tuple[str, str]


SITES = (
    DemoSite("amc", "Amsterdam UMC", "Amsterdam", "Netherlands", "Europe/Amsterdam", "METC 2025-0457",
             ("Pieter", "Bakker")),
    DemoSite("charite", "Charité – Universitätsmedizin Berlin", "Berlin", "Germany", "Europe/Berlin",
             "EA1/118/25", ("Lena", "Schulz")),
    DemoSite("clinic", "Hospital Clínic de Barcelona", "Barcelona", "Spain", "Europe/Madrid", "HCB/2025/0871",
             ("Marta", "Puig")),
    DemoSite("hus", "Helsinki University Hospital", "Helsinki", "Finland", "Europe/Helsinki", "HUS/2291/2025",
             ("Mikko", "Virtanen")),
)
# This site's ethics approval for the active study lapses soon, so the study page warns about it.
EXPIRING_SITE, EXPIRING_IN_DAYS = "hus", 19


@dataclass(frozen=True)
class DemoUser:
    username: str
    name: tuple[str, str]
    roles: tuple[Role, ...]
    note: str
    staff: bool = False


USERS = (
    DemoUser("pi", ("Anna", "Visser"), (Role.PI,), "leads both studies; creates, submits, approves as PI"),
    DemoUser("dpo", ("Jonas", "Becker"), (Role.DPO,), "drafts and submits the DPIAs; approves or rejects studies"),
    DemoUser("dpo2", ("Sofia", "Lindqvist"), (Role.DPO,),
             "reviews the DPIAs dpo submits (four eyes: the submitter may not decide)"),
    DemoUser("auditor", ("Claire", "Dubois"), (Role.AUDITOR,), "reads everything; exports the audit log"),
    DemoUser("admin", ("Consortium", "Administrator"), (Role.CONSORTIUM_ADMIN,),
             "sites, users and roles in the Django admin (/admin/)", staff=True),
    *(DemoUser(f"admin_{s.code}", s.admin_name, (), f"acts for {s.name} ({s.timezone})") for s in SITES),
)

DUA_TEXT = """Data use agreement for the study "{title}".

1. Purpose. Each site processes its own pseudonymised patient data solely to train and evaluate the
   model defined in the study protocol, and for no other purpose.
2. Data stay at the site. No patient-level record, image or free text leaves a site. Only model
   parameters, their updates and aggregate validation metrics are exchanged with the coordinator.
3. Legal basis. Each site confirms its ethics committee approval and a lawful basis under Articles 6
   and 9(2)(j) GDPR before its participation is granted, and keeps both valid for as long as it takes part.
4. Security. Updates travel over TLS; agent credentials are personal to the site and revocable.
5. Withdrawal. A site may suspend or revoke its participation at any time; from that moment no new
   update of that site is used.
6. Publication. Results are published jointly; no site is identified by its own metrics without consent.
"""


def seed(password: str) -> None:
    """Build the whole demo; call inside one transaction so a failure leaves nothing half-made."""
    users = {demo.username: _create_user(demo, password) for demo in USERS}
    admin = users["admin"]
    sites: dict[str, Site] = {}
    for demo in SITES:
        sites[demo.code] = site_create(actor=admin, name=demo.name, code=demo.code, city=demo.city,
                                       country=demo.country, timezone=demo.timezone)
        site_admin = users[f"admin_{demo.code}"]
        site_admin_assign(actor=admin, site=sites[demo.code], user=site_admin)
        # Each demo hospital records its admin as the person who signs its agreements.
        signing_authority_grant(actor=site_admin, site=sites[demo.code], user=site_admin)
    _active_study(users, sites)
    _pending_study(users, sites)


def _create_user(demo: DemoUser, password: str) -> AbstractBaseUser:
    first, last = demo.name
    user = get_user_model().objects.create_user(
        username=demo.username, password=password, email=f"{demo.username}@consortium.example",
        first_name=first, last_name=last, is_staff=demo.staff, is_superuser=demo.staff,
    )
    user_roles_add(actor=SYSTEM, user=user, roles=[role.value for role in demo.roles], via="seed_demo")
    return user


def _local(site: Site, days: int, at: time) -> datetime:
    """`at` o'clock in the site's own time zone, `days` from its today: how a site admin enters dates."""
    day = timezone.localdate(timezone.now(), site.tzinfo) + timedelta(days=days)
    return datetime.combine(day, at, tzinfo=site.tzinfo)


def govern(users: dict[str, AbstractBaseUser], study: Study, site: Site, *, sign: bool = True,
            ethics_days: int | None = 730) -> Participation:
    """The PI invites the site; its admin grants participation, signs the current DUA, accepts the protocol
    (by its hash) and records ethics."""
    admin = users[f"admin_{site.code}"]
    participation = services.participation_invite(actor=users["pi"], study=study, site=site)
    services.participation_grant(actor=admin, participation=participation, reason="Approved by the site's board.")
    if sign:
        agreement = study.agreement_versions.order_by("-version").first()
        services.agreement_sign(actor=admin, agreement=agreement, participation=participation)
        services.protocol_review(actor=admin, participation=participation, decision="accepted",
                                 protocol_sha256=study.protocol_sha256())
    if ethics_days is not None:
        reference = next((s.ethics_reference for s in SITES if s.code == site.code), f"IRB-{site.code.upper()}-DEMO")
        services.ethics_record(actor=admin, participation=participation, reference=reference,
                               valid_from=_local(site, -90, time(0, 0)), valid_until=_local(site, ethics_days,
                                                                                              time(23, 59)))
    return participation


def approve_and_activate(pi: AbstractBaseUser, dpo: AbstractBaseUser, study: Study, *, dpia_reviewer: AbstractBaseUser,
                         summary: str, risk_level: str = "low", dpia_days: int = 365,
                         comments: tuple[str, str] = ("", "")) -> Study:
    """`dpo` drafts and submits the DPIA and `dpia_reviewer`, another DPO, approves it; the study is
    submitted, approved by the PI and `dpo`, and activated."""
    services.dpia_save(actor=dpo, study=study, risk_level=risk_level, summary=summary,
                       valid_until=timezone.now() + timedelta(days=dpia_days))
    services.dpia_submit(actor=dpo, study=study)
    services.dpia_approve(actor=dpia_reviewer, study=study)
    services.study_submit(actor=pi, study=study)
    services.study_approve(actor=pi, study=study, comment=comments[0])
    services.study_approve(actor=dpo, study=study, comment=comments[1])
    return services.study_activate(actor=pi, study=study)


def _active_study(users: dict[str, AbstractBaseUser], sites: dict[str, Site]) -> Study:
    """The breast cancer study: every site governed, DPIA approved, four-eyes approved, active."""
    pi, dpo = users["pi"], users["dpo"]
    study = services.study_create(
        actor=pi, title=ACTIVE_TITLE, agreement_text=DUA_TEXT.format(title=ACTIVE_TITLE),
        clinical_question=(
            "Can a model trained across four hospitals, without pooling their data, tell malignant from benign "
            "breast masses using the 30 nuclear features measured on fine-needle aspirate (FNA) cytology images, "
            "as well as a model trained on all the data in one place?"
        ),
        model_kind="logistic_regression", strategy="fedavg", rounds=20, local_epochs=2, batch_size=32,
        learning_rate=0.05, quorum=3, round_deadline_minutes=30, label_column="target",
        num_features=30, feature_names=feature_names(),  # each site's agent registers its data set against these
    )
    for code, site in sites.items():
        govern(users, study, site, ethics_days=EXPIRING_IN_DAYS if code == EXPIRING_SITE else 730)
    return approve_and_activate(
        pi, dpo, study, dpia_reviewer=users["dpo2"],
        summary="Pseudonymised cytology features stay at each site; only model weights and aggregate metrics reach "
                "the coordinator. Re-identification risk from a 31-parameter linear model is negligible.",
        comments=("Protocol as agreed with the four sites.", "DPIA approved; DUA covers the processing."),
    )


def _pending_study(users: dict[str, AbstractBaseUser], sites: dict[str, Site]) -> Study:
    """The sepsis study: submitted, sites at different steps, DPIA under review (submitted by dpo, so dpo2
    decides on it), no approvals yet."""
    pi, dpo = users["pi"], users["dpo"]
    study = services.study_create(
        actor=pi, title=PENDING_TITLE, agreement_text=DUA_TEXT.format(title=PENDING_TITLE),
        clinical_question=(
            "Can routinely collected vital signs and laboratory values from the first 6 hours in intensive care "
            "predict the onset of sepsis within 48 hours of admission?"
        ),
        model_kind="mlp", hidden_units=32, strategy="fedprox", proximal_mu=0.01, rounds=30, local_epochs=1,
        batch_size=64, learning_rate=0.01, quorum=3, round_deadline_minutes=60, label_column="sepsis_48h",
    )
    govern(users, study, sites["amc"])
    govern(users, study, sites["charite"])
    govern(users, study, sites["clinic"], sign=False, ethics_days=None)  # granted; DUA and ethics still to come
    services.participation_invite(actor=pi, study=study, site=sites["hus"])  # invited, not yet answered
    services.dpia_save(actor=dpo, study=study, risk_level="medium", valid_until=timezone.now() + timedelta(days=365),
                       summary="ICU vital signs and laboratory values, pseudonymised at the site. A hidden layer "
                               "may memorise rare patients: assess membership-inference risk before approval.")
    services.dpia_submit(actor=dpo, study=study)
    return services.study_submit(actor=pi, study=study)


def demo_users() -> dict[str, AbstractBaseUser]:
    """The seeded demo users by username."""
    names = [demo.username for demo in USERS]
    return {user.username: user for user in get_user_model().objects.filter(username__in=names)}


def federation_study(*, title: str, rounds: int, site_codes: Sequence[str] = (), **protocol: Any) -> Study:
    """A fresh, fully governed, active study for a headless run (`run_study_demo`): by default the breast
    cancer protocol over the four demo sites; `site_codes` names other sites (created when missing, see
    `ensure_sites`) and `protocol` overrides any protocol field (strategy, its settings, label, features...)."""
    codes = list(site_codes) or [s.code for s in SITES]
    users = demo_users()
    if "dpo2" not in users:
        raise LookupError("This demo database predates the second DPO (dpo2), who approves the DPIA; "
                          "start from a fresh database (remove data/consortium.sqlite3).")
    pi, dpo = users["pi"], users["dpo"]
    settings = {"model_kind": "logistic_regression", "strategy": "fedavg", "local_epochs": 2, "batch_size": 32,
                "learning_rate": 0.05, "quorum": min(3, len(codes)), "round_deadline_minutes": 10,
                "label_column": "target", **protocol}
    study = services.study_create(  # first: a protocol the model refuses leaves no site behind
        actor=pi, title=title, agreement_text=DUA_TEXT.format(title=title), rounds=rounds,
        clinical_question="Headless run of a federation: can the sites' data, kept where they are, train one model?",
        **settings,
    )
    sites = ensure_sites(codes)
    users.update({user.username: user for user in get_user_model().objects.filter(
        username__in=[f"admin_{code}" for code in codes])})
    for code in codes:
        govern(users, study, sites[code])
    return approve_and_activate(pi, dpo, study, dpia_reviewer=users["dpo2"], dpia_days=30,
                                summary="Demo run; only weights and aggregate metrics leave the sites.")


def ensure_sites(codes: Sequence[str]) -> dict[str, Site]:
    """The sites with these codes, each administered by `admin_<code>`. A demo hospital is as seeded; any other
    code (a site of someone's own data in `run_study_demo --data-dir`) is registered by the consortium admin,
    with an admin user who has no password (nobody logs in as them: they only act in the headless run)."""
    admin = demo_users()["admin"]
    sites = {site.code: site for site in Site.objects.filter(code__in=codes)}
    for code in codes:
        if code not in sites:
            sites[code] = site_create(actor=admin, name=f"Site {code}", code=code, city="", country="")
        user, created = get_user_model().objects.get_or_create(
            username=f"admin_{code}", defaults={"first_name": "Admin of", "last_name": code})
        if created:
            user.set_unusable_password()
            user.save(update_fields=["password"])
            site_admin_assign(actor=admin, site=sites[code], user=user)
            signing_authority_grant(actor=user, site=sites[code], user=user)
    return sites
