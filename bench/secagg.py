"""Secure aggregation's price: the coordinator's unmasking beside plain FedAvg, each site's masking, bytes sent.

For each case (N sites, P float32 parameters, a dropout rate) every site runs the real protocol
(`consortium.federated.secagg`) in this process, one after the other; sites that drop out do so after the
shares stage and before masking, the costly case, since the coordinator must then rebuild their mask keys
and remove their pairwise masks from every surviving neighbour. Figures:

- coordinator: `CoordinatorRound.finish()` (rebuild secrets, sum the masked vectors, remove the masks,
  dequantise) beside `aggregation.strategies.fedavg` of the survivors' float updates in memory, median of 3,
  as wall time and as this process's CPU time (steadier when other processes share the cores);
- site: the time of its masking call (decrypt shares, quantise, expand and add masks), median and max over
  the sites, and its whole protocol overhead (keys, shares, masking, unmasking answer);
- bytes a site sends: every message's wire form, beside the 4 x P of a plain float32 update.

    .venv/bin/python bench/secagg.py            # the full table (several minutes)
    .venv/bin/python bench/secagg.py --quick    # under two minutes
"""

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from aggregation import strategies  # noqa: E402
from consortium.federated.secagg import CoordinatorRound, RoundConfig, SiteSession  # noqa: E402

FULL = [(n, p, drop, None) for n in (5, 20, 100) for p in (100_000, 1_000_000) for drop in (0.0, 0.2)]
FULL += [(100, p, drop, 20) for p in (100_000, 1_000_000) for drop in (0.0, 0.2)]  # SecAgg+ with 20 neighbours
QUICK = [(5, 100_000, 0.0, None), (5, 100_000, 0.2, None), (20, 100_000, 0.2, None),
         (20, 1_000_000, 0.0, None), (20, 1_000_000, 0.2, None)]


def timed(function, *args):
    """(value, wall seconds, CPU seconds of this process): on a shared machine the CPU time is the steadier one."""
    start, cpu = time.perf_counter(), time.process_time()
    value = function(*args)
    return value, time.perf_counter() - start, time.process_time() - cpu


def wire_size(message) -> int:
    return len(json.dumps(message.to_wire()).encode())


def run_case(sites: int, params: int, drop: float, degree: int | None) -> dict:
    rng = np.random.default_rng(sites * 31 + params)
    names = [f"site-{i:03d}" for i in range(sites)]
    updates = {s: (rng.normal(0, 0.05, params).astype(np.float32), int(rng.integers(50, 1000))) for s in names}
    dropped = set(rng.choice(names, size=int(round(drop * sites)), replace=False).tolist())
    config = RoundConfig(context=f"bench/{sites}/{params}/{drop}".encode(), vector_length=params, clip=1.0,
                         max_weight=1000, degree=degree)
    sessions = {s: SiteSession(config, s) for s in names}
    overhead = dict.fromkeys(names, 0.0)
    sent = dict.fromkeys(names, 0)
    coordinator = CoordinatorRound(config)
    for site, session in sessions.items():
        keys, seconds, _ = timed(session.keys)
        overhead[site] += seconds
        sent[site] += wire_size(keys)
        coordinator.add_keys(keys)
    roster = coordinator.close_keys()
    for site, session in sessions.items():
        shares, seconds, _ = timed(session.shares, roster)
        overhead[site] += seconds
        sent[site] += wire_size(shares)
        coordinator.add_shares(shares)
    mail = coordinator.close_shares()
    masking = []
    for site, session in sessions.items():
        if site in dropped:
            continue
        masked, seconds, _ = timed(session.masked_input, mail[site], *updates[site])
        masking.append(seconds)
        overhead[site] += seconds
        sent[site] += len(masked.to_safetensors()) + len(json.dumps({"site": site, "sha256": masked.sha256,
                                                                "masked_with": masked.masked_with}))
        coordinator.add_masked_input(masked)
    request = coordinator.close_masked_inputs()
    for site in request.survivors:
        answer, seconds, _ = timed(sessions[site].unmask, request)
        overhead[site] += seconds
        sent[site] += wire_size(answer)
        coordinator.add_unmask(answer)
    secure = [timed(coordinator.finish)[1:] for _ in range(3)]
    result = coordinator.finish()
    survivors = [({"w": torch.from_numpy(updates[s][0])}, float(updates[s][1])) for s in request.survivors]
    plain = [timed(strategies.fedavg, survivors)[1:] for _ in range(3)]
    reference = strategies.fedavg(survivors)["w"].numpy()
    error = float(np.abs(result.mean - reference).max())
    survivors_overhead = [overhead[s] for s in request.survivors]
    survivors_sent = [sent[s] for s in request.survivors]
    return {
        "sites": sites, "params": params, "dropout": drop, "degree": roster.degree, "threshold": roster.threshold,
        "secure_s": statistics.median(w for w, _ in secure), "fedavg_s": statistics.median(w for w, _ in plain),
        "secure_cpu_s": statistics.median(c for _, c in secure), "fedavg_cpu_s": statistics.median(c for _, c in plain),
        "mask_median_s": statistics.median(masking), "mask_max_s": max(masking),
        "site_overhead_max_s": max(survivors_overhead), "bytes_per_site": int(statistics.median(survivors_sent)),
        "plain_bytes": 4 * params, "max_error": error, "error_bound": result.max_error,
    }


def print_row(row: dict) -> None:
    ratio = row["secure_s"] / row["fedavg_s"]
    cpu_ratio = row["secure_cpu_s"] / row["fedavg_cpu_s"]
    graph = "all" if row["degree"] == row["sites"] - 1 else str(row["degree"])
    print(f"| {row['sites']:>3} | {row['params'] / 1e6:>4.1f}M | {row['dropout']:>4.0%} | {graph:>3} | "
          f"{row['threshold']:>3} | {row['secure_s'] * 1e3:>8.1f} | {row['fedavg_s'] * 1e3:>7.1f} | {ratio:>5.1f}x | "
          f"{row['secure_cpu_s'] * 1e3:>7.1f} | {row['fedavg_cpu_s'] * 1e3:>6.1f} | {cpu_ratio:>5.1f}x | "
          f"{row['mask_median_s'] * 1e3:>7.1f} / {row['mask_max_s'] * 1e3:>7.1f} | "
          f"{row['site_overhead_max_s'] * 1e3:>7.1f} | {row['bytes_per_site'] / 1e6:>6.2f} MB "
          f"({row['bytes_per_site'] / row['plain_bytes']:.2f}x) | {row['max_error']:.1e} <= {row['error_bound']:.1e} |",
          flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="a subset that runs in under two minutes")
    parser.add_argument("--json", action="store_true", help="print one JSON object per case as well")
    args = parser.parse_args()
    torch.set_num_threads(1)
    print("| N | P | drop | nbrs | t | secure ms | FedAvg ms | ratio | secure CPU ms | FedAvg CPU ms | CPU ratio | "
          "site mask ms (median / max) | site total ms (max) | sent per site (vs plain) | max error <= bound |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for case in QUICK if args.quick else FULL:
        row = run_case(*case)
        print_row(row)
        if args.json:
            print(json.dumps(row))


if __name__ == "__main__":
    main()
