"""Learning quality of the demo study under central differential privacy: epsilon reached beside the test AUC
it costs against the non-private run. In-process and without Django: the demo's real data (the breast cancer
set split into non-IID sites by `sites.agent.demo_data`), the agent's real training code (`training.train`), the
coordinator's real strategy (`aggregation.strategies.aggregate`: FedAvg, or DP-FedAvg with clipping and noise
from the OS) and its accountant (`aggregation.accountant`, dp-accounting's RDP).

Each run: pooled standardization (what the statistics round computes), then T rounds where every site trains one
local epoch from the global model and the coordinator aggregates; the final model is scored on the held-out
test set no site trains on. DP noise is fresh from the OS, so each setting is repeated and reported as mean and
spread. Also shown: how many rounds a few privacy targets allow at each noise multiplier.

    .venv/bin/python bench/dp_quality.py            # 4 sites, 20 rounds, 5 repeats per setting
    .venv/bin/python bench/dp_quality.py --quick    # 2 repeats, fewer settings (a few minutes)

Also under secure aggregation with distributed DP (each site clips and noises its own change, scaled for a
quorum of 3 survivors; `consortium.federated.secagg`), through the real masking and unmasking.
"""

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402

from aggregation import strategies  # noqa: E402
from consortium.federated import accountant  # noqa: E402
from consortium.federated.secagg import RoundConfig, masks  # noqa: E402
from consortium.federated.secagg.distributed_dp import privatize, ring_clip  # noqa: E402
from consortium.federated.secagg.simulate import run_round  # noqa: E402
from sites.agent.data import pooled, standardize  # noqa: E402
from sites.agent.demo_data import DEMO_PROTOCOL, evaluate, make_partitions  # noqa: E402
from sites.agent.training import Protocol, train  # noqa: E402

SITES = ("amc", "charite", "clinic", "hus")
DELTA = 1e-5
TARGETS = (1.0, 4.0, 8.0)


def standardization_of(sites: dict) -> dict:
    """The pooled mean and population SD of the sites' features, as the federated statistics round gives them."""
    rows = pooled(list(sites.values()))
    std = rows.x.std(axis=0)
    return {"features": rows.features, "mean": rows.x.mean(axis=0).tolist(),
            "std": np.where(std > 1e-12, std, 1.0).tolist()}


def run(sites: dict, test, protocol: Protocol, rounds: int, z: float, clip: float, seed: int) -> float:
    """The final model's test AUC after `rounds` of FedAvg (z = 0) or DP-FedAvg (noise multiplier z, clip norm)."""
    state = protocol.initial_state(0)
    settings = {"dp_noise_multiplier": z, "dp_clip_norm": clip}
    for number in range(rounds):
        updates = [(train(protocol, state, rows, seed=seed * 1000 + number * 10 + i)[0], float(len(rows)))
                   for i, rows in enumerate(sites.values())]
        state, _, _ = strategies.aggregate("fedavg", state, updates, {}, settings)
    return float(evaluate(state, test, protocol)["auc"])


def run_secure(sites: dict, test, protocol: Protocol, rounds: int, z: float, clip: float, seed: int,
               quorum: int = 3) -> float:
    """The same rounds under secure aggregation with distributed DP: each site clips its change and adds its
    share of the noise (scaled for `quorum` survivors) before masking; the coordinator unmasks only the sum."""
    import torch

    state = protocol.initial_state(0)
    for number in range(rounds):
        changes = {}
        for i, (code, rows) in enumerate(sites.items()):
            trained = train(protocol, state, rows, seed=seed * 1000 + number * 10 + i)[0]
            change = masks.flatten(trained) - masks.flatten(state)
            changes[code] = (privatize(change, noise_multiplier=z, clip_norm=clip, min_sites=quorum), 1)
        config = RoundConfig(context=f"bench/{seed}/{number}".encode(), vector_length=len(changes[code][0]),
                             clip=ring_clip(noise_multiplier=z, clip_norm=clip, min_sites=quorum), max_weight=1,
                             min_sites=quorum)
        _, result = run_round(config, changes)
        mean = masks.unflatten(result.mean.astype(np.float32), {k: tuple(v.shape) for k, v in state.items()})
        state = {k: v + torch.from_numpy(mean[k].copy()) for k, v in state.items()}
    return float(evaluate(state, test, protocol)["auc"])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--clip", type=float, default=1.0, help="DP clipping norm C (the protocol's default)")
    args = parser.parse_args()
    repeats = 2 if args.quick else 5
    multipliers = (0.5, 1.0, 2.0) if args.quick else (0.3, 0.5, 0.7, 1.0, 1.5, 2.0, 4.0)

    raw, test_raw = make_partitions(SITES, seed=0)
    scaling = standardization_of(raw)
    sites = {code: standardize(rows, scaling) for code, rows in raw.items()}
    test = standardize(test_raw, scaling)
    protocol = Protocol.from_json(DEMO_PROTOCOL)
    print(f"Demo data: {', '.join(f'{code} {len(rows)} rows' for code, rows in sites.items())}; "
          f"test {len(test)} rows. {args.rounds} rounds, {protocol.model_kind}, clip C = {args.clip}, "
          f"delta = {DELTA:g}, {repeats} repeats per setting.\n")

    started = time.perf_counter()
    baseline = [run(sites, test, protocol, args.rounds, 0.0, args.clip, seed) for seed in range(repeats)]
    base = statistics.mean(baseline)
    print(f"{'setting':<26}{'epsilon':>10}{'test AUC':>12}{'sd':>8}{'AUC cost':>10}")
    print(f"{'FedAvg, no DP':<26}{'inf':>10}{base:>12.4f}{statistics.pstdev(baseline):>8.4f}{0:>10.4f}")
    plain_clip = [run(sites, test, protocol, args.rounds, 1e-9, args.clip, seed) for seed in range(repeats)]
    print(f"{'DP-FedAvg, clip only':<26}{'inf':>10}{statistics.mean(plain_clip):>12.4f}"
          f"{statistics.pstdev(plain_clip):>8.4f}{base - statistics.mean(plain_clip):>10.4f}")
    for z in multipliers:
        aucs = [run(sites, test, protocol, args.rounds, z, args.clip, seed) for seed in range(repeats)]
        epsilon = accountant.epsilon({z: args.rounds}, DELTA)
        print(f"{f'DP-FedAvg, z = {z:g}':<26}{epsilon:>10.2f}{statistics.mean(aucs):>12.4f}"
              f"{statistics.pstdev(aucs):>8.4f}{base - statistics.mean(aucs):>10.4f}")
    for z in multipliers:
        aucs = [run_secure(sites, test, protocol, args.rounds, z, args.clip, seed) for seed in range(repeats)]
        epsilon = accountant.epsilon({z: args.rounds}, DELTA)
        print(f"{f'SecAgg + dist. DP, z = {z:g}':<26}{epsilon:>10.2f}{statistics.mean(aucs):>12.4f}"
              f"{statistics.pstdev(aucs):>8.4f}{base - statistics.mean(aucs):>10.4f}")

    print(f"\nTraining rounds each privacy target allows (delta = {DELTA:g}; the gate's `rounds_within`):")
    print(f"{'z':>6}" + "".join(f"{f'eps <= {t:g}':>12}" for t in TARGETS))
    for z in multipliers:
        print(f"{z:>6g}" + "".join(f"{accountant.rounds_within({}, z, DELTA, t, cap=10_000):>12}" for t in TARGETS))
    print(f"\n{time.perf_counter() - started:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
