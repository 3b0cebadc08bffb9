"""Aggregation out of the lock: the strategy runs outside any transaction, so other writes go ahead meanwhile;
the commit asks the gate again and never stores a result computed from what has changed (a revocation during
the computation is honoured); a round finished meanwhile by another worker keeps its one model version. Large
models are aggregated in parameter shards, with the very bytes of an unsharded run."""

from contextlib import contextmanager

import pytest
import torch
from django.db import connection

from aggregation import strategies
from aggregation.choices import RoundStatus, UpdateStatus
from aggregation.models import ModelVersion, Round, Update
from aggregation.services import round_aggregate, sharding
from aggregation.storage import version_tensors
from consortium.audit.models import AuditEvent
from consortium.federated import codec
from studies import services as study_services
from studies.choices import RevocationPolicy
from studies.models import Participation
from tests.aggregation.support import open_round, submit, third_site, three_site_study

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def three_sites(p, model_store, no_broker):
    site_c = third_site(p)
    return p, site_c


def _round_with_three_updates(p, site_c, **protocol):
    from tests.aggregation.support import agent_for

    study = three_site_study(p, site_c, **protocol)
    round_ = open_round(study)
    for site in (p.site_a, p.site_b, site_c):
        submit(agent_for(p, site)[0], round_)
    return study, round_


def _slow_strategy(monkeypatch, during):
    """The study's strategy, calling `during()` on its first run (while it computes) and recording each run."""
    real, runs = strategies.aggregate, []

    def slow(*args, **kwargs):
        runs.append(connection.in_atomic_block)
        if len(runs) == 1:
            during()
        return real(*args, **kwargs)

    monkeypatch.setattr(strategies, "aggregate", slow)
    return runs


def test_a_revocation_during_the_computation_commits_at_once_and_is_honoured(three_sites, monkeypatch):
    p, site_c = three_sites
    study, round_ = _round_with_three_updates(p, site_c)
    participation = Participation.objects.get(study=study, site=site_c)

    def revoke():  # another request, while the strategy computes: it must not wait for the aggregation
        study_services.participation_revoke(actor=p.site_b_admin, participation=participation,
                                            reason="Our board withdrew consent.")

    runs = _slow_strategy(monkeypatch, revoke)
    version = round_aggregate(round_id=round_.pk)

    assert runs == [False, False]  # outside any transaction, twice: the first result went stale
    assert sorted(c["site_id"] for c in version.provenance["contributors"]) == [p.site_a.pk, p.site_b.pk]
    excluded = Update.objects.get(round=round_, site=site_c)
    assert excluded.status == UpdateStatus.EXCLUDED and excluded.exclusion_reason
    assert ModelVersion.objects.filter(round=round_).count() == 1
    revoked = AuditEvent.objects.get(action="studies.participation.revoked")
    created = AuditEvent.objects.get(action="aggregation.model_version.created", details__round=round_.number)
    assert revoked.seq < created.seq  # the revocation took effect first, and the model shows it


def test_a_revocation_during_the_computation_blocks_the_round_under_the_abort_policy(three_sites, monkeypatch):
    p, site_c = three_sites
    study, round_ = _round_with_three_updates(p, site_c, revocation_policy=RevocationPolicy.ABORT)
    participation = Participation.objects.get(study=study, site=site_c)
    _slow_strategy(monkeypatch, lambda: study_services.participation_revoke(
        actor=p.site_b_admin, participation=participation, reason="Withdrawn."))

    assert round_aggregate(round_id=round_.pk) is None

    round_.refresh_from_db()
    assert round_.status == RoundStatus.BLOCKED and "abort" in round_.status_reason
    assert not ModelVersion.objects.filter(round=round_).exists()


def test_a_round_another_worker_finished_meanwhile_keeps_its_one_version(three_sites, monkeypatch):
    p, site_c = three_sites
    study, round_ = _round_with_three_updates(p, site_c)
    finished = []
    _slow_strategy(monkeypatch, lambda: finished.append(round_aggregate(round_id=round_.pk)))

    version = round_aggregate(round_id=round_.pk)

    assert version == finished[0] and ModelVersion.objects.filter(round=round_).count() == 1
    assert Round.objects.get(pk=round_.pk).status == RoundStatus.CLOSED


def _tensors(seed: int) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    shapes = {"a.weight": (64, 32), "a.bias": (64,), "b.weight": (16, 64), "b.bias": (16,), "c.weight": (1, 16)}
    return {name: torch.randn(shape, generator=generator) for name, shape in shapes.items()}


@pytest.mark.parametrize("strategy", ["fedavg", "fedadam", "median"])
def test_sharded_aggregation_gives_the_unsharded_bytes(strategy):
    current = _tensors(0)
    pairs = [(_tensors(seed), float(seed * 10)) for seed in range(1, 6)]
    spec = {name: [list(t.shape), "float32"] for name, t in current.items()}
    settings = {"server_learning_rate": 0.1, "trim_fraction": 0.2, "byzantine_sites": 0, "dp_noise_multiplier": 0.0,
                "dp_clip_norm": 1.0}
    whole = strategies.aggregate(strategy, current, pairs, {}, settings)

    groups = sharding.shards(spec, shard_bytes=4096)
    parts = [sharding.aggregate_shard(strategy, current, pairs, {}, settings, names) for names in groups]

    assert len(groups) > 1 and sorted(n for g in groups for n in g) == sorted(current)
    joined = sharding.join([part.weights for part in parts], list(spec))
    assert codec.encode(joined) == codec.encode(whole.weights)  # bit for bit
    state = sharding.join([part.state for part in parts], sorted(whole.state))
    assert codec.encode(state) == codec.encode(whole.state) if whole.state else not state


def test_a_large_model_is_aggregated_in_shards_over_a_chord_into_one_version(three_sites, settings, monkeypatch):
    p, site_c = three_sites
    settings.AGGREGATION_SHARD_BYTES = 8  # the 4-feature model's two tensors: two shards
    study, round_ = _round_with_three_updates(p, site_c)
    expected = _unsharded_bytes(round_)
    shard_calls = []
    real = sharding.aggregate_shard
    monkeypatch.setattr(sharding, "aggregate_shard", lambda *a, **k: shard_calls.append(a[-1]) or real(*a, **k))

    with eager_celery():
        assert round_aggregate(round_id=round_.pk) is None  # handed to the chord, which commits

    version = ModelVersion.objects.get(round=round_)
    assert sorted(map(tuple, shard_calls)) == [("linear.bias",), ("linear.weight",)]
    assert codec.sha256_hex(codec.encode(version_tensors(version))) == codec.sha256_hex(expected)
    assert Round.objects.get(pk=round_.pk).status == RoundStatus.CLOSED


@contextmanager
def eager_celery():
    """Celery runs the chord in this process (header, then callback), as workers would one task each."""
    from consortium.celery import app

    before = app.conf.task_always_eager, app.conf.task_eager_propagates
    app.conf.task_always_eager = app.conf.task_eager_propagates = True
    try:
        yield
    finally:
        app.conf.task_always_eager, app.conf.task_eager_propagates = before


def _unsharded_bytes(round_: Round) -> bytes:
    from aggregation.services.aggregate import _strategy_settings

    updates = list(round_.updates.order_by("site__name"))
    pairs = [(codec.read_file(_abs(u.path)), float(u.num_examples)) for u in updates]
    weights = strategies.aggregate(round_.study.strategy, version_tensors(round_.base_version), pairs, {},
                                   _strategy_settings(round_.study)).weights
    return codec.encode(weights)


def _abs(relative):
    from aggregation.storage import absolute

    return absolute(relative)
