"""Flower rounds (`aggregation.services.flower`): the gate decides, by the sites behind the nodes' registered
keys, which nodes a round configures and which results the Flower strategy may aggregate; the new parameters
become a model version with provenance; a refusal fails the round closed."""

import pytest

from aggregation.choices import RoundStatus, UpdateStatus
from aggregation.models import FlowerRound, ModelVersion, Round, Update
from aggregation.services.flower import (
    flower_round_open,
    flower_round_results,
    flower_round_version,
    flower_token_create,
    flower_token_revoke,
)
from aggregation.services.rounds import round_open_next
from consortium.errors import Conflict, Forbidden, ValidationFailed
from consortium.federated import codec
from studies.models import Participation, Study
from studies.services import participation_revoke, study_suspend
from tests.aggregation.flower_support import coordinator, initial, node_key, register_node, result
from tests.aggregation.support import (
    governed_study,
    third_site,
    three_site_study,
    update_tensors,
)
from tests.support import actions_after, last_seq, refused


@pytest.fixture
def flo(p):
    """A three-site study run by Flower: each site registered one SuperNode (node ids 11, 12, 13)."""
    site_c = third_site(p)
    study = three_site_study(p, site_c)
    actor = coordinator(p, study)
    keys = {11: register_node(p, p.site_a), 12: register_node(p, p.site_b), 13: register_node(p, site_c)}
    return type("Flo", (), {"study": study, "actor": actor, "keys": keys, "site_c": site_c,
                            "base": initial(actor, study)})


def nodes(flo, *ids: int) -> list[dict]:
    return [{"node_id": node_id, "public_key": flo.keys[node_id]} for node_id in ids or flo.keys]


def open_flower_round(flo, server_round: int = 1):
    return flower_round_open(actor=flo.actor, server_round=server_round, base_sha256=flo.base, nodes=nodes(flo))


def revoke(p, flo, site) -> None:
    participation = Participation.objects.get(study=flo.study, site=site)
    participation_revoke(actor=p.site_admin_of(site) if site != flo.site_c else p.site_b_admin,
                         participation=participation, reason="We withdraw.")


def test_it_configures_the_registered_nodes_of_eligible_sites_and_records_the_round(p, flo):
    stranger = {"node_id": 99, "public_key": node_key()[1]}
    mark = last_seq()
    outcome = flower_round_open(actor=flo.actor, server_round=1, base_sha256=flo.base, nodes=[*nodes(flo), stranger])
    assert outcome.allowed and [n["node_id"] for n in outcome.nodes] == [11, 12, 13]
    assert outcome.dropped == [{"node_id": 99, "fingerprint": outcome.dropped[0]["fingerprint"],
                                "reason": "No site registered this node's public key."}]
    round_ = Round.objects.get(pk=outcome.round_id)
    assert (round_.status, round_.base_version.number) == (RoundStatus.OPEN, 0)
    assert FlowerRound.objects.get(round=round_).server_round == 1
    assert actions_after(mark) == ["aggregation.round.opened"]


def test_it_leaves_out_the_node_of_a_site_the_gate_no_longer_allows(p, flo):
    revoke(p, flo, flo.site_c)
    outcome = open_flower_round(flo)
    assert [n["node_id"] for n in outcome.nodes] == [11, 12]
    assert outcome.dropped[0]["node_id"] == 13 and "revoked" in outcome.dropped[0]["reason"].lower()


def test_it_fails_the_round_closed_when_the_study_is_suspended(p, flo):
    study_suspend(actor=p.pi, study=flo.study, justification="Data breach at a site")
    outcome = open_flower_round(flo)
    assert not outcome.allowed and "suspended" in outcome.reason
    assert Round.objects.get(pk=outcome.round_id).status == RoundStatus.BLOCKED


def test_it_drops_a_result_that_arrives_after_its_site_was_revoked_and_records_the_version(p, flo):
    opened = open_flower_round(flo)
    round_ = Round.objects.get(pk=opened.round_id)
    revoke(p, flo, flo.site_c)
    answer = flower_round_results(actor=flo.actor, round_id=round_.pk, acted_on={"round_id": round_.pk},
                                  results=[result(round_, n, seed=n) for n in (11, 12, 13)])
    assert answer.allowed and [n["node_id"] for n in answer.nodes] == [11, 12]
    assert answer.dropped[0]["node_id"] == 13 and "revoked" in answer.dropped[0]["reason"].lower()
    excluded = Update.objects.get(round=round_, site=flo.site_c)
    assert excluded.status == UpdateStatus.EXCLUDED and excluded.path == ""
    mark = last_seq()
    done = flower_round_version(actor=flo.actor, round_id=round_.pk, strategy="FedAvg", acted_on={"kept": [11, 12]},
                                body=codec.encode(update_tensors(round_, seed=5)))
    version = ModelVersion.objects.get(round=round_)
    assert done.allowed and done.version == version.number == 1
    assert sorted(c["site_id"] for c in version.provenance["contributors"]) == [p.site_a.pk, p.site_b.pk]
    assert version.provenance["strategy"]["name"] == "flower:FedAvg"
    assert version.provenance["flower"]["reported"]["aggregated_with"] == {"kept": [11, 12]}
    assert Round.objects.get(pk=round_.pk).status == RoundStatus.CLOSED
    assert actions_after(mark) == ["aggregation.model_version.created", "aggregation.round.closed"]


def test_it_asks_to_aggregate_again_when_a_kept_site_is_revoked_while_the_strategy_aggregates(p, flo):
    round_ = Round.objects.get(pk=open_flower_round(flo).round_id)
    flower_round_results(actor=flo.actor, round_id=round_.pk, acted_on={},
                         results=[result(round_, n, seed=n) for n in (11, 12, 13)])
    revoke(p, flo, flo.site_c)
    again = flower_round_version(actor=flo.actor, round_id=round_.pk, strategy="FedAvg", acted_on={},
                                 body=codec.encode(update_tensors(round_)))
    assert not again.allowed and [n["node_id"] for n in again.nodes] == [11, 12]
    assert not ModelVersion.objects.filter(round=round_).exists()
    assert Round.objects.get(pk=round_.pk).status == RoundStatus.AGGREGATING
    done = flower_round_version(actor=flo.actor, round_id=round_.pk, strategy="FedAvg", acted_on={},
                                body=codec.encode(update_tensors(round_, seed=7)))
    assert done.allowed and done.version == 1


def test_it_blocks_the_round_when_too_few_results_remain_eligible(p, flo):
    round_ = Round.objects.get(pk=open_flower_round(flo).round_id)
    revoke(p, flo, p.site_a)
    revoke(p, flo, flo.site_c)
    answer = flower_round_results(actor=flo.actor, round_id=round_.pk, acted_on={},
                                  results=[result(round_, n, seed=n) for n in (11, 12, 13)])
    assert not answer.allowed and Round.objects.get(pk=round_.pk).status == RoundStatus.BLOCKED


def test_it_refuses_parameters_that_are_not_the_studys_model(p, flo):
    round_ = Round.objects.get(pk=open_flower_round(flo).round_id)
    flower_round_results(actor=flo.actor, round_id=round_.pk, acted_on={},
                         results=[result(round_, n, seed=n) for n in (11, 12)])
    with refused(ValidationFailed, "refused", action="aggregation.flower.version", context=frozenset()):
        flower_round_version(actor=flo.actor, round_id=round_.pk, strategy="FedAvg", acted_on={},
                             body=codec.encode({"other": update_tensors(round_)["linear.weight"]}))


def test_it_refuses_to_start_from_parameters_consortium_did_not_record(p, flo):
    with refused(Conflict, "not the study's latest model version", action="aggregation.flower.round_open"):
        flower_round_open(actor=flo.actor, server_round=1, base_sha256="0" * 64, nodes=nodes(flo))


def test_the_scheduler_opens_no_round_of_its_own_for_a_study_flower_runs(p, flo):
    assert round_open_next(study_id=flo.study.pk) is None
    token = flo.actor.token
    flower_token_revoke(actor=p.pi, token=token, reason="Back to Consortium's agents")
    assert round_open_next(study_id=flo.study.pk) is not None


def test_only_the_studys_pi_issues_its_coordinator_token(p):
    study = governed_study(p)
    with refused(Forbidden, "Only the study's PI", action="aggregation.flower_token.create"):
        flower_token_create(actor=p.dpo, study=study, name="SuperLink")


def test_it_refuses_a_flower_round_for_a_study_whose_protocol_requires_secure_aggregation(p, flo):
    Study.objects.filter(pk=flo.study.pk).update(secure_aggregation=True)  # as an approved protocol would say
    with refused(Conflict, "requires secure aggregation", action="aggregation.flower.round_open"):
        open_flower_round(flo)
