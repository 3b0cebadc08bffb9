"""Our pure-torch strategies agree with Flower's (flwr, test-only) and behave as robust aggregators should."""

import numpy as np
import pytest
import torch

from aggregation import strategies
from consortium.federated import codec

flwr_aggregate = pytest.importorskip("flwr.server.strategy.aggregate")
flwr_common = pytest.importorskip("flwr.common")
flwr_strategy = pytest.importorskip("flwr.server.strategy")

SHAPES = {"layer.weight": (17, 9), "layer.bias": (17,), "head.weight": (1, 17), "scalar": ()}


def random_updates(n: int, seed: int, shapes=SHAPES) -> list[tuple[dict[str, torch.Tensor], float]]:
    generator = torch.Generator().manual_seed(seed)
    return [({name: torch.randn(shape, generator=generator) * (1 + i % 3) for name, shape in shapes.items()},
             float(torch.randint(1, 500, (), generator=generator)))
            for i in range(n)]


def to_flower(updates) -> list[tuple[list[np.ndarray], int]]:
    return [([tensors[name].numpy() for name in SHAPES], int(weight)) for tensors, weight in updates]


def assert_close(ours: dict[str, torch.Tensor], theirs, rtol=1e-5, atol=1e-6) -> None:
    assert list(ours) == list(SHAPES)
    for name, expected in zip(SHAPES, theirs, strict=True):
        assert ours[name].dtype == torch.float32
        np.testing.assert_allclose(ours[name].numpy(), np.asarray(expected, dtype=np.float64), rtol=rtol, atol=atol)


CASES = [(n, seed) for n in (1, 2, 3, 4, 7, 10, 25) for seed in (0, 1)]


@pytest.mark.parametrize(("n", "seed"), CASES)
def test_it_matches_flower_fedavg(n, seed):
    updates = random_updates(n, seed)
    assert_close(strategies.fedavg(updates), flwr_aggregate.aggregate(to_flower(updates)))


@pytest.mark.parametrize(("n", "seed"), CASES)
def test_it_matches_flower_median(n, seed):
    updates = random_updates(n, seed)
    assert_close(strategies.median(updates), flwr_aggregate.aggregate_median(to_flower(updates)))


@pytest.mark.parametrize(("n", "seed"), CASES)
@pytest.mark.parametrize("fraction", [0.0, 0.1, 0.2, 0.34, 0.49])
def test_it_matches_flower_trimmed_mean(n, seed, fraction):
    updates = random_updates(n, seed)
    expected = flwr_aggregate.aggregate_trimmed_avg(to_flower(updates), fraction)
    assert_close(strategies.trimmed_mean(updates, fraction=fraction), expected)


@pytest.mark.parametrize(("n", "seed"), [(n, s) for n, s in CASES if n >= 3])
@pytest.mark.parametrize("byzantine", [0, 1, 2])
def test_it_matches_flower_krum_and_multi_krum(n, seed, byzantine):
    updates = random_updates(n, seed)
    flower = to_flower(updates)
    assert_close(strategies.krum(updates, num_byzantine=byzantine),
                 flwr_aggregate.aggregate_krum(flower, byzantine, 0), rtol=0, atol=0)
    keep = max(1, n - byzantine)
    assert_close(strategies.krum(updates, num_byzantine=byzantine, num_selected=keep),
                 flwr_aggregate.aggregate_krum(flower, byzantine, keep))


def fit_results(updates):
    status = flwr_common.Status(code=flwr_common.Code.OK, message="")
    return [(None, flwr_common.FitRes(status=status, parameters=flwr_common.ndarrays_to_parameters(arrays),
                                      num_examples=weight, metrics={}))
            for arrays, weight in to_flower(updates)]


OPTIMISERS = [
    ("fedadam", strategies.fedadam, "FedAdam", {"eta": 0.1, "beta_1": 0.9, "beta_2": 0.99, "tau": 1e-9}),
    ("fedadam", strategies.fedadam, "FedAdam", {"eta": 0.03, "beta_1": 0.5, "beta_2": 0.9, "tau": 1e-3}),
    ("fedyogi", strategies.fedyogi, "FedYogi", {"eta": 0.01, "beta_1": 0.9, "beta_2": 0.99, "tau": 1e-3}),
    ("fedyogi", strategies.fedyogi, "FedYogi", {"eta": 0.2, "beta_1": 0.0, "beta_2": 0.5, "tau": 1e-6}),
    ("fedadagrad", strategies.fedadagrad, "FedAdagrad", {"eta": 0.1, "tau": 1e-9}),
    ("fedadagrad", strategies.fedadagrad, "FedAdagrad", {"eta": 0.5, "tau": 1e-2}),
]


@pytest.mark.parametrize(("name", "ours", "flower_class", "options"), OPTIMISERS)
@pytest.mark.parametrize("n", [2, 5])
def test_it_matches_flower_adaptive_optimisers_over_rounds(name, ours, flower_class, options, n):
    current = random_updates(1, seed=99)[0][0]
    flower = getattr(flwr_strategy, flower_class)(
        initial_parameters=flwr_common.ndarrays_to_parameters([current[k].numpy() for k in SHAPES]), **options)
    state: dict[str, torch.Tensor] = {}
    registry_current, registry_state = current, {}
    settings = {"server_learning_rate": options["eta"], **options}
    for server_round in (1, 2, 3, 4):
        updates = random_updates(n, seed=server_round * 10 + n)
        current, state = ours(current, updates, state, **options)
        registry_current, registry_state, _ = strategies.aggregate(name, registry_current, updates, registry_state,
                                                                   settings)
        parameters, _ = flower.aggregate_fit(server_round, fit_results(updates), [])
        expected = flwr_common.parameters_to_ndarrays(parameters)
        assert_close(current, expected, rtol=1e-4, atol=1e-5)
        assert_close(registry_current, expected, rtol=1e-4, atol=1e-5)
        assert int(state["step"]) == server_round


def test_it_weights_fedavg_by_num_examples():
    updates = [({"w": torch.zeros(3)}, 1.0), ({"w": torch.full((3,), 4.0)}, 3.0)]
    assert torch.equal(strategies.fedavg(updates)["w"], torch.full((3,), 3.0))


def test_it_refuses_non_positive_weights_and_no_updates():
    with pytest.raises(ValueError, match="positive"):
        strategies.fedavg([({"w": torch.zeros(1)}, 0)])
    with pytest.raises(ValueError, match="no updates"):
        strategies.fedavg([])


def test_it_lets_krum_reject_an_outlier():
    updates = random_updates(6, seed=5)
    honest = [({k: v * 0.01 for k, v in t.items()}, w) for t, w in updates[:5]]
    attacker = ({k: torch.full_like(v, 1e3) for k, v in updates[0][0].items()}, 1e6)
    result = strategies.krum(honest + [attacker], num_byzantine=1, num_selected=4)
    assert all(float(t.abs().max()) < 1 for t in result.values())
    assert float(strategies.fedavg(honest + [attacker])["layer.weight"].abs().min()) > 900


def test_it_keeps_the_median_robust_to_one_huge_update():
    updates = [({"w": torch.full((4,), float(v))}, 1.0) for v in (1, 2, 3, 4)] + [({"w": torch.full((4,), 1e30)}, 1.0)]
    assert torch.equal(strategies.median(updates)["w"], torch.full((4,), 3.0))
    assert torch.equal(strategies.trimmed_mean(updates, fraction=0.2)["w"], torch.full((4,), 3.0))


def test_it_streams_fedavg_and_the_robust_strategies_over_stored_files(tmp_path):
    updates = random_updates(7, seed=3, shapes={"big": (300, 200), "small": (3,)})
    lazy = []
    for tensors, weight in updates:
        path, _ = codec.write_file(codec.encode(tensors), tmp_path)
        lazy.append((codec.LazyTensors(path), weight))
    for run in (strategies.fedavg, strategies.median, lambda u: strategies.krum(u, num_byzantine=1, num_selected=3),
                lambda u: strategies.trimmed_mean(u, fraction=0.3)):
        from_files, in_memory = run(iter(lazy)), run(updates)
        for name in in_memory:
            torch.testing.assert_close(from_files[name], in_memory[name], rtol=0, atol=0)


def test_it_chunks_tensors_larger_than_one_chunk(monkeypatch):
    monkeypatch.setattr(strategies, "_CHUNK_BUDGET", 4096)
    monkeypatch.setattr(strategies, "_MIN_CHUNK", 7)
    updates = random_updates(9, seed=8)
    flower = to_flower(updates)
    assert_close(strategies.median(updates), flwr_aggregate.aggregate_median(flower))
    assert_close(strategies.krum(updates, num_byzantine=2), flwr_aggregate.aggregate_krum(flower, 2, 0))


def test_it_dispatches_every_strategy_choice_through_the_registry():
    choices = ["fedavg", "fedprox", "fedadam", "fedyogi", "fedadagrad", "median", "trimmed_mean", "krum", "multi_krum"]
    assert sorted(strategies.STRATEGIES) == sorted(choices)
    current = random_updates(1, seed=1)[0][0]
    settings = {"server_learning_rate": 0.1, "trim_fraction": 0.2, "byzantine_sites": 1}
    for name in choices:
        weights, state, _ = strategies.aggregate(name, current, random_updates(5, seed=2), {}, settings)
        assert {k: tuple(v.shape) for k, v in weights.items()} == SHAPES
        assert ("step" in state) == (name in {"fedadam", "fedyogi", "fedadagrad"})
    with pytest.raises(ValueError, match="Unknown strategy"):
        strategies.aggregate("fedsgd", current, [], {}, {})


def test_it_applies_central_dp_through_the_registry_and_refuses_it_for_robust_strategies():
    current = {"w": torch.zeros(10_000)}
    updates = [({"w": torch.full((10_000,), 5.0)}, 1.0) for _ in range(4)]
    settings = {"dp_noise_multiplier": 1.0, "dp_clip_norm": 1.0}
    weights, _, weighting = strategies.aggregate("fedavg", current, updates, {}, settings)
    assert float(weights["w"].mean()) == pytest.approx(0.01, abs=0.01)  # clipped to norm 1 over 10^4 coordinates
    assert weighting.weights == (0.25, 0.25, 0.25, 0.25)
    with pytest.raises(ValueError, match="averaging strategies only"):
        strategies.aggregate("median", current, updates, {}, settings)


def test_it_draws_different_dp_noise_for_the_same_inputs_whatever_the_settings_say():
    # A seed in the settings (as the coordinator once sent: the round's id) must not make the noise repeatable.
    current = {"w": torch.zeros(1000)}
    updates = [({"w": torch.full((1000,), 0.01)}, 1.0) for _ in range(3)]
    settings = {"dp_noise_multiplier": 1.0, "dp_clip_norm": 1.0, "dp_seed": 7}
    first = strategies.aggregate("fedavg", current, updates, {}, settings).weights["w"]
    second = strategies.aggregate("fedavg", current, updates, {}, settings).weights["w"]
    assert not torch.equal(first, second)
    assert float((first - second).std()) == pytest.approx(2 ** 0.5 / 3, rel=0.1)  # two independent N(0, (1/3)^2)


WEIGHTS = [1.0, 3.0, 6.0, 10.0, 80.0]


@pytest.mark.parametrize("name", ["fedavg", "fedprox", "fedadam", "fedyogi", "fedadagrad"])
def test_it_reports_the_num_examples_shares_an_averaging_strategy_applied(name):
    updates = [(tensors, weight) for (tensors, _), weight in zip(random_updates(5, seed=4), WEIGHTS, strict=True)]
    result = strategies.aggregate(name, random_updates(1, seed=1)[0][0], updates, {}, {"server_learning_rate": 0.1})
    assert result.weighting.weights == pytest.approx((0.01, 0.03, 0.06, 0.1, 0.8))
    assert "num_examples" in result.weighting.note
    if name in ("fedavg", "fedprox"):  # the shares reported are the ones the mean was made with
        mean = sum(t["layer.bias"].double() * w for (t, _), w in zip(updates, result.weighting.weights, strict=True))
        torch.testing.assert_close(result.weights["layer.bias"], mean.float(), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", ["median", "trimmed_mean"])
def test_it_reports_that_the_coordinatewise_strategies_weight_no_update(name):
    updates = random_updates(5, seed=4)
    weighting = strategies.aggregate(name, updates[0][0], updates, {}, {"trim_fraction": 0.2}).weighting
    assert weighting.weights == (None,) * 5 and "not used" in weighting.note


def test_it_reports_krum_giving_its_chosen_update_all_the_weight():
    updates = random_updates(6, seed=5)
    honest = [({k: v * 0.01 for k, v in t.items()}, w) for t, w in updates[:5]]
    attacker = ({k: torch.full_like(v, 1e3) for k, v in updates[0][0].items()}, 1e6)
    listed = [*honest[:2], attacker, *honest[2:]]
    result = strategies.aggregate("krum", honest[0][0], listed, {}, {"byzantine_sites": 1})
    assert sorted(result.weighting.weights) == [0.0] * 5 + [1.0] and result.weighting.weights[2] == 0.0
    chosen = result.weighting.weights.index(1.0)
    assert all(torch.equal(result.weights[k], listed[chosen][0][k]) for k in SHAPES)


def test_it_reports_multi_krum_renormalising_num_examples_over_the_chosen_updates():
    updates = random_updates(6, seed=5)
    honest = [({k: v * 0.01 for k, v in t.items()}, w) for (t, _), w in zip(updates[:5], WEIGHTS, strict=True)]
    attacker = ({k: torch.full_like(v, 1e3) for k, v in updates[0][0].items()}, 1e6)
    result = strategies.aggregate("multi_krum", honest[0][0], [attacker, *honest], {}, {"byzantine_sites": 1})
    weighting = result.weighting
    assert weighting.weights == pytest.approx((0.0, 0.01, 0.03, 0.06, 0.1, 0.8))  # n - f = 5 kept, the attacker not
