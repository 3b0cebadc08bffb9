"""Appointing and removing a site's admins: the object permission and the global Site admin role come
together, and the role change is recorded as `consortium.user.roles_changed` in the same transaction."""

from unittest import mock

import pytest

from consortium.audit.models import AuditEvent, AuditOutcome
from consortium.audit.services import group_names
from consortium.errors import Conflict, Forbidden
from consortium.roles import Role, has_role
from sites.permissions import can_administer
from sites.services import site_admin_assign
from tests.support import events_after, last_seq, refused


def test_it_records_the_site_admin_role_an_appointment_gives(p):
    mark = last_seq()
    site_admin_assign(actor=p.admin, site=p.site_a, user=p.outsider)
    assert can_administer(p.outsider, p.site_a) and has_role(p.outsider, Role.SITE_ADMIN)
    assigned, roles = events_after(mark)
    assert (assigned.action, assigned.outcome, assigned.site_id) == (
        "sites.admin.assigned", AuditOutcome.OK, p.site_a.pk)
    assert (roles.action, roles.outcome, roles.actor_user, roles.object_id) == (
        "consortium.user.roles_changed", AuditOutcome.OK, p.admin, str(p.outsider.pk))
    assert roles.details == {"user": "outsider", "before": [], "after": ["Site admin"], "added": ["Site admin"],
                             "removed": [], "via": "sites.admin.assign"}


def test_it_records_the_role_beside_the_users_other_roles_and_only_when_it_is_new(p):
    mark = last_seq()
    site_admin_assign(actor=p.admin, site=p.site_b, user=p.dpo)
    roles = AuditEvent.objects.get(seq__gt=mark, action="consortium.user.roles_changed")
    assert (roles.details["before"], roles.details["after"]) == (["DPO"], ["DPO", "Site admin"])

    mark = last_seq()
    site_admin_assign(actor=p.admin, site=p.site_b, user=p.site_a_admin)  # already a site admin (of site A)
    assert [event.action for event in events_after(mark)] == ["sites.admin.assigned"]


def test_it_records_nothing_but_the_refusal_of_a_refused_appointment(p):
    with refused(Conflict, "already administers", action="sites.admin.assign"):
        site_admin_assign(actor=p.admin, site=p.site_a, user=p.site_a_admin)
    with refused(Forbidden, "Only consortium admins manage sites", action="sites.admin.assign"):
        site_admin_assign(actor=p.pi, site=p.site_a, user=p.outsider)
    assert group_names(p.outsider) == []


def test_it_gives_no_role_when_the_role_change_cannot_be_recorded(p):
    """One transaction: if the audit event cannot be written, neither the role nor the permission stays."""
    with mock.patch("consortium.audit.services.user_roles_changed", side_effect=RuntimeError("audit log down")):
        with pytest.raises(RuntimeError):
            site_admin_assign(actor=p.admin, site=p.site_a, user=p.outsider)
    assert group_names(p.outsider) == [] and not can_administer(p.outsider, p.site_a)
    assert not AuditEvent.objects.filter(action="sites.admin.assigned", site_id=p.site_a.pk,
                                         details__user="outsider").exists()
