"""`manage.py seed_demo`: the demo consortium, built through the services, and safe to run twice."""

from io import StringIO

import pytest
from django.contrib.auth import get_user_model
from django.core.management import CommandError, call_command

from consortium.audit.log import verify_chain
from consortium.audit.models import AuditEvent
from consortium.roles import Role
from sites.agent.data import load_table
from sites.agent.demo_data import write_partitions
from sites.agents import AgentPrincipal
from sites.models import Site
from sites.permissions import can_administer
from sites.services import agent_token_create
from studies import services
from studies.choices import ApprovalDecision, DpiaStatus, StudyStatus
from studies.governance import evaluate
from studies.management.commands.seed_demo import ACTIVE_TITLE, DEMO_PASSWORD, PENDING_TITLE
from studies.models import Approval, Study

User = get_user_model()


def seed(*args: str) -> str:
    out = StringIO()
    call_command("seed_demo", *args, stdout=out)
    return out.getvalue()


@pytest.mark.django_db
def test_it_creates_four_sites_with_their_admins_and_the_roles():
    seed()
    sites = list(Site.objects.all())
    assert len(sites) == 4
    assert len({site.timezone for site in sites}) == 4
    for site in sites:
        admin = User.objects.get(username=f"admin_{site.code}")
        assert can_administer(admin, site)
        assert admin.groups.filter(name=Role.SITE_ADMIN.value).exists()
    consortium_admin = User.objects.get(username="admin")
    assert consortium_admin.is_staff and consortium_admin.is_superuser
    for username, role in [("pi", Role.PI), ("dpo", Role.DPO), ("dpo2", Role.DPO), ("auditor", Role.AUDITOR),
                           ("admin", Role.CONSORTIUM_ADMIN)]:
        assert User.objects.get(username=username).groups.filter(name=role.value).exists()
    assert User.objects.get(username="pi").check_password(DEMO_PASSWORD)


@pytest.mark.django_db
def test_it_makes_the_active_study_pass_the_gate_with_four_sites_once_their_agents_register(tmp_path):
    seed()
    study = Study.objects.get(title=ACTIVE_TITLE)
    assert study.status == StudyStatus.ACTIVE
    assert (study.quorum, study.rounds, study.label_column, len(study.feature_names)) == (3, 20, "target", 30)
    waiting = evaluate(study, "aggregate").failures
    assert {check.name for check in waiting} == {"dataset_registered", "quorum"}
    # Each hospital's agent registers its partition when `serve_demo` starts it (here: through the same service).
    for code, path in write_partitions(tmp_path, [site.code for site in Site.objects.all()]).items():
        site = Site.objects.get(code=code)
        token, _ = agent_token_create(actor=User.objects.get(username=f"admin_{code}"), site=site, name="demo agent")
        done = services.dataset_register(actor=AgentPrincipal(token), study_id=study.pk,
                                         summary=load_table(path).summary("target"))
        assert done.mismatches == []
    result = evaluate(study, "aggregate")
    assert result.allowed, [check.reason for check in result.failures]
    assert len(result.eligible_sites) == 4
    expiring = [check for check in result.expiring_within(30) if check.name == "ethics"]
    assert [check.site_name for check in expiring] == ["Helsinki University Hospital"]


@pytest.mark.django_db
def test_it_has_each_dpia_decided_by_a_dpo_other_than_its_submitter():
    output = seed()
    active, pending = Study.objects.get(title=ACTIVE_TITLE).dpia, Study.objects.get(title=PENDING_TITLE).dpia
    assert (active.submitted_by.username, active.decided_by.username) == ("dpo", "dpo2")
    assert (pending.status, pending.submitted_by.username) == (DpiaStatus.UNDER_REVIEW, "dpo")
    assert [line.split()[0] for line in output.splitlines() if line.startswith("dpo")] == ["dpo", "dpo2"]


@pytest.mark.django_db
def test_it_leaves_the_other_study_awaiting_approval():
    seed()
    study = Study.objects.get(title=PENDING_TITLE)
    assert study.status == StudyStatus.SUBMITTED
    assert study.dpia.status == DpiaStatus.UNDER_REVIEW
    assert not Approval.objects.filter(study=study, decision=ApprovalDecision.APPROVED).exists()
    assert not evaluate(study, "aggregate").allowed
    assert study.participations.count() == 4


@pytest.mark.django_db
def test_it_records_everything_in_an_intact_audit_chain():
    seed()
    report = verify_chain()
    assert report.intact and report.verified == AuditEvent.objects.count()
    actions = set(AuditEvent.objects.values_list("action", flat=True))
    assert {"sites.site.created", "sites.admin.assigned", "studies.study.approved", "studies.study.activated",
            "studies.agreement.signed", "studies.ethics.recorded", "consortium.user.roles_changed"} <= actions
    assert not AuditEvent.objects.filter(outcome="denied").exists()


@pytest.mark.django_db
def test_it_is_harmless_to_run_twice():
    seed()
    counts = (User.objects.count(), Site.objects.count(), Study.objects.count(), AuditEvent.objects.count())
    output = seed()
    assert "already exists" in output
    assert DEMO_PASSWORD in output and "http://127.0.0.1:8000/" in output
    assert (User.objects.count(), Site.objects.count(), Study.objects.count(), AuditEvent.objects.count()) == counts
    assert verify_chain().intact


@pytest.mark.django_db
def test_it_uses_the_password_given():
    output = seed("--password", "another-demo-secret")
    assert "another-demo-secret" in output
    assert User.objects.get(username="admin_hus").check_password("another-demo-secret")
    assert "(set when first seeded)" in seed()


@pytest.mark.django_db
def test_it_refuses_a_database_that_already_uses_the_demo_names():
    User.objects.create_user(username="pi", password="x" * 12)
    with pytest.raises(CommandError, match="already exist"):
        seed()
    assert not Site.objects.exists() and not AuditEvent.objects.exists()


@pytest.mark.django_db
def test_it_refuses_a_weak_password():
    with pytest.raises(CommandError, match="--password"):
        seed("--password", "short")
    assert not User.objects.exists()


@pytest.mark.django_db
def test_it_records_every_role_it_gives_in_the_audit_log():
    """Replaying the `roles_changed` events gives every demo user exactly the groups they hold."""
    seed()
    for user in User.objects.prefetch_related("groups"):
        events = AuditEvent.objects.filter(action="consortium.user.roles_changed", object_id=str(user.pk))
        last = events.order_by("-seq").first()
        recorded = last.details["after"] if last else []
        assert recorded == sorted(group.name for group in user.groups.all()), user.username
    assert AuditEvent.objects.filter(action="consortium.user.roles_changed", details__after=["Site admin"]).count() == 4
