"""`python manage.py simulate --sites 200 --rounds 5 [--server URL] [--strategy NAME]`: a federation of many
simulated sites through the real HTTP API, the real gate and a real Celery worker.

The sites, their admins, their governance (invited, granted, DUA signed, ethics recorded, DPIA and approvals)
and their agent tokens are made through the services in this command's database; then one asyncio process
runs an agent per site (`sites.agent.swarm`), each with its own token, synthetic data partition and local
training. Without `--server` the command starts the embedded server (daphne) and a worker with its scheduler
itself; with `--server` the coordinator there must use the same database (DATABASE_URL). It ends with one
JSON line of figures.
"""

import asyncio
import io
import json
import logging
import time
from typing import Any

from django.core.management import call_command
from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import close_old_connections

from aggregation import demo, simulation
from sites.agent.swarm import SwarmError, run_swarm, synthetic_sites
from studies.choices import Strategy


class Command(BaseCommand):
    help = "Simulate a federation of N sites (one asyncio process of agents) against a real server and worker."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--sites", type=int, default=20)
        parser.add_argument("--rounds", type=int, default=3)
        parser.add_argument("--server", help="a running coordinator on this database (default: start one here); "
                                             "several of its server processes comma-separated share the agents")
        parser.add_argument("--strategy", choices=Strategy.values, default="fedavg")
        parser.add_argument("--seed", type=int, default=0, help="the sites' synthetic data and batch order")
        parser.add_argument("--poll", type=float, help="seconds between an agent's polls (default: grows with N)")
        parser.add_argument("--connections", type=int, default=32, help="HTTP connections shared by the agents")
        parser.add_argument("--timeout", type=float, default=900)
        parser.add_argument("--burst", action="store_true", help="the agents submit each round's updates together, "
                                                                  "once all have trained: measures the ingest")

    def handle(self, *args: Any, **options: Any) -> None:
        sites, rounds = options["sites"], options["rounds"]
        if sites < 1 or rounds < 1:
            raise CommandError("--sites and --rounds must be at least 1.")
        demo.interrupt_on_sigterm()
        logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per request of hundreds of agents
        if not options["server"]:
            call_command("migrate", verbosity=0)
        call_command("seed_demo", stdout=io.StringIO())
        started = time.perf_counter()
        run = simulation.simulation_create(sites=sites, rounds=rounds, strategy=options["strategy"])
        setup_seconds = time.perf_counter() - started
        self.stdout.write(f"Study {run.study.pk}: {sites} sites governed and tokens issued in {setup_seconds:.1f} s")
        processes, server = [], options["server"]
        if not server:
            logs = demo.demo_dir() / "logs" / f"simulate{run.study.pk}"
            port = demo.free_port()
            processes = [demo.start_server(port, logs / "server.log"),
                         demo.start_worker(logs / "worker.log", tick_seconds=2)]
            server = f"http://127.0.0.1:{port}"
            self.stdout.write(f"Embedded server on port {port} and a worker; logs in {logs}")
        try:
            if processes:
                _wait_until_up(server, processes)
            wall = time.perf_counter()
            log = self._swarm(run, server, options, processes)
            wall = time.perf_counter() - wall
        finally:
            demo.stop(processes)
        figures = {"sites": sites, "rounds": rounds, "strategy": options["strategy"], "study_id": run.study.pk,
                   "setup_seconds": round(setup_seconds, 2), "wall_seconds": round(wall, 2),
                   **simulation.run_figures(run.study.pk),
                   "submit_latency_p50_s": _median(log.submit_seconds), "polls": log.polls, "retries": log.retries,
                   "refused": len(log.refused), "server": options["server"] or "embedded", "burst": options["burst"]}
        self.stdout.write(json.dumps(figures, sort_keys=True))

    def _swarm(self, run: simulation.Simulation, server: str, options: dict[str, Any], processes: list) -> Any:
        study_id, rounds = run.study.pk, options["rounds"]
        agents = synthetic_sites(sorted(run.tokens), run.tokens, features=simulation.FEATURES, seed=options["seed"])
        poll = options["poll"] or max(0.5, len(agents) / 100)  # about 100 polls a second at most, whatever N

        def done() -> bool:
            close_old_connections()
            dead = [process for process in processes if process.poll() is not None]
            if dead:
                raise CommandError(f"A coordinator process stopped (exit {dead[0].returncode}); see its log.")
            stuck = simulation.stuck_round(study_id)
            if stuck:
                raise CommandError(f"Round {stuck.number} {stuck.status}: {stuck.status_reason}")
            return simulation.training_rounds_closed(study_id) >= rounds

        try:
            return asyncio.run(run_swarm(server.split(","), agents, done=done, poll=poll, studies=[study_id],
                                         connections=options["connections"], timeout=options["timeout"],
                                         burst=options["burst"]))
        except (SwarmError, TimeoutError) as exc:
            raise CommandError(f"The simulation stopped: {exc}") from exc


def _wait_until_up(server: str, processes: list, timeout: float = 300) -> None:
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if any(process.poll() is not None for process in processes):
            raise CommandError("The embedded server or worker stopped while starting; see its log.")
        try:
            httpx.get(f"{server}/api/agent/me/", timeout=5)  # 401 without a token: the server answers
            return
        except httpx.TransportError:
            time.sleep(0.3)
    raise CommandError(f"The embedded server at {server} did not answer within {timeout:.0f} s.")


def _median(values: list[float]) -> float | None:
    ordered = sorted(values)
    return round(ordered[len(ordered) // 2], 4) if ordered else None

