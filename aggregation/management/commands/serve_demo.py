"""`python manage.py serve_demo`: the live demo behind `make run`.

Starts the ASGI server, a real Celery worker (with the scheduler that opens rounds) and one site
agent per demo hospital, each a separate process talking HTTP; prints each closed round; restarts
the worker if it dies; Ctrl-C stops them all. Run `seed_demo` first.
"""

import time
from pathlib import Path
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from aggregation import demo
from aggregation.choices import RoundStatus
from aggregation.models import Round
from studies.demo import SITES
from studies.models import Study

# A worker that keeps dying (a broken setup, not a lost process) is not restarted for ever.
MAX_WORKER_RESTARTS = 5


class Command(BaseCommand):
    help = "Serve the demo: ASGI server, Celery worker with scheduler, and the four hospitals' site agents."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--host", default="127.0.0.1")
        parser.add_argument("--port", type=int, default=8000)
        parser.add_argument("--no-agents", action="store_true", help="start only the server and the worker")

    def handle(self, *args: Any, host: str, port: int, no_agents: bool, **options: Any) -> None:
        if not Study.objects.exists():
            raise CommandError("No studies yet: run `python manage.py seed_demo` first (make run does).")
        demo.interrupt_on_sigterm()
        logs = Path(demo.demo_dir()) / "logs"
        processes = [demo.start_worker(logs / "worker.log")]
        processes.append(demo.spawn(["daphne", "-b", host, "-p", str(port), "consortium.asgi:application"],
                                     logs / "server.log"))
        if not no_agents:
            processes += demo.start_agents(f"http://127.0.0.1:{port}", demo.ensure_tokens(), demo.ensure_partitions(),
                                           logs)
        self.stdout.write(self.style.SUCCESS(f"Consortium is at http://{host}:{port}/ (Ctrl-C stops everything)."))
        self.stdout.write(f"Worker, server and {0 if no_agents else len(SITES)} site agents log to {logs}/")
        try:
            self._watch(processes, logs)
        except KeyboardInterrupt:
            self.stdout.write("\nStopping…")
        finally:
            demo.stop(processes)

    def _watch(self, processes: list, logs: Path) -> None:
        """Print every round that ends. A worker that dies is replaced (the new one sends a round the dead
        one was aggregating again: `aggregation.services.recovery`); any other process dying stops the demo."""
        seen = set(Round.objects.exclude(status__in=[RoundStatus.OPEN, RoundStatus.AGGREGATING])
                   .values_list("pk", flat=True))
        restarts = 0
        while all(process.poll() is None for process in processes[1:]):
            if processes[0].poll() is not None:
                if restarts == MAX_WORKER_RESTARTS:
                    break
                restarts += 1
                self.stdout.write(self.style.WARNING(f"The worker stopped (exit {processes[0].returncode}); "
                                                     "starting a new one."))
                processes[0] = demo.start_worker(logs / "worker.log")
            ended = Round.objects.exclude(status__in=[RoundStatus.OPEN, RoundStatus.AGGREGATING]).exclude(
                pk__in=seen).select_related("study").order_by("pk")
            for round_ in ended:
                seen.add(round_.pk)
                self.stdout.write(f"  {round_.study.title}: round {round_.number} ({round_.kind}) "
                                  f"{round_.get_status_display().lower()}. {round_.status_reason}")
            time.sleep(1)
        raise CommandError("A demo process stopped unexpectedly; see the logs in data/demo/logs/.")
