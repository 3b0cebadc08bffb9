"""The data migration that fills each study's privacy ledger from the training rounds it already released: the
noise multiplier each version's provenance records, 0 for a round without noise or with void (predictable)
noise; one audit event per study, and the chain still verifies."""

import importlib

from django.apps import apps

from aggregation.models import ModelVersion, Round
from aggregation.services import round_aggregate
from consortium.audit.log import verify_chain
from consortium.audit.models import AuditEvent
from studies.models import Study
from tests.aggregation.support import agent_for, governed_study, open_round, submit

migration = importlib.import_module("aggregation.migrations.0007_privacy_ledger")


def released(study: Study, agents, number: int) -> ModelVersion:
    round_ = open_round(study) if number == 1 else Round.objects.get(study=study, number=number)
    for agent in agents:
        submit(agent, round_)
    return round_aggregate(round_id=round_.pk)


def test_it_fills_the_ledger_from_the_released_rounds(p):
    agents = [agent_for(p, p.site_a)[0], agent_for(p, p.site_b)[0]]
    dp = governed_study(p, title="With DP", dp_noise_multiplier=1.0, dp_target_epsilon=50.0, rounds=3)
    first = released(dp, agents, 1)
    released(dp, agents, 2)
    plain = governed_study(p, title="Without DP", rounds=3)
    released(plain, agents, 1)
    untouched = governed_study(p, title="No round yet")
    # As an older version marked void by 0003 (its noise was predictable), and as studies before the ledger.
    ModelVersion.objects.filter(pk=first.pk).update(
        provenance={**first.provenance, "privacy": {**first.provenance["privacy"], "void": True}})
    Study.objects.update(privacy_ledger={})

    migration.fill_ledgers(apps, None)

    ledgers = dict(Study.objects.values_list("title", "privacy_ledger"))
    assert ledgers == {"With DP": {"0.0": 1, "1.0": 1}, "Without DP": {"0.0": 1}, "No round yet": {}}
    events = AuditEvent.objects.filter(action=migration.ACTION).order_by("seq")
    assert [(e.study_id, e.details["rounds"]) for e in events] == [(dp.pk, 2), (plain.pk, 1)]
    assert untouched.pk not in {e.study_id for e in events}
    assert verify_chain().intact
