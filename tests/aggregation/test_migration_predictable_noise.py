"""The data migration for model versions whose DP noise was seeded with the round's id (shown on the version
page): their budget is marked void with the reason, the seed leaves their provenance, and each amendment is
recorded in the audit chain, which still verifies."""

import importlib

import pytest
from django.apps import apps

from aggregation.models import ModelVersion, Round
from aggregation.services import round_aggregate
from consortium.audit.log import verify_chain
from consortium.audit.models import AuditEvent
from tests.aggregation.support import (
    agent_for,
    governed_study,
    open_round,
    submit,
)

pytestmark = pytest.mark.usefixtures("no_broker")

migration = importlib.import_module("aggregation.migrations.0003_void_predictable_dp_noise")


def aggregated(study, agents, number: int) -> ModelVersion:
    round_ = open_round(study) if number == 1 else Round.objects.get(study=study, number=number)
    for agent in agents:
        submit(agent, round_)
    return round_aggregate(round_id=round_.pk)


def as_before_the_fix(version: ModelVersion) -> None:
    """Put back what `_strategy_settings` stored before the fix: the round's id as the DP noise seed."""
    strategy = version.provenance["strategy"]
    settings = {**strategy["settings"], "dp_seed": version.round_id}
    ModelVersion.objects.filter(pk=version.pk).update(
        provenance={**version.provenance, "strategy": {**strategy, "settings": settings}})


@pytest.fixture
def versions(p):
    agents = [agent_for(p, p.site_a)[0], agent_for(p, p.site_b)[0]]
    dp = governed_study(p, title="With DP", dp_noise_multiplier=1.0, dp_clip_norm=0.5, rounds=2)
    seeded = aggregated(dp, agents, 1)
    as_before_the_fix(seeded)
    later = aggregated(dp, agents, 2)  # after the fix: fresh noise, but the study's earlier release leaked
    plain = governed_study(p, title="Without DP")
    no_dp = aggregated(plain, agents, 1)
    as_before_the_fix(no_dp)
    return seeded, later, no_dp


def test_it_voids_the_budget_of_versions_with_seeded_noise_and_removes_the_seed(versions):
    seeded, later, no_dp = versions
    migration.void_predictable_noise(apps, None)

    seeded.refresh_from_db()
    assert "dp_seed" not in seeded.provenance["strategy"]["settings"]
    assert seeded.provenance["privacy"]["void"] is True
    assert seeded.provenance["privacy"]["void_reason"] == migration.VOID_REASON
    assert seeded.provenance["privacy"]["epsilon_spent"] > 0  # the figure stays, shown as void
    later.refresh_from_db()  # fresh noise, but the cumulative budget counts the leaked round
    assert later.provenance["privacy"]["void"] is True
    assert later.provenance["privacy"]["void_reason"] == migration.EARLIER_REASON
    no_dp.refresh_from_db()
    assert "dp_seed" not in no_dp.provenance["strategy"]["settings"] and no_dp.provenance["privacy"] is None


def test_it_records_each_amendment_in_the_audit_chain(versions):
    seeded, later, no_dp = versions
    migration.void_predictable_noise(apps, None)
    events = AuditEvent.objects.filter(action=migration.ACTION).order_by("seq")
    assert [(e.object_id, e.study_id) for e in events] == [(str(seeded.pk), seeded.study_id),
                                                           (str(later.pk), later.study_id),
                                                           (str(no_dp.pk), no_dp.study_id)]
    assert events[0].details == {"version": 1, "removed_dp_seed": True, "privacy_void": True,
                                 "reason": migration.VOID_REASON}
    assert events[1].details == {"version": 2, "removed_dp_seed": False, "privacy_void": True,
                                 "reason": migration.EARLIER_REASON}
    assert events[2].details == {"version": 1, "removed_dp_seed": True, "privacy_void": False}
    assert verify_chain().intact
    migration.void_predictable_noise(apps, None)  # a second run finds nothing left to amend
    assert AuditEvent.objects.filter(action=migration.ACTION).count() == 3
