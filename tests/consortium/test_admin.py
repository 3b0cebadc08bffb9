"""The Django admin: sites and their admins go through the services; governed models are read-only;
role changes are audited."""

import pytest
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group
from django.test import Client
from django.urls import reverse

from consortium.audit.log import verify_chain
from consortium.audit.models import AuditEvent
from consortium.roles import Role
from sites.models import Site
from sites.permissions import can_administer
from studies.models import AgreementSignature, AgreementVersion, Approval, Dpia, EthicsApproval, Participation
from tests.base import Personas, active_study, make_user


@pytest.fixture
def root(p: Personas):
    """A consortium admin who is also a Django superuser, as `seed_demo` makes `admin`."""
    return make_user("root", Role.CONSORTIUM_ADMIN, is_staff=True, is_superuser=True)


@pytest.fixture
def client_as_root(root) -> Client:
    client = Client()
    client.force_login(root)
    return client


@pytest.mark.django_db
def test_it_offers_every_role_as_a_group_on_a_fresh_database():
    assert set(Role.values) <= set(Group.objects.values_list("name", flat=True))


def site_form(**overrides) -> dict:
    return {"name": "Karolinska University Hospital", "code": "karolinska", "city": "Stockholm",
            "country": "Sweden", "timezone": "Europe/Stockholm", "admins": [], **overrides}


def test_it_creates_a_site_through_the_service_and_audits_it(client_as_root, root, p):
    response = client_as_root.post(reverse("admin:sites_site_add"), site_form(admins=[p.outsider.pk]))
    assert response.status_code == 302, response.content
    site = Site.objects.get(code="karolinska")
    created = AuditEvent.objects.get(action="sites.site.created", site_id=site.pk)
    assert created.actor_user_id == root.pk
    assert created.details["after"]["timezone"] == "Europe/Stockholm"
    assert AuditEvent.objects.filter(action="sites.admin.assigned", site_id=site.pk, actor_user_id=root.pk).exists()
    assert can_administer(p.outsider, site)
    assert verify_chain().intact


def test_it_refuses_an_invalid_time_zone_and_writes_nothing(client_as_root):
    events = AuditEvent.objects.count()
    response = client_as_root.post(reverse("admin:sites_site_add"), site_form(timezone="Europe/Atlantis"))
    assert response.status_code == 200 and b"IANA time zone" in response.content
    assert not Site.objects.filter(code="karolinska").exists()
    assert AuditEvent.objects.count() == events


def test_it_updates_a_site_and_swaps_its_admins_through_the_services(client_as_root, p):
    url = reverse("admin:sites_site_change", args=[p.site_b.pk])
    data = site_form(name=p.site_b.name, code=p.site_b.code, city="Berlin", country="Germany",
                     timezone="Europe/Berlin", admins=[p.outsider.pk])
    response = client_as_root.post(url, data)
    assert response.status_code == 302, response.content
    updated = AuditEvent.objects.get(action="sites.site.updated", site_id=p.site_b.pk)
    assert updated.details["before"]["country"] == "DE" and updated.details["after"]["country"] == "Germany"
    assert AuditEvent.objects.filter(action="sites.admin.removed", site_id=p.site_b.pk).exists()
    assert can_administer(p.outsider, p.site_b) and not can_administer(p.site_b_admin, p.site_b)


def test_it_does_not_audit_a_site_saved_unchanged(client_as_root, p):
    url = reverse("admin:sites_site_change", args=[p.site_a.pk])
    form = client_as_root.get(url).context["adminform"].form
    assert list(form.initial["admins"]) == [p.site_a_admin]
    data = {**{f: form.initial[f] for f in ("name", "code", "city", "country", "timezone")},
            "admins": [p.site_a_admin.pk]}
    events = AuditEvent.objects.count()
    assert client_as_root.post(url, data).status_code == 302
    assert AuditEvent.objects.count() == events


def test_it_never_deletes_a_site(client_as_root, p):
    response = client_as_root.post(reverse("admin:sites_site_delete", args=[p.site_a.pk]), {"post": "yes"})
    assert response.status_code == 403
    assert Site.objects.filter(pk=p.site_a.pk).exists()


def test_it_keeps_sites_away_from_staff_who_are_not_consortium_admins(p):
    staff = make_user("staff", is_staff=True)
    client = Client()
    client.force_login(staff)
    assert client.post(reverse("admin:sites_site_add"), site_form()).status_code == 403
    assert not Site.objects.filter(code="karolinska").exists()


def test_it_shows_studies_read_only_and_refuses_changes(client_as_root, p):
    study = active_study(p)
    change_url = reverse("admin:studies_study_change", args=[study.pk])
    page = client_as_root.get(change_url)
    assert page.status_code == 200
    assert b'name="_save"' not in page.content
    assert AuditEvent.objects.filter(action="studies.study.viewed", study_id=study.pk,
                                     details__via="admin").exists()
    assert client_as_root.post(change_url, {"title": "Renamed", "status": "draft"}).status_code == 403
    assert client_as_root.get(reverse("admin:studies_study_add")).status_code == 403
    assert client_as_root.post(reverse("admin:studies_study_delete", args=[study.pk]),
                               {"post": "yes"}).status_code == 403
    study.refresh_from_db()
    assert (study.title, study.status) == ("Sepsis risk", "active")


@pytest.mark.parametrize("model", [Participation, Approval, Dpia, EthicsApproval, AgreementVersion, AgreementSignature])
def test_it_refuses_changes_to_every_governed_model(client_as_root, p, model):
    active_study(p)
    obj = model.objects.first()
    name = f"admin:studies_{model._meta.model_name}"
    assert client_as_root.get(reverse(f"{name}_changelist")).status_code == 200
    assert client_as_root.post(reverse(f"{name}_change", args=[obj.pk]), {}).status_code == 403
    assert client_as_root.post(reverse(f"{name}_delete", args=[obj.pk]), {"post": "yes"}).status_code == 403
    assert client_as_root.get(reverse(f"{name}_add")).status_code == 403


def test_it_lists_the_audit_log_and_refuses_to_edit_or_delete_an_event(client_as_root, p):
    event = AuditEvent.objects.order_by("seq").first()
    listing = client_as_root.get(reverse("admin:consortium_auditevent_changelist"))
    assert listing.status_code == 200 and b"sites.admin.assigned" in listing.content
    assert AuditEvent.objects.filter(action="consortium.audit.admin_viewed").exists()
    change_url = reverse("admin:consortium_auditevent_change", args=[event.pk])
    page = client_as_root.get(change_url)
    assert page.status_code == 200 and b'name="_save"' not in page.content
    assert client_as_root.post(change_url, {"action": "forged"}).status_code == 403
    delete_url = reverse("admin:consortium_auditevent_delete", args=[event.pk])
    assert client_as_root.post(delete_url, {"post": "yes"}).status_code == 403
    event.refresh_from_db()
    assert event.action == "sites.admin.assigned"
    assert verify_chain().intact


def user_form(user, **overrides) -> dict:
    return {"username": user.username, "email": user.email, "first_name": "", "last_name": "",
            "is_active": "on", "date_joined_0": "2025-01-01", "date_joined_1": "09:00:00",
            "last_login_0": "", "last_login_1": "", "groups": [], "user_permissions": [], **overrides}


def test_it_audits_a_change_of_a_users_roles(client_as_root, root, p):
    auditor_group = Group.objects.get(name=Role.AUDITOR.value)
    dpo_group = Group.objects.get(name=Role.DPO.value)
    url = reverse("admin:auth_user_change", args=[p.outsider.pk])
    response = client_as_root.post(url, user_form(p.outsider, groups=[auditor_group.pk, dpo_group.pk]))
    assert response.status_code == 302, response.content
    event = AuditEvent.objects.get(action="consortium.user.roles_changed", object_id=str(p.outsider.pk))
    assert event.actor_user_id == root.pk
    assert (event.details["before"], event.details["after"]) == ([], ["Auditor", "DPO"])

    client_as_root.post(url, user_form(p.outsider, groups=[dpo_group.pk]))
    removal = AuditEvent.objects.filter(action="consortium.user.roles_changed").order_by("-seq").first()
    assert (removal.details["before"], removal.details["removed"]) == (["Auditor", "DPO"], ["Auditor"])
    assert verify_chain().intact


def test_it_does_not_audit_a_user_saved_with_the_same_roles(client_as_root, p):
    group = Group.objects.get(name=Role.PI.value)
    events = AuditEvent.objects.count()
    response = client_as_root.post(reverse("admin:auth_user_change", args=[p.pi.pk]),
                                   user_form(p.pi, first_name="Ada", groups=[group.pk]))
    assert response.status_code == 302, response.content
    assert AuditEvent.objects.count() == events


def test_it_keeps_role_groups_from_being_renamed_or_deleted(client_as_root):
    client, group = client_as_root, Group.objects.get(name=Role.DPO.value)
    change = client.get(reverse("admin:auth_group_change", args=[group.pk]))
    assert change.status_code == 200 and 'name="name"' not in change.content.decode()
    assert client.post(reverse("admin:auth_group_delete", args=[group.pk]), {"post": "yes"}).status_code == 403
    assert Group.objects.filter(name=Role.DPO.value).exists()


def new_user_form(username: str) -> dict:
    return {"username": username, "password1": "x-Strong-Pass-9412", "password2": "x-Strong-Pass-9412",
            "usable_password": "true"}


@pytest.mark.parametrize("username", ["-2+3", "@A1", "+1", "=cmd"])
def test_it_refuses_a_new_username_a_spreadsheet_would_run_as_a_formula(client_as_root, username):
    User = get_user_model()
    response = client_as_root.post(reverse("admin:auth_user_add"), new_user_form(username))
    assert response.status_code == 200
    assert "spreadsheets opening the audit log&#x27;s CSV would read it as a formula" in response.content.decode()
    assert not User.objects.filter(username=username).exists()


def test_it_accepts_a_username_with_those_characters_inside_it(client_as_root):
    response = client_as_root.post(reverse("admin:auth_user_add"), new_user_form("ana-maria+ward@7"))
    assert response.status_code == 302, response.content
    assert get_user_model().objects.filter(username="ana-maria+ward@7").exists()


def test_it_refuses_renaming_a_user_to_a_formula_but_keeps_an_existing_name(client_as_root, p):
    url = reverse("admin:auth_user_change", args=[p.outsider.pk])
    response = client_as_root.post(url, user_form(p.outsider, username="-2+3"))
    assert response.status_code == 200 and "would read it as a formula" in response.content.decode()
    p.outsider.refresh_from_db()
    assert p.outsider.username == "outsider"

    legacy = make_user("@legacy")  # made before usernames were checked
    response = client_as_root.post(reverse("admin:auth_user_change", args=[legacy.pk]),
                                   user_form(legacy, first_name="Lea", email="lea@example.org"))
    assert response.status_code == 302, response.content


def roles_events(user) -> list[AuditEvent]:
    return list(AuditEvent.objects.filter(action="consortium.user.roles_changed", object_id=str(user.pk))
                .order_by("seq"))


def test_it_audits_the_role_an_appointment_in_the_site_admin_gives(client_as_root, root, p):
    url = reverse("admin:sites_site_change", args=[p.site_b.pk])
    data = site_form(name=p.site_b.name, code=p.site_b.code, city="Berlin", country="DE",
                     timezone="Europe/Berlin", admins=[p.site_b_admin.pk, p.auditor.pk])
    assert client_as_root.post(url, data).status_code == 302
    [event] = roles_events(p.auditor)
    assert event.actor_user_id == root.pk
    assert (event.details["before"], event.details["after"]) == (["Auditor"], ["Auditor", "Site admin"])


@pytest.mark.parametrize("how", ["rename", "delete", "bulk_delete"])
def test_it_audits_each_members_groups_when_a_group_is_renamed_or_deleted(client_as_root, root, p, how):
    group = Group.objects.create(name="Biobank liaison")
    p.pi.groups.add(group)  # test setup: the admin's user form would have audited this
    if how == "rename":
        response = client_as_root.post(reverse("admin:auth_group_change", args=[group.pk]),
                                       {"name": "Biobank contact", "permissions": []})
        after = ["Biobank contact", "PI"]
    elif how == "delete":
        response = client_as_root.post(reverse("admin:auth_group_delete", args=[group.pk]), {"post": "yes"})
        after = ["PI"]
    else:
        response = client_as_root.post(reverse("admin:auth_group_changelist"),
                                       {"action": "delete_selected", "_selected_action": [group.pk], "post": "yes"})
        after = ["PI"]
    assert response.status_code == 302, response.content
    [event] = roles_events(p.pi)
    assert event.actor_user_id == root.pk and event.details["via"] == "admin:group"
    assert (event.details["before"], event.details["after"]) == (["Biobank liaison", "PI"], after)
    assert roles_events(p.dpo) == [], "only the group's members changed"
    assert verify_chain().intact
