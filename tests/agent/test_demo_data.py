"""The demo's data: a held-out test set no site sees and non-IID site partitions on which federation pays off."""

import numpy as np
import pytest

from sites.agent.data import load_csv, pooled, split, standardization_of, standardize
from sites.agent.demo_data import (
    DEMO_PROTOCOL,
    demo_dataset,
    evaluate,
    make_partitions,
    train_local,
    write_partitions,
)
from sites.agent.training import Protocol, local_update

CODES = ["amc", "charite", "clinic", "hus"]


def row_set(data) -> set[tuple]:
    return {tuple(row) for row in np.column_stack([data.x, data.y])}


@pytest.fixture(scope="module")
def partitions():
    return make_partitions(CODES, seed=0)


def test_it_writes_one_csv_per_site_and_a_test_csv_that_read_back_exactly(tmp_path, partitions):
    paths = write_partitions(tmp_path, CODES, seed=0)
    assert paths == {code: tmp_path / f"site_{code}.csv" for code in CODES}
    sites, test = partitions
    for code, path in paths.items():
        assert row_set(load_csv(path)) == row_set(sites[code])
    read_test = load_csv(tmp_path / "test.csv")
    assert read_test.features == demo_dataset().features and row_set(read_test) == row_set(test)


def test_it_keeps_partitions_disjoint_covering_every_non_test_row_and_never_the_test_rows(partitions):
    sites, test = partitions
    all_rows = row_set(demo_dataset())
    site_rows = [row_set(d) for d in sites.values()]
    assert sum(len(r) for r in site_rows) == len(set().union(*site_rows))  # disjoint
    assert set().union(*site_rows) == all_rows - row_set(test)
    assert not set().union(*site_rows) & row_set(test)
    assert len(test) == round(0.2 * len(all_rows))


def test_it_makes_sites_differ_in_size_and_label_balance(partitions):
    sites, _ = partitions
    sizes = [len(d) for d in sites.values()]
    rates = [d.positives / len(d) for d in sites.values()]
    assert max(sizes) > 4 * min(sizes)
    assert min(rates) < 0.3 and max(rates) > 0.8
    assert all(0 < d.positives < len(d) for d in sites.values())  # every site can compute a validation AUC


def test_it_gives_the_same_partitions_for_the_same_seed(partitions):
    again, _ = make_partitions(CODES, seed=0)
    other, _ = make_partitions(CODES, seed=1)
    assert all(row_set(again[c]) == row_set(partitions[0][c]) for c in CODES)
    assert row_set(other["amc"]) != row_set(partitions[0]["amc"])


def test_it_refuses_site_codes_that_are_not_safe_file_names(tmp_path):
    with pytest.raises(ValueError, match="letters, digits"):
        write_partitions(tmp_path, ["../etc"], seed=0)


def test_fedavg_over_the_partitions_beats_the_mean_site_and_nears_the_central_model(partitions):
    """The demo's promise, with the agent's own training code and a plain weighted average as the server."""
    sites, test = partitions
    protocol, rounds = Protocol.from_json(DEMO_PROTOCOL), 20

    everything = pooled(list(sites.values()))
    pooled_stats = standardization_of(everything)
    splits = [split(d, 0.2, seed=0) for d in sites.values()]
    splits = [(standardize(t, pooled_stats), standardize(v, pooled_stats)) for t, v in splits]
    state = protocol.initial_state()
    for number in range(1, rounds + 1):
        updates = [local_update(protocol, state, t, v, seed=number) for t, v in splits]
        total = sum(u.num_examples for u in updates)
        state = {k: sum(u.state[k] * u.num_examples for u in updates) / total for k in state}
    federated = evaluate(state, test, standardization=pooled_stats)["auc"]
    central = evaluate(train_local(everything, DEMO_PROTOCOL, rounds, standardization=pooled_stats), test,
                       standardization=pooled_stats)["auc"]
    singles = [evaluate(train_local(d, DEMO_PROTOCOL, rounds, standardization=standardization_of(d)), test,
                        standardization=standardization_of(d))["auc"] for d in sites.values()]
    assert federated > np.mean(singles)
    assert federated > central - 0.02
