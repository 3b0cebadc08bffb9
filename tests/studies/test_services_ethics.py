"""Ethics (IRB) approvals, recorded per site by that site's admin."""

from datetime import datetime, timedelta

import pytest
from django.utils import timezone

from consortium.errors import Forbidden, InvalidTransition, NotFound, ValidationFailed
from studies import services
from studies.models import EthicsApproval, Participation
from tests.base import draft_study
from tests.support import last_seq, only_event, refused

ACTION = "studies.ethics.record"


@pytest.fixture
def participation(p) -> Participation:
    return services.participation_invite(actor=p.pi, study=draft_study(p), site=p.site_a)


def record(p, participation, actor=None, **overrides) -> EthicsApproval:
    now = timezone.now()
    values = {"reference": "METC-2026-001", "valid_from": now - timedelta(days=1),
              "valid_until": now + timedelta(days=365), **overrides}
    return services.ethics_record(actor=actor or p.site_a_admin, participation=participation, **values)


def test_it_records_a_sites_ethics_approval(p, participation):
    mark = last_seq()
    approval = record(p, participation, reference="  METC-7 ")
    assert (approval.site, approval.study, approval.reference, approval.recorded_by) == (
        p.site_a, participation.study, "METC-7", p.site_a_admin)
    event = only_event(mark, "studies.ethics.recorded")
    assert (event.study_id, event.site_id) == (participation.study_id, p.site_a.pk)
    assert event.details == {"reference": "METC-7", "valid_from": approval.valid_from.isoformat(),
                             "valid_until": approval.valid_until.isoformat()}


def test_it_refuses_another_sites_admin(p, participation):
    with refused(NotFound, "No such study", action=ACTION):
        record(p, participation, actor=p.site_b_admin)
    services.participation_invite(actor=p.pi, study=participation.study, site=p.site_b)
    with refused(Forbidden, "Only an admin of Amsterdam UMC may record", action=ACTION):
        record(p, participation, actor=p.site_b_admin)


def test_it_refuses_naive_datetimes(p, participation):
    with refused(ValidationFailed, "Dates need a time zone", action=ACTION):
        record(p, participation, valid_from=datetime(2026, 1, 1), valid_until=datetime(2030, 1, 1))
    with refused(ValidationFailed, "Dates need a time zone", action=ACTION):
        record(p, participation, valid_until=datetime(2030, 1, 1))


def test_it_refuses_an_expired_approval(p, participation):
    now = timezone.now()
    with refused(ValidationFailed, "already expired", action=ACTION):
        record(p, participation, valid_from=now - timedelta(days=400), valid_until=now - timedelta(seconds=1))


def test_it_refuses_an_approval_that_ends_before_it_starts(p, participation):
    now = timezone.now()
    with refused(ValidationFailed, "must end after it starts", action=ACTION):
        record(p, participation, valid_from=now + timedelta(days=30), valid_until=now + timedelta(days=29))
    with refused(ValidationFailed, "must end after it starts", action=ACTION):
        record(p, participation, valid_from=now + timedelta(days=30), valid_until=now + timedelta(days=30))


def test_it_refuses_an_empty_reference(p, participation):
    with refused(ValidationFailed, "Give the ethics approval's reference", action=ACTION):
        record(p, participation, reference="  ")


def test_it_refuses_once_participation_is_revoked(p, participation):
    services.participation_revoke(actor=p.site_a_admin, participation=participation, reason="Withdrawn.")
    with refused(InvalidTransition, "no longer taking part", action=ACTION):
        record(p, participation)
