"""Scale figures: a federation of 20, 100 and 200 simulated sites through the real HTTP API, gate and worker
(`manage.py simulate`, the embedded default: SQLite, daphne, one worker), and one large-model aggregation.

Per site count: update ingest (updates/s, from the first to the last update of a round as the coordinator
received them), the time from a round's last update to the next round opened (p50, p99), the wall time, and
then, on that database, the gate's time and query count and the dashboard's render time and query count.
For a 50M-parameter model (`--params`): one FedAvg of four updates in one piece, and in two parameter shards
on two worker processes at once (what the Celery chord of `aggregation.services.sharding` does with two
workers); the results must be bit for bit equal.

    .venv/bin/python bench/scale.py            # 20, 100 and 200 sites, 3 rounds; 50M parameters
    .venv/bin/python bench/scale.py --quick    # 20 sites, 2 rounds; 10M parameters (under three minutes)
    .venv/bin/python bench/scale.py --sites 200 --rounds 5 --json

The websocket event rate is `bench/ws_fanout.py`'s figure (200 subscribers); the production topology is
`make prod`, against which `manage.py simulate --server URL` runs the same federation.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main() -> None:
    args = _arguments()
    rows = []
    for sites in [] if args.large_only else args.sites or ([20] if args.quick else [20, 100, 200]):
        rows.append(_federation(sites, args.rounds or (2 if args.quick else 3), args.timeout))
        _print_row(rows[-1])
    params = args.params or (10_000_000 if args.quick else 50_000_000)
    large = _large_model(params)
    print(f"\nFedAvg of 4 updates of a {params / 1e6:.0f}M-parameter model: 1 worker {large['one_worker_s']:.2f} s, "
          f"2 workers (2 shards at once) {large['two_workers_s']:.2f} s; bit for bit equal: {large['equal']}")
    if args.json:
        print(json.dumps({"federations": rows, "large_model": large}))


def _arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="20 sites, 2 rounds, 10M parameters")
    parser.add_argument("--sites", type=int, action="append", help="a site count (repeat for several)")
    parser.add_argument("--rounds", type=int)
    parser.add_argument("--params", type=int, help="parameters of the large model (default 50M; quick 10M)")
    parser.add_argument("--timeout", type=float, default=1800)
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--large-only", action="store_true", help="only the large-model aggregation")
    return parser.parse_args()


def _federation(sites: int, rounds: int, timeout: float) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="bench-scale-") as folder:
        env = {key: value for key, value in os.environ.items()
               if key not in {"DATABASE_URL", "REDIS_URL", "CELERY_BROKER_URL"}}
        env.update(CONSORTIUM_DATA_DIR=folder)
        result = subprocess.run([sys.executable, "manage.py", "simulate", "--sites", str(sites), "--rounds",
                                 str(rounds), "--timeout", str(timeout)], cwd=ROOT, env=env, capture_output=True,
                                text=True, timeout=timeout + 900)
        if result.returncode:
            raise SystemExit(f"simulate --sites {sites} failed:\n{result.stdout[-2000:]}\n{result.stderr[-2000:]}")
        figures = json.loads(result.stdout.strip().splitlines()[-1])
        reads = subprocess.run([sys.executable, __file__, "--_reads", str(figures["study_id"])], cwd=ROOT, env=env,
                               capture_output=True, text=True, timeout=600)
        if reads.returncode:
            raise SystemExit(f"measuring reads failed:\n{reads.stderr[-2000:]}")
        return {**figures, **json.loads(reads.stdout.strip().splitlines()[-1])}


def _reads(study_id: int) -> None:
    """In a child on the federation's database: the gate and the dashboard, timed (median of 5) and counted."""
    _django()
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    from aggregation.dashboard import study_dashboard
    from studies.choices import GateAction
    from studies.governance import evaluate
    from studies.models import Study

    study = Study.objects.get(pk=study_id)
    figures = {}
    for name, call in (("gate", lambda: evaluate(study, GateAction.AGGREGATE)),
                       ("dashboard", lambda: study_dashboard(study))):
        call()
        times = []
        for _ in range(5):
            with CaptureQueriesContext(connection) as queries:
                started = time.perf_counter()
                call()
                times.append(time.perf_counter() - started)
        figures[f"{name}_ms"] = round(1000 * sorted(times)[2], 1)
        figures[f"{name}_queries"] = len(queries.captured_queries)
    print(json.dumps(figures))


def _print_row(row: dict[str, Any]) -> None:
    print(f"{row['sites']:>4} sites x {row['rounds']} rounds: ingest {row['updates_per_s']} updates/s, last update "
          f"-> next round open p50 {row['last_submission_to_next_open_p50_s']} s, p99 "
          f"{row['last_submission_to_next_open_p99_s']} s; gate {row['gate_ms']} ms / {row['gate_queries']} queries; "
          f"dashboard ({row['rounds']} rounds) {row['dashboard_ms']} ms / {row['dashboard_queries']} queries; "
          f"setup {row['setup_seconds']} s, wall {row['wall_seconds']} s", flush=True)


# --- the large model ---------------------------------------------------------------------------------------


def _large_model(params: int) -> dict[str, Any]:
    """Four updates of an 8-tensor model stored as safetensors; FedAvg in one piece, then in two shards on two
    processes at once; compares the bytes."""
    import torch

    from consortium.federated import codec

    with tempfile.TemporaryDirectory(prefix="bench-large-") as folder:
        shapes = {f"layer{i}.weight": (params // 8 // 1000, 1000) for i in range(8)}
        paths = []
        for seed in range(4):
            generator = torch.Generator().manual_seed(seed)
            tensors = {name: torch.randn(shape, generator=generator) for name, shape in shapes.items()}
            paths.append(str(codec.write_file(codec.encode(tensors), Path(folder))[0]))
            del tensors
        names = sorted(shapes)
        _shard(paths, names, folder)  # the files in the page cache for both runs alike
        started = time.perf_counter()
        whole = _shard(paths, names, folder)
        one = time.perf_counter() - started
        halves = [names[0::2], names[1::2]]
        with ProcessPoolExecutor(2) as pool:
            list(pool.map(_noop, range(2)))  # the workers are up before the clock starts, as Celery's are
            started = time.perf_counter()
            parts = list(pool.map(_shard, [paths, paths], halves, [folder, folder]))
            two = time.perf_counter() - started
        joined = {**codec.read_file(Path(parts[0])), **codec.read_file(Path(parts[1]))}
        return {"params": params, "one_worker_s": round(one, 3), "two_workers_s": round(two, 3),
                "equal": codec.encode(joined) == Path(whole).read_bytes()}


def _noop(_: int) -> None:
    _django()


def _django() -> None:
    import django

    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "consortium.settings")
    django.setup()


def _shard(paths: list[str], names: list[str], folder: str) -> str:
    """FedAvg of `names`, written to the store as a shard task does; returns the file."""
    _django()
    from aggregation.services.sharding import Subset
    from aggregation.strategies import fedavg
    from consortium.federated import codec

    weights = fedavg([(Subset(codec.LazyTensors(Path(path)), names), 100.0 + index)
                      for index, path in enumerate(paths)])
    return str(codec.write_file(codec.encode(weights), Path(folder) / "out")[0])


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--_reads":
        _reads(int(sys.argv[2]))
    else:
        main()
