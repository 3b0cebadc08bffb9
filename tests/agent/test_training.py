"""Local training with the study's protocol: it learns, FedProx holds it near the global model, and it repeats."""

import numpy as np
import pytest
import torch

from consortium.federated.metrics import auc_from_histogram, binning_error_bound
from sites.agent.data import split, standardization_of, standardize
from sites.agent.demo_data import DEMO_PROTOCOL, make_partitions
from sites.agent.training import Protocol, evaluate, local_update, train, weight_distance

PROTOCOL = Protocol.from_json(DEMO_PROTOCOL)


@pytest.fixture(scope="module")
def site_split():
    sites, _ = make_partitions(["amc", "charite", "clinic", "hus"], seed=0)
    train_set, val_set = split(sites["amc"], 0.2, seed=0)
    stats = standardization_of(train_set)
    return standardize(train_set, stats), standardize(val_set, stats)


def random_init(seed: int = 0) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return {name: torch.randn(t.shape, generator=generator) for name, t in PROTOCOL.initial_state().items()}


def test_it_improves_validation_auc_from_a_random_start(site_split):
    train_set, val_set = site_split
    # Many random starts already rank this easy data well; take the first one that is near chance.
    start = next(init for init in map(random_init, range(20))
                 if local_update(PROTOCOL, init, train_set, val_set, seed=0).metrics["base"]["val_auc"] < 0.7)
    update = local_update(Protocol.from_json({**DEMO_PROTOCOL, "local_epochs": 5}), start, train_set, val_set, seed=0)
    assert update.metrics["val_auc"] > 0.9 > 0.7 > update.metrics["base"]["val_auc"]
    assert update.metrics["val_loss"] < update.metrics["base"]["val_loss"]


def test_it_reports_the_downloaded_model_on_the_validation_split_before_training(site_split):
    train_set, val_set = site_split
    update = local_update(PROTOCOL, random_init(), train_set, val_set, seed=0)
    base = update.metrics["base"]
    assert set(base) == {"val_loss", "val_accuracy", "val_auc", "val_examples", "score_histogram"}
    assert base["val_examples"] == len(val_set) and base["val_loss"] != update.metrics["val_loss"]
    assert update.num_examples == len(train_set) and update.metrics["training_seconds"] > 0


def test_it_counts_the_scores_of_the_validation_rows_per_class_so_the_coordinator_can_pool_the_roc(site_split):
    _, val_set = site_split
    state = random_init()
    metrics = evaluate(PROTOCOL, state, val_set, histogram=True)
    histogram = metrics["score_histogram"]
    assert (sum(histogram["positives"]), sum(histogram["negatives"])) == (val_set.positives,
                                                                          len(val_set) - val_set.positives)
    assert auc_from_histogram(histogram) == pytest.approx(metrics["val_auc"], abs=binning_error_bound(histogram))
    assert "score_histogram" not in evaluate(PROTOCOL, state, val_set)


def test_it_has_no_auc_of_its_own_on_one_class_but_still_counts_the_scores(site_split):
    _, val_set = site_split
    negatives = val_set.subset(np.flatnonzero(val_set.y == 0))
    metrics = evaluate(PROTOCOL, random_init(), negatives, histogram=True)
    assert metrics["val_auc"] is None and metrics["val_accuracy"] is not None
    assert sum(metrics["score_histogram"]["negatives"]) == len(negatives) > 0
    assert sum(metrics["score_histogram"]["positives"]) == 0


def test_it_keeps_weights_closer_to_the_global_model_with_a_large_fedprox_mu(site_split):
    train_set, _ = site_split
    start = random_init()
    plain, _, _ = train(Protocol.from_json({**DEMO_PROTOCOL, "local_epochs": 3}), start, train_set, seed=0)
    proximal, _, _ = train(Protocol.from_json({**DEMO_PROTOCOL, "local_epochs": 3, "proximal_mu": 5.0}), start,
                        train_set, seed=0)
    assert weight_distance(proximal, start) < 0.5 * weight_distance(plain, start)


def test_it_trains_the_same_weights_for_the_same_seed(site_split):
    train_set, _ = site_split
    first, _, _ = train(PROTOCOL, random_init(), train_set, seed=3)
    again, _, _ = train(PROTOCOL, random_init(), train_set, seed=3)
    other, _, _ = train(PROTOCOL, random_init(), train_set, seed=4)
    assert all(torch.equal(first[name], again[name]) for name in first)
    assert weight_distance(first, other) > 0


def test_it_returns_float32_tensors_with_the_global_models_names_and_shapes(site_split):
    train_set, _ = site_split
    mlp = Protocol.from_json({**DEMO_PROTOCOL, "model_kind": "mlp", "hidden_units": 8})
    state, _, _ = train(mlp, mlp.initial_state(), train_set, seed=0)
    assert {n: (t.shape, t.dtype) for n, t in state.items()} == {
        n: (t.shape, torch.float32) for n, t in mlp.initial_state().items()}
