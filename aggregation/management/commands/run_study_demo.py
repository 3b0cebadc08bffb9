"""`python manage.py run_study_demo --rounds 20 [--json]`: the demo federation, headless, to the end.

A real ASGI server, a real Celery worker and four site agents (separate processes, talking HTTP),
each agent holding a non-IID share of scikit-learn's breast cancer Wisconsin data. At the end it
compares, on a held-out test split that no site trains on, the federated model's ROC AUC with each
site's model trained on its own data only and with a model trained centrally on all the data.
"""

import io
import json
import time
from pathlib import Path
from typing import Any

from django.core.management import call_command
from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.utils import timezone

from aggregation import demo
from aggregation.choices import RoundKind, RoundStatus
from aggregation.models import ModelVersion, Round
from aggregation.selectors import AGENT_PROTOCOL_FIELDS, latest_version
from aggregation.services._common import version_tensors
from sites.agent import data as agent_data
from sites.agent import demo_data
from studies.demo import federation_study
from studies.models import Study


class Command(BaseCommand):
    help = "Run the demo federation headless (server, worker, 4 agents) and compare federated, local and central AUC."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--rounds", type=int, default=20)
        parser.add_argument("--json", action="store_true", help="end with one JSON line of the figures")
        parser.add_argument("--timeout", type=float, default=900, help="seconds to wait for the rounds")

    def handle(self, *args: Any, rounds: int, json: bool, timeout: float, **options: Any) -> None:
        if rounds < 1:
            raise CommandError("--rounds must be at least 1.")
        demo.interrupt_on_sigterm()
        call_command("migrate", verbosity=0)
        call_command("seed_demo", stdout=io.StringIO())
        try:
            study = federation_study(title=f"Headless federation {timezone.now():%Y-%m-%d %H:%M:%S}", rounds=rounds)
        except LookupError as exc:  # a demo database seeded by an older version
            raise CommandError(str(exc)) from exc
        data, tokens = demo.ensure_partitions(), demo.ensure_tokens()
        logs = Path(demo.demo_dir()) / "logs" / f"study{study.pk}"
        port = demo.free_port()
        processes = [demo.start_server(port, logs / "server.log"), demo.start_worker(logs / "worker.log",
                                                                                     tick_seconds=1)]
        processes += demo.start_agents(f"http://127.0.0.1:{port}", tokens, data, logs, poll=0.5,
                                       studies=[study.pk])
        self.stdout.write(f"Study {study.pk} ({rounds} rounds): server on port {port}, worker, "
                          f"{len(tokens)} agents; logs in {logs}")
        try:
            self._wait(study, rounds, timeout, processes, logs)
        finally:
            demo.stop(processes)
        figures = self._figures(study, data)
        self._report(figures)
        if json:
            self.stdout.write(_json_line(figures))

    def _wait(self, study: Study, rounds: int, timeout: float, processes: list, logs: Path) -> None:
        deadline, reported = time.monotonic() + timeout, 0
        while time.monotonic() < deadline:
            dead = [process for process in processes if process.poll() is not None]
            if dead:
                raise CommandError(f"A federation process stopped (exit {dead[0].returncode}): "
                                   f"{' '.join(map(str, dead[0].args))[:200]}; see the logs in {logs}")
            done = Round.objects.filter(study=study, kind=RoundKind.TRAINING, status=RoundStatus.CLOSED).count()
            stuck = Round.objects.filter(study=study, status__in=[RoundStatus.BLOCKED, RoundStatus.FAILED]).first()
            if stuck:
                raise CommandError(f"Round {stuck.number} {stuck.get_status_display().lower()}: {stuck.status_reason}")
            if done > reported:
                self.stdout.write(f"  round {done}/{rounds} closed{_last_evaluation(study)}")
                reported = done
            if done >= rounds:
                return
            time.sleep(0.5)
        raise CommandError(f"Timed out after {timeout:.0f} s with {reported} of {rounds} rounds closed.")

    def _figures(self, study: Study, data: dict[str, Path]) -> dict[str, Any]:
        """ROC AUC on the held-out test split: federated, each site alone, and central."""
        study.refresh_from_db()
        protocol = {field: getattr(study, field) for field in AGENT_PROTOCOL_FIELDS}
        epochs = study.rounds * study.local_epochs  # as many passes over its data as a site made in the federation
        test = agent_data.load_csv(demo.demo_dir() / demo_data.TEST_FILE, label=study.label_column)
        global_std = {"features": study.standardization.features, "mean": study.standardization.mean,
                      "std": study.standardization.std}
        federated = demo_data.evaluate(version_tensors(latest_version(study)), test, protocol,
                                       standardization=global_std)["auc"]
        sites = {code: agent_data.load_csv(path, label=study.label_column) for code, path in sorted(data.items())}
        site_aucs = {code: _alone(rows, protocol, epochs, test) for code, rows in sites.items()}
        central = _alone(agent_data.pooled(list(sites.values())), protocol, epochs, test)
        return {"study_id": study.pk, "rounds": study.rounds, "federated_auc": federated, "central_auc": central,
                "site_aucs": site_aucs, "mean_site_auc": sum(site_aucs.values()) / len(site_aucs),
                "test_examples": len(test.y)}

    def _report(self, figures: dict[str, Any]) -> None:
        self.stdout.write(f"\nROC AUC on the held-out test split ({figures['test_examples']} rows no site trained on):")
        self.stdout.write(f"  federated model ({figures['rounds']} rounds) {figures['federated_auc']:.4f}")
        for code, auc in figures["site_aucs"].items():
            self.stdout.write(f"  {code:<8} own data only          {auc:.4f}")
        self.stdout.write(f"  mean single-site model          {figures['mean_site_auc']:.4f}")
        self.stdout.write(f"  central model (all data pooled) {figures['central_auc']:.4f}")
        beats = figures["federated_auc"] > figures["mean_site_auc"]
        close = figures["central_auc"] - figures["federated_auc"] <= 0.02
        self.stdout.write(f"  federated beats the mean single-site model: {'yes' if beats else 'NO'}; "
                          f"within 0.02 of central: {'yes' if close else 'NO'}")


def _alone(rows: agent_data.Dataset, protocol: dict[str, Any], epochs: int, test: agent_data.Dataset) -> float:
    """A model trained on `rows` only (standardized with their own statistics), scored on the test split."""
    own = agent_data.standardization_of(rows)
    state = demo_data.train_local(rows, protocol, epochs, standardization=own)
    return demo_data.evaluate(state, test, protocol, standardization=own)["auc"]


def _last_evaluation(study: Study) -> str:
    """The sites' mean validation AUC of the newest model they have evaluated (they do so on download)."""
    version = ModelVersion.objects.filter(study=study).exclude(evaluation={}).order_by("-number").first()
    auc = (version.evaluation.get("global") or {}).get("val_auc") if version else None
    return f"; model v{version.number}: sites' mean validation AUC {auc:.3f}" if auc is not None else ""


def _json_line(figures: dict[str, Any]) -> str:
    return json.dumps(figures, sort_keys=True)
