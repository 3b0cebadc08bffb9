"""How far one site's update may move the model: the study's `max_update_norm` refuses an update whose
delta is larger, and an aggregate that is not finite fails its round with nothing stored, the next round
training from the latest stored version (never rewinding to v0)."""

import pytest
import torch
from django.db.models import Max

from aggregation.choices import RoundStatus, UpdateStatus
from aggregation.events import RoundEventKind
from aggregation.models import ModelVersion, Round, Update
from aggregation.services import round_aggregate, round_open_next
from consortium.audit.models import AuditEvent
from consortium.errors import ValidationFailed
from consortium.federated import codec
from consortium.federated.protocol import protocol_hash
from studies.models import StudyEvent
from tests.aggregation.support import (
    agent_for,
    base_tensors,
    governed_study,
    open_round,
    rejected,
    stored_files,
    submit,
)
from tests.base import register_dataset

pytestmark = pytest.mark.usefixtures("no_broker")


def shifted(round_: Round, by: float) -> bytes:
    """The round's base model with every value moved by `by`: a delta of norm |by| * sqrt(5) (5 values)."""
    return codec.encode({name: tensor + by for name, tensor in base_tensors(round_).items()})


def test_it_refuses_an_update_that_moves_the_model_further_than_the_protocol_allows(p):
    study = governed_study(p, max_update_norm=1.0)
    agent = agent_for(p, p.site_a)[0]
    round_ = open_round(study)
    with rejected(ValidationFailed, r"moves the model by 2\.236 \(L2 norm of update minus base\); the study's "
                                    r"protocol allows at most 1\.", code="update_norm", status=400):
        submit(agent, round_, body=shifted(round_, 1.0))
    update, created = submit(agent, round_, body=shifted(round_, 0.4))  # norm 0.89: within the bound
    assert created and update.delta_norm == pytest.approx(0.4 * 5 ** 0.5, rel=1e-6)


def test_it_refuses_finite_but_huge_values_under_the_default_bound(fed):
    assert fed.study.max_update_norm == 1e4
    round_ = open_round(fed.study)
    huge = codec.encode({name: torch.full_like(t, 3.4e38) for name, t in base_tensors(round_).items()})
    with rejected(ValidationFailed, "moves the model by 7.603e\\+38", code="update_norm", status=400):
        submit(fed.agent_a, round_, body=huge)


def test_it_binds_the_bound_into_the_protocol_approvals_sign(p):
    study = governed_study(p)
    before = study.protocol_sha256()
    study.max_update_norm = 10.0
    assert study.protocol()["max_update_norm"] == 10.0 and study.protocol_sha256() != before


def test_it_fails_a_round_whose_aggregate_is_not_finite_storing_nothing_and_reopens_from_the_latest_version(p):
    # A PI allowed large updates; two sites at the bound with huge example counts overflow float32 (2e38 each).
    study = governed_study(p, max_update_norm=1e30)
    (agent_a, _), (agent_b, _) = agent_for(p, p.site_a), agent_for(p, p.site_b)
    first = open_round(study)
    submit(agent_a, first)
    submit(agent_b, first)
    v1 = round_aggregate(round_id=first.pk)
    second = Round.objects.get(study=study, number=2)
    assert second.base_version == v1
    for site in (p.site_a, p.site_b):  # sites that registered that many rows (else the count is refused)
        register_dataset(p, study, site, rows=2_000_000_000)
    for agent in (agent_a, agent_b):
        submit(agent, second, body=shifted(second, 1e29), num_examples=2_000_000_000)
    versions_on_disk = stored_files("versions")
    events = StudyEvent.objects.aggregate(top=Max("pk"))["top"]

    assert round_aggregate(round_id=second.pk) is None

    second.refresh_from_db()
    assert second.status == RoundStatus.FAILED
    assert second.status_reason.startswith("The aggregate is not finite (NaN or infinite values in linear.")
    assert "no model version was stored, the next round trains from v1" in second.status_reason
    assert list(ModelVersion.objects.filter(study=study).values_list("number", flat=True)) == [0, 1]
    assert stored_files("versions") == versions_on_disk, "a model that is not finite was written to the store"
    assert set(Update.objects.filter(round=second).values_list("status", flat=True)) == {UpdateStatus.ACCEPTED}
    failed = AuditEvent.objects.get(action="aggregation.round.failed")
    assert failed.details["reason"] == second.status_reason and failed.details["not_finite"]
    kinds = list(StudyEvent.objects.filter(pk__gt=events).values_list("kind", flat=True))
    assert RoundEventKind.ROUND_FAILED in kinds and RoundEventKind.AGGREGATION_FINISHED not in kinds
    third = round_open_next(study_id=study.pk)
    assert third.number == 3 and third.base_version == v1, "a failed round must not rewind the model"


def test_it_keeps_approvals_given_before_the_bound_existed(p):
    """Adding the field to the product does not void existing approvals: at its default it is not hashed,
    so a protocol approved before `max_update_norm` existed keeps its hash."""
    study = governed_study(p)
    protocol = study.protocol()
    before_the_field = {name: value for name, value in protocol.items() if name != "max_update_norm"}
    assert study.protocol_sha256() == protocol_hash(before_the_field)
