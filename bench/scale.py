"""Scale figures: a federation of 20, 100 and 200 simulated sites through the real HTTP API, gate and worker
(`manage.py simulate`, the embedded default: SQLite, daphne, one worker), and one large-model aggregation.

Per site count: update ingest (updates/s, from the first to the last update of a round as the coordinator
received them; the agents submit each round's updates together once all have trained, `simulate --burst`, so
that the figure is the coordinator's and not the agents' pace; `--paced` lets each submit when it is done),
the time from a round's last update to the next round opened (p50, p99), the wall time, and
then, on that database, the gate's time and query count and the dashboard's render time and query count.
For a 50M-parameter model (`--params`): one FedAvg of four updates in one piece, and in two parameter shards
on two worker processes at once (what the Celery chord of `aggregation.services.sharding` does with two
workers); the results must be bit for bit equal.

    .venv/bin/python bench/scale.py            # 20, 100 and 200 sites, 3 rounds; 50M parameters
    .venv/bin/python bench/scale.py --quick    # 20 sites, 2 rounds; 10M parameters (under three minutes)
    .venv/bin/python bench/scale.py --sites 200 --rounds 5 --json
    .venv/bin/python bench/scale.py --sites 200 --dashboard-rounds 50 --no-large   # + the page at 50 rounds
    .venv/bin/python bench/scale.py --sites 200 --dashboard-rounds 50 --dashboard-keep data/bench-dash  # page only
    DATABASE_URL=postgres://... REDIS_URL=redis://... .venv/bin/python bench/scale.py --server http://127.0.0.1:8000

`--dashboard-rounds R` builds, per site count, a second study of R closed training rounds through the services
in-process (every site downloads, trains and submits each round; aggregation runs eagerly as each round
completes) on a throwaway SQLite database, then times the dashboard page as its PI gets it (the Django test
client: view, selector, template; median of 5) and counts its queries. `--server URL` runs the federation
against a coordinator already running (`make prod`), on the database that DATABASE_URL names (the same as the
coordinator's); the gate is timed on that database. The websocket event rate is `bench/ws_fanout.py`'s figure.
`--dashboard-keep DIR` keeps each dashboard study in DIR/<sites>x<R>; one kept there already is not built again:
its page is timed again, and the federation is skipped.
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
        kept = _kept(args.dashboard_keep, sites, args.dashboard_rounds)
        if kept is not None and (kept / "study.json").exists():  # re-time a kept study's page only
            row = {"sites": sites, **_dashboard(sites, args.dashboard_rounds, kept)}
            rows.append(row)
            _print_dashboard(row)
            continue
        row = _federation(sites, args.rounds or (2 if args.quick else 3), args.timeout, args.server,
                          burst=not args.paced)
        if args.dashboard_rounds:
            row.update(_dashboard(sites, args.dashboard_rounds, kept))
        rows.append(row)
        _print_row(rows[-1])
    large = None
    if not args.no_large:
        params = args.params or (10_000_000 if args.quick else 50_000_000)
        large = _large_model(params)
        print(f"\nFedAvg of 4 updates of a {params / 1e6:.0f}M-parameter model: 1 worker {large['one_worker_s']:.2f} "
              f"s, 2 workers (2 shards at once) {large['two_workers_s']:.2f} s; bit for bit equal: {large['equal']}")
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
    parser.add_argument("--no-large", action="store_true", help="skip the large-model aggregation")
    parser.add_argument("--server", help="run the federations against this running coordinator (its DATABASE_URL)")
    parser.add_argument("--paced", action="store_true", help="each agent submits as soon as it has trained "
                                                             "(default: each round's updates together)")
    parser.add_argument("--dashboard-rounds", type=int, help="also time the dashboard page of a study with this many "
                                                              "closed rounds (built through the services)")
    parser.add_argument("--dashboard-keep", type=Path, help="keep the dashboard studies in this folder; a study "
                                                            "already kept there is timed again, not rebuilt")
    return parser.parse_args()


def _federation(sites: int, rounds: int, timeout: float, server: str | None = None, *,
                burst: bool = True) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="bench-scale-") as folder:
        # Embedded: a throwaway database and broker of its own. Against a server: that server's database.
        env = dict(os.environ) if server else {key: value for key, value in os.environ.items()
                                               if key not in {"DATABASE_URL", "REDIS_URL", "CELERY_BROKER_URL"}}
        if not server:
            env.update(CONSORTIUM_DATA_DIR=folder)
        command = [sys.executable, "manage.py", "simulate", "--sites", str(sites), "--rounds", str(rounds), "--timeout",
                   str(timeout), *(["--server", server] if server else []), *(["--burst"] if burst else [])]
        result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout + 900)
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


def _kept(keep: Path | None, sites: int, rounds: int | None) -> Path | None:
    return keep / f"{sites}x{rounds}" if keep is not None and rounds else None


def _dashboard(sites: int, rounds: int, kept: Path | None = None) -> dict[str, Any]:
    """`_dashboard_build` in a child with its own data folder and SQLite file, tasks run eagerly (no worker);
    the folder is `kept` when given (and the child only times the page if it holds a built study)."""
    with tempfile.TemporaryDirectory(prefix="bench-dashboard-") as scratch:
        folder = str(kept or scratch)
        Path(folder).mkdir(parents=True, exist_ok=True)
        env = {key: value for key, value in os.environ.items()
               if key not in {"DATABASE_URL", "REDIS_URL", "CELERY_BROKER_URL"}}
        env.update(CONSORTIUM_DATA_DIR=folder, CELERY_TASK_ALWAYS_EAGER="1", AUDIT_CHECKPOINT_INTERVAL="0")
        result = subprocess.run([sys.executable, __file__, "--_dashboard", str(sites), str(rounds)], cwd=ROOT,
                                env=env, capture_output=True, text=True, timeout=7200)
        if result.returncode:
            raise SystemExit(f"building {rounds} rounds of {sites} sites failed:\n{result.stderr[-3000:]}")
        return json.loads(result.stdout.strip().splitlines()[-1])


def _dashboard_build(sites: int, rounds: int) -> None:
    """A study of `sites` simulated sites run for `rounds` training rounds through the services, as the API
    calls them (each site: download, local training, submission; the statistics round first), then its
    dashboard page timed as its PI gets it, and its queries counted."""
    _django()
    import io

    from django.conf import settings
    from django.core.management import call_command

    from studies.models import Study

    marker = Path(settings.DATA_DIR) / "study.json"
    if marker.exists():  # kept by `--dashboard-keep`: time the page again
        kept = json.loads(marker.read_text())
        study = Study.objects.get(pk=kept["study_id"])
        print(json.dumps({**{key: kept[key] for key in ("dashboard_rounds", "dashboard_build_s")},
                          **_page(study, f"/studies/{study.pk}/dashboard/"), **_gate_timed(study)}))
        return

    from aggregation import simulation
    from aggregation.choices import RoundKind, RoundStatus
    from aggregation.models import Round
    from aggregation.services import round_open_next
    from sites.agent.swarm import synthetic_sites
    from sites.agents import AgentPrincipal
    from sites.services import agent_token_authenticate

    call_command("migrate", verbosity=0)
    call_command("seed_demo", stdout=io.StringIO())
    started = time.perf_counter()
    run = simulation.simulation_create(sites=sites, rounds=rounds)
    agents = synthetic_sites(sorted(run.tokens), run.tokens, features=simulation.FEATURES)
    actors = {agent.code: AgentPrincipal(agent_token_authenticate(agent.token)) for agent in agents}
    round_open_next(study_id=run.study.pk)
    while (round_ := Round.objects.filter(study=run.study, status=RoundStatus.OPEN).first()) is not None:
        if round_.kind == RoundKind.EVALUATION:
            break  # the training rounds are done; the final evaluation stays open
        for agent in agents:
            _site_round(round_, agent, actors[agent.code])
        if Round.objects.get(pk=round_.pk).status not in {RoundStatus.CLOSED}:
            raise SystemExit(f"round {round_.number} did not close: {Round.objects.get(pk=round_.pk).status}")
    built = time.perf_counter() - started
    closed = simulation.training_rounds_closed(run.study.pk)
    marker.write_text(json.dumps({"study_id": run.study.pk, "dashboard_rounds": closed,
                                  "dashboard_build_s": round(built, 1)}))
    print(json.dumps({"dashboard_rounds": closed, "dashboard_build_s": round(built, 1),
                      **_page(run.study, f"/studies/{run.study.pk}/dashboard/"), **_gate_timed(run.study)}))


def _site_round(round_: Any, agent: Any, actor: Any) -> None:
    """What one site's agent does in a round (`sites.agent.swarm.SwarmAgent`), through the services."""
    from aggregation.choices import RoundKind
    from aggregation.models import Standardization
    from aggregation.services import model_download, statistics_submit, update_submit
    from consortium.federated import codec
    from sites.agent.data import local_statistics, split, standardize
    from sites.agent.runner import _json_safe
    from sites.agent.training import Protocol, local_update

    train_set, val_set = split(agent.dataset, 0.2, agent.seed)
    if round_.kind == RoundKind.STATISTICS:
        figures = local_statistics(train_set)
        statistics_submit(actor=actor, round_id=round_.pk, features=figures["features"], count=figures["count"],
                          sums=figures["sum"], sums_of_squares=figures["sum_sq"])
        return
    protocol = Protocol.from_json(round_.study.protocol())
    pooled = Standardization.objects.filter(study_id=round_.study_id).first()
    if pooled is not None:
        figures = {"features": pooled.features, "mean": pooled.mean, "std": pooled.std}
        train_set, val_set = standardize(train_set, figures), standardize(val_set, figures)
    version, data = model_download(actor=actor, round_id=round_.pk)
    state = codec.decode(data, expected=codec.spec_of(protocol.initial_state()), max_bytes=len(data))
    update = local_update(protocol, state, train_set, val_set, seed=agent.seed + round_.number)
    update_submit(actor=actor, round_id=round_.pk, body=codec.encode(update.state), round_number=round_.number,
                  base_version=version.number, num_examples=update.num_examples,
                  metrics=_json_safe(update.metrics), idempotency_key=f"bench-{agent.code}-{round_.number}")


def _page(study: Any, path: str) -> dict[str, Any]:
    """The page as the study's PI gets it: median of 5 after one warm-up, and the queries of one."""
    from django.db import connection
    from django.test import Client
    from django.test.utils import CaptureQueriesContext

    client = Client(HTTP_HOST="127.0.0.1")
    client.force_login(study.pi)
    times, queries = [], 0
    for attempt in range(6):
        with CaptureQueriesContext(connection) as captured:
            started = time.perf_counter()
            response = client.get(path)
            elapsed = time.perf_counter() - started
        if response.status_code != 200:
            raise SystemExit(f"{path}: HTTP {response.status_code}")
        if attempt:
            times.append(elapsed)
            queries = len(captured.captured_queries)
    return {"dashboard_page_ms": round(1000 * sorted(times)[2], 1), "dashboard_page_queries": queries,
            "dashboard_page_kb": round(len(response.content) / 1024)}


def _gate_timed(study: Any) -> dict[str, Any]:
    from studies.choices import GateAction
    from studies.governance import evaluate

    evaluate(study, GateAction.AGGREGATE)
    times = []
    for _ in range(5):
        started = time.perf_counter()
        evaluate(study, GateAction.AGGREGATE)
        times.append(time.perf_counter() - started)
    return {"gate_ms_at_dashboard_rounds": round(1000 * sorted(times)[2], 1)}


def _print_row(row: dict[str, Any]) -> None:
    pace = "together" if row.get("burst") else "paced"
    print(f"{row['sites']:>4} sites x {row['rounds']} rounds ({row['server']}): ingest {row['updates_per_s']} "
          f"updates/s ({pace}), last update -> next round open p50 {row['last_submission_to_next_open_p50_s']} s, p99 "
          f"{row['last_submission_to_next_open_p99_s']} s; gate {row['gate_ms']} ms / {row['gate_queries']} queries; "
          f"dashboard data ({row['rounds']} rounds) {row['dashboard_ms']} ms / {row['dashboard_queries']} queries; "
          f"setup {row['setup_seconds']} s, wall {row['wall_seconds']} s", flush=True)
    if "dashboard_page_ms" in row:
        _print_dashboard(row, "    ")


def _print_dashboard(row: dict[str, Any], lead: str = "") -> None:
    lead = lead or f"{row['sites']:>4} sites,"
    print(f"{lead} dashboard page at {row['dashboard_rounds']} closed rounds: {row['dashboard_page_ms']} ms / "
          f"{row['dashboard_page_queries']} queries, {row['dashboard_page_kb']} KiB (built in "
          f"{row['dashboard_build_s']} s; gate there {row['gate_ms_at_dashboard_rounds']} ms)", flush=True)


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
    elif len(sys.argv) == 4 and sys.argv[1] == "--_dashboard":
        _dashboard_build(int(sys.argv[2]), int(sys.argv[3]))
    else:
        main()
