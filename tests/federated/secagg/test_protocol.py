"""A whole secure round (`consortium.federated.secagg`): the coordinator gets plain FedAvg of the survivors,
up to the quantisation error, with and without dropouts, and stops with a reason when it cannot unmask."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from consortium.federated.secagg import CoordinatorRound, RoundConfig, SecAggError, SiteSession
from consortium.federated.secagg.simulate import run_round

LENGTH = 257


def make_updates(count: int, seed: int = 0, *, scale: float = 0.3) -> dict[str, tuple[np.ndarray, int]]:
    rng = np.random.default_rng(seed)
    return {f"site-{i:02d}": (rng.normal(0, scale, LENGTH).astype(np.float32), int(rng.integers(1, 900)))
            for i in range(count)}


def fedavg(updates: dict[str, tuple[np.ndarray, int]], clip: float = 1.0) -> np.ndarray:
    """Plain FedAvg (float64) of the clipped updates: what the secure round must equal."""
    total = sum(w for _, w in updates.values())
    return sum(np.clip(u.astype(np.float64), -clip, clip) * w for u, w in updates.values()) / total


def config(context: bytes = b"study-1/round-1", **overrides) -> RoundConfig:
    return RoundConfig(context=context, vector_length=LENGTH, clip=1.0, max_weight=1000, **overrides)


def test_it_equals_plain_fedavg_within_the_quantisation_error():
    updates = make_updates(5)
    _, result = run_round(config(), updates)
    assert result.dropped == ()
    assert result.total_weight == sum(w for _, w in updates.values())
    assert np.abs(result.mean - fedavg(updates)).max() <= result.max_error
    assert result.max_error < 1e-6


def test_it_clips_each_coordinate_to_the_clipping_range_first():
    updates = make_updates(4, seed=3, scale=2.0)
    _, result = run_round(config(), updates)
    assert np.abs(result.mean - fedavg(updates, clip=1.0)).max() <= result.max_error


def test_it_leaves_out_sites_that_drop_before_masking_and_removes_their_pairwise_masks():
    updates = make_updates(7, seed=1)
    _, result = run_round(config(), updates, drop_before_masking={"site-02", "site-05"})
    survivors = {s: u for s, u in updates.items() if s not in {"site-02", "site-05"}}
    assert result.dropped == ("site-02", "site-05")
    assert np.abs(result.mean - fedavg(survivors)).max() <= result.max_error


def test_it_counts_a_site_that_masked_but_did_not_answer_the_unmasking():
    updates = make_updates(6, seed=2)
    _, result = run_round(config(), updates, drop_after_masking={"site-01"})
    assert "site-01" in result.survivors
    assert np.abs(result.mean - fedavg(updates)).max() <= result.max_error


def test_it_treats_a_site_revoked_after_masking_as_a_dropout():
    updates = make_updates(6, seed=4)
    coordinator, result = run_round(config(), updates, excluded=frozenset({"site-03"}))
    assert result.dropped == ("site-03",)
    assert "site-03" not in coordinator.digests
    kept = {s: u for s, u in updates.items() if s != "site-03"}
    assert np.abs(result.mean - fedavg(kept)).max() <= result.max_error


def test_it_works_with_a_secagg_plus_neighbour_graph():
    updates = make_updates(12, seed=5)
    coordinator, result = run_round(config(degree=6), updates, drop_before_masking={"site-07"})
    assert all(len(coordinator.roster.neighbours(site)) == 6 for site in updates)
    kept = {s: u for s, u in updates.items() if s != "site-07"}
    assert np.abs(result.mean - fedavg(kept)).max() <= result.max_error


def test_it_fails_closed_when_too_few_survivors_answer():
    updates = make_updates(5, seed=6)  # 4 neighbours each: threshold 3
    with pytest.raises(SecAggError, match="fails closed"):
        run_round(config(), updates, drop_after_masking={"site-00", "site-01", "site-02"})


def test_it_fails_closed_when_too_few_sites_mask():
    updates = make_updates(5, seed=7)
    with pytest.raises(SecAggError, match="threshold is 3"):
        run_round(config(), updates, drop_before_masking={"site-00", "site-01", "site-02"})


def test_it_refuses_a_round_with_fewer_than_three_sites():
    with pytest.raises(SecAggError, match="needs 3"):
        run_round(config(), make_updates(2))


def test_it_refuses_a_threshold_below_a_strict_majority():
    with pytest.raises(SecAggError, match="strict majority"):
        run_round(config(threshold=2), make_updates(5))


def test_a_weight_above_max_weight_counts_as_max_weight():
    updates = make_updates(3, seed=8)
    updates["site-00"] = (updates["site-00"][0], 5000)
    _, result = run_round(config(), updates)
    capped = {s: (u, min(w, 1000)) for s, (u, w) in updates.items()}
    assert np.abs(result.mean - fedavg(capped)).max() <= result.max_error


def test_a_site_answers_the_unmasking_once_and_never_for_a_request_that_drops_it():
    cfg = config()
    sessions = {s: SiteSession(cfg, s) for s in ("a", "b", "c", "d")}
    coordinator = CoordinatorRound(cfg)
    for session in sessions.values():
        coordinator.add_keys(session.keys())
    roster = coordinator.close_keys()
    for session in sessions.values():
        coordinator.add_shares(session.shares(roster))
    mail = coordinator.close_shares()
    for site, session in sessions.items():
        coordinator.add_masked_input(session.masked_input(mail[site], np.zeros(LENGTH, np.float32), 1))
    request = coordinator.close_masked_inputs(excluded=frozenset({"d"}))
    answer = sessions["a"].unmask(request)
    assert set(answer.self_mask_shares) == {"b", "c"} and set(answer.mask_key_shares) == {"d"}
    with pytest.raises(SecAggError, match="already answered"):
        sessions["a"].unmask(request)
    with pytest.raises(SecAggError, match="does not count this site"):
        sessions["d"].unmask(request)


@settings(max_examples=15, deadline=None)
@given(sites=st.integers(min_value=3, max_value=9), seed=st.integers(0, 2**32 - 1), data=st.data())
def test_any_round_with_enough_survivors_equals_plain_fedavg(sites, seed, data):
    updates = make_updates(sites, seed)
    names = sorted(updates)
    tolerable = (sites - 1) - ((sites - 1) // 2 + 1)  # neighbours beyond the threshold
    dropped = data.draw(st.sets(st.sampled_from(names), max_size=tolerable))
    _, result = run_round(config(context=seed.to_bytes(4, "big")), updates, drop_before_masking=dropped)
    kept = {s: u for s, u in updates.items() if s not in dropped}
    assert np.abs(result.mean - fedavg(kept)).max() <= result.max_error
