"""How long a round takes to close when the Celery worker aggregating it is killed (kill -9) mid-way.

For each broker (kombu's filesystem transport, the embedded default; Redis when one is reachable), each run in
a fresh data folder and database: a study with an MLP large enough that aggregating takes a second or more,
its four sites' updates submitted through the services (the last one sends the aggregation task), and real
Celery processes. Once a worker logs that it is aggregating the round, the script either lets it finish (the
reference run) or kills that worker's whole process group (worker, pool process, embedded scheduler) with
SIGKILL, checks that the round is still aggregating, and measures the time from the kill to the round closed:

- restart: the only worker, with its embedded scheduler (`celery worker --beat`, as `make run` starts it),
  is killed; a new one is started at once (as `serve_demo` does). The time includes the new worker's start.
- survivor: the scheduler runs on its own (`celery beat`) beside two workers; the aggregating one is killed
  and the other one takes the round over.

A killed run must end with exactly one model version whose SHA-256 is the reference run's.

    .venv/bin/python bench/worker_recovery.py                          # filesystem, and Redis if reachable
    .venv/bin/python bench/worker_recovery.py --broker redis --redis redis://127.0.0.1:6379/7 --json
    .venv/bin/python bench/worker_recovery.py --scenario restart --features 1000

The database is SQLite, or a fresh PostgreSQL database per run when DATABASE_URL names a PostgreSQL server.
"""

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

SCENARIOS = {
    "restart": "the only worker (scheduler embedded) is killed and a new one started",
    "survivor": "one of two workers is killed (scheduler on its own); the other carries on",
}
SITE_CODES = ("amc", "charite", "clinic", "hus")


# --- the orchestrating process --------------------------------------------------------------------------------


def main() -> None:
    args = _arguments()
    if args.drill:
        _drill(args)
        return
    rows = []
    for broker in args.broker or ["filesystem", "redis"]:
        if broker == "redis" and not _redis_ready(args.redis):
            print(f"== redis: not reachable at {args.redis}; skipped", file=sys.stderr)
            continue
        reference = _run(broker, "reference", args)
        # The kill lands inside the aggregation however fast this machine is: a share of the reference's time.
        args.kill_after = args.kill_at * reference["aggregation_seconds"]
        for scenario in args.scenario or list(SCENARIOS):
            killed = _run(broker, scenario, args)
            rows.append({"broker": broker, "scenario": scenario, "reference_sha256": reference["sha256"], **killed,
                         "same_sha256": killed["sha256"] == reference["sha256"],
                         "aggregation_seconds": reference["aggregation_seconds"]})
    for row in rows:
        print(f"{row['broker']:<10} {SCENARIOS[row['scenario']]}: killed mid-aggregation: "
              f"{'yes' if row['killed_mid_aggregation'] else 'NO'}; round closed {row['recovery_seconds']:.1f} s "
              f"after the kill (uninterrupted aggregation: {row['aggregation_seconds']:.1f} s); {row['versions']} "
              f"model version, same SHA-256 as uninterrupted: {'yes' if row['same_sha256'] else 'NO'}; "
              f"temporary files the kill left: {row['temporary_files_left']}")
    if args.json:
        print(json.dumps(rows, sort_keys=True))


def _arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--broker", action="append", choices=["filesystem", "redis"])
    parser.add_argument("--redis", default=os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379/15"))
    parser.add_argument("--features", type=int, default=2500, help="MLP input width (parameters: x 4096 hidden)")
    parser.add_argument("--timeout", type=float, default=300, help="seconds to wait for each step")
    parser.add_argument("--kill-at", type=float, default=0.5,
                        help="when to kill, as a fraction of the reference run's aggregation time")
    parser.add_argument("--kill-after", type=float, default=0.0, help=argparse.SUPPRESS)  # seconds, for a drill
    parser.add_argument("--json", action="store_true", help="end with one JSON line of the figures")
    parser.add_argument("--scenario", action="append", choices=list(SCENARIOS))
    parser.add_argument("--drill", choices=["reference", *SCENARIOS], help=argparse.SUPPRESS)  # one run, in its folder
    return parser.parse_args()


def _run(broker: str, drill: str, args: argparse.Namespace) -> dict[str, Any]:
    """One run in a fresh data folder and database, in a child process (Django settings are per process)."""
    with tempfile.TemporaryDirectory(prefix="worker-recovery-") as folder, _database(Path(folder)) as url:
        env = {key: value for key, value in os.environ.items() if key not in {"REDIS_URL", "CELERY_BROKER_URL"}}
        env.update(CONSORTIUM_DATA_DIR=str(Path(folder) / "data"), DATABASE_URL=url, DJANGO_SETTINGS_MODULE=
                   "consortium.settings", LOG_LEVEL="INFO")
        if broker == "redis":
            env["REDIS_URL"] = args.redis
            _redis_ready(args.redis)  # flushes: no task of an earlier run may reach this one
        command = [sys.executable, __file__, "--drill", drill, "--features", str(args.features), "--timeout",
                   str(args.timeout), "--kill-after", str(args.kill_after)]
        result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True,
                                timeout=args.timeout * 4)
        if result.returncode != 0:
            raise SystemExit(f"{broker} {drill} run failed:\n{result.stdout[-3000:]}\n"
                             f"{result.stderr[-3000:]}")
        return json.loads(result.stdout.strip().splitlines()[-1])


@contextmanager
def _database(folder: Path) -> Iterator[str]:
    """SQLite in the run's folder; a fresh PostgreSQL database when DATABASE_URL names a PostgreSQL server."""
    configured = os.environ.get("DATABASE_URL", "")
    if not configured.startswith("postgres"):
        yield f"sqlite:///{folder / 'consortium.sqlite3'}"
        return
    import psycopg

    name, server = f"consortium_recovery_{uuid.uuid4().hex[:8]}", configured.rsplit("/", 1)[0]
    with psycopg.connect(f"{server}/postgres", autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield f"{server}/{name}"
    finally:
        with psycopg.connect(f"{server}/postgres", autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _redis_ready(url: str) -> bool:
    import redis

    try:
        redis.Redis.from_url(url, socket_connect_timeout=2).flushdb()
        return True
    except redis.RedisError:
        return False


# --- one run (child process, Django configured from the environment) ------------------------------------------


def _drill(args: argparse.Namespace) -> None:
    import django

    django.setup()
    from aggregation.models import ModelVersion, Round

    round_id = _prepare(args.features)
    logs = Path(os.environ["CONSORTIUM_DATA_DIR"]) / "logs"
    survivor = args.drill == "survivor"
    # The reference and "restart": one worker with its embedded scheduler, as `make run` starts it.
    # "survivor": the scheduler on its own and two workers, as a production deployment runs them.
    processes = {"beat": _start(["beat"], logs / "beat.log")} if survivor else {}
    for name in ("worker-1", "worker-2") if survivor else ("worker-1",):
        processes[name] = _start(_worker_arguments(name, beat=not survivor), logs / f"{name}.log")
    victim = _wait_for(lambda: next((name for name in processes if f"Aggregating round {round_id}\n"
                                     in _read(logs / f"{name}.log")), None), args.timeout, "a worker to aggregate")
    figures: dict[str, Any] = {"killed_mid_aggregation": False, "recovery_seconds": 0.0, "temporary_files_left": 0}
    try:
        if args.drill != "reference":
            time.sleep(args.kill_after)
            os.killpg(processes[victim].pid, signal.SIGKILL)
            killed_at = time.monotonic()
            processes.pop(victim).wait()
            figures["killed_mid_aggregation"] = (Round.objects.get(pk=round_id).status == "aggregating"
                                                 and not ModelVersion.objects.filter(round_id=round_id).exists())
            figures["temporary_files_left"] = len(_temporary_files())
            if not survivor:  # what the demo's supervisor (`serve_demo`) does: start a new worker at once
                processes["worker-3"] = _start(_worker_arguments("worker-3", beat=True), logs / "worker-3.log")
        _wait_for(lambda: Round.objects.get(pk=round_id).status == "closed", args.timeout, "the round to close")
        if args.drill != "reference":
            figures["recovery_seconds"] = time.monotonic() - killed_at
    finally:
        for process in processes.values():
            _stop(process)
    versions = list(ModelVersion.objects.filter(round_id=round_id))
    print(json.dumps({**figures, "versions": len(versions), "sha256": versions[0].sha256,
                      "aggregation_seconds": versions[0].provenance["aggregation_seconds"]}))


def _prepare(features: int) -> int:
    """Migrate, seed the demo consortium, and bring a large-model study's first round to aggregating: its four
    sites' updates are submitted through the services, and the last one sends the aggregation task."""
    import io

    import torch
    from django.core.management import call_command

    from aggregation.services import round_open_next, update_submit
    from aggregation.storage import version_tensors
    from consortium.federated import codec
    from sites.agents import AgentPrincipal
    from sites.models import Site
    from sites.services import agent_token_create

    call_command("migrate", verbosity=0)
    call_command("seed_demo", stdout=io.StringIO())
    study, users = _large_study(features)
    round_ = round_open_next(study_id=study.pk)
    base = version_tensors(round_.base_version)
    for index, site in enumerate(Site.objects.filter(code__in=SITE_CODES).order_by("code")):
        token, _ = agent_token_create(actor=users[f"admin_{site.code}"], site=site, name="recovery bench")
        generator = torch.Generator().manual_seed(index)
        # In name order: the decoded dict's order may differ between processes, the noise must not.
        tensors = {name: t + 0.01 * torch.randn(t.shape, generator=generator) for name, t in sorted(base.items())}
        update_submit(actor=AgentPrincipal(token), round_id=round_.pk, body=codec.encode(tensors),
                      round_number=round_.number, base_version=round_.base_version.number,
                      num_examples=100 + index, metrics={"train_loss": 0.5}, idempotency_key=f"bench-{index}")
    round_.refresh_from_db()
    assert round_.status == "aggregating", round_.status
    return round_.pk


def _large_study(features: int) -> tuple[Any, dict[str, Any]]:
    from sites.models import Site
    from studies import services
    from studies.demo import approve_and_activate, demo_users, govern

    users = demo_users()
    study = services.study_create(
        actor=users["pi"], title="Worker recovery bench", agreement_text="Bench data only.",
        clinical_question="How fast does a round recover from a killed worker?", model_kind="mlp",
        hidden_units=4096, num_features=features, federated_statistics=False, strategy="fedavg", rounds=1,
        quorum=4, round_deadline_minutes=60, label_column="target")
    for site in Site.objects.filter(code__in=SITE_CODES):
        govern(users, study, site)
    return approve_and_activate(users["pi"], users["dpo"], study, dpia_reviewer=users["dpo2"],
                                summary="Synthetic updates."), users


def _worker_arguments(name: str, *, beat: bool) -> list[str]:
    from django.conf import settings

    schedule = ["--beat", "--schedule", str(Path(settings.DATA_DIR) / "celerybeat-schedule")] if beat else []
    return ["worker", "-n", f"{name}@%h", *schedule, "--concurrency", "1", "--loglevel", "INFO"]


def _start(arguments: list[str], log: Path) -> subprocess.Popen:
    """A Celery process (`celery -A consortium ...`) in its own process group, to kill it whole."""
    from django.conf import settings

    if arguments[0] == "beat":
        arguments = [*arguments, "--schedule", str(Path(settings.DATA_DIR) / "celerybeat-schedule"), "-l", "INFO"]
    log.parent.mkdir(parents=True, exist_ok=True)
    command = [str(Path(sys.executable).with_name("celery")), "-A", "consortium", *arguments]
    return subprocess.Popen(command, cwd=ROOT, stdout=log.open("ab"), stderr=subprocess.STDOUT,
                            start_new_session=True)


def _stop(worker: subprocess.Popen) -> None:
    """Warm shutdown (the task in hand finishes), then whatever is left of the process group is killed."""
    os.killpg(worker.pid, signal.SIGTERM)
    try:
        worker.wait(timeout=60)
    except subprocess.TimeoutExpired:
        pass
    try:
        os.killpg(worker.pid, signal.SIGKILL)  # the pool and scheduler processes, if they outlived the worker
    except ProcessLookupError:
        pass
    worker.wait()


def _temporary_files() -> list[Path]:
    from django.conf import settings

    return list(Path(settings.MODEL_STORE).rglob(".*.tmp"))


def _read(path: Path) -> str:
    return path.read_text(errors="replace") if path.exists() else ""


def _wait_for(condition: Any, timeout: float, what: str) -> Any:
    """The condition's first truthy value, polled every 20 ms."""
    deadline = time.monotonic() + timeout
    while not (value := condition()):
        if time.monotonic() > deadline:
            raise SystemExit(f"Timed out after {timeout:.0f} s waiting for {what}.")
        time.sleep(0.02)
    return value


if __name__ == "__main__":
    main()
