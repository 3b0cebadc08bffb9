"""`python manage.py run_study_demo --rounds 20 [--json] [--data-dir DIR --label COL] [--strategy ...]`: a real
federation, headless, to the end.

A real ASGI server, a real Celery worker and one site agent per site (separate processes, talking HTTP). By
default the four demo hospitals, each with a non-IID share of scikit-learn's breast cancer Wisconsin data;
with `--data-dir`, one site per CSV in that folder (someone's own data). After the last training round the
sites evaluate the final model (the evaluation round), and the command compares, on a held-out test split
that no site trains on, the federated model's ROC AUC with each site's model trained on its own data only and
with a model trained centrally on all the data. The options are in the README ("Headless run").
"""

import io
import json
import time
from pathlib import Path
from typing import Any

from django.core.exceptions import ValidationError
from django.core.management import call_command
from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.utils import timezone

from aggregation import demo
from aggregation.choices import RoundKind, RoundStatus
from aggregation.models import ModelVersion, Round
from aggregation.selectors import AGENT_PROTOCOL_FIELDS, latest_version
from aggregation.storage import version_tensors
from consortium.errors import DomainError
from consortium.federated.metric_keys import VAL_AUC, VAL_EXAMPLES
from sites.agent import data as agent_data
from sites.agent import demo_data
from studies.choices import ModelKind, Strategy
from studies.demo import federation_study
from studies.models import DatasetRegistration, Study

# Options that set a protocol field of the study, with their types (`--model` sets `model_kind`).
PROTOCOL_OPTIONS = {"strategy": str, "server_learning_rate": float, "trim_fraction": float, "byzantine_sites": int,
                    "proximal_mu": float, "dp_noise_multiplier": float, "dp_clip_norm": float, "model_kind": str,
                    "hidden_units": int, "local_epochs": int, "learning_rate": float, "batch_size": int, "quorum": int}


class Command(BaseCommand):
    help = ("Run a federation headless (server, worker, one agent per site) on the demo data or your own site CSVs, "
            "and compare federated, single-site and central ROC AUC on held-out rows.")

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--rounds", type=int, default=20, help="training rounds (default 20)")
        parser.add_argument("--json", action="store_true", help="end with one JSON line of the figures")
        parser.add_argument("--timeout", type=float, default=900, help="seconds to wait for the rounds")
        data = parser.add_argument_group("your own data (default: the demo's breast cancer partitions)")
        data.add_argument("--data-dir", type=Path, help="a folder with one CSV per site; the site code is the file "
                                                        "name without .csv and a leading site_")
        data.add_argument("--label", default=demo_data.LABEL, help="the 0/1 label column (default: target)")
        held = data.add_mutually_exclusive_group()
        held.add_argument("--test-csv", type=Path, help="held-out test rows no site trains on (same columns)")
        held.add_argument("--holdout-fraction", type=float, help="without --test-csv: the share of each site's rows "
                                                                 "held out, stratified, before training (default 0.2)")
        protocol = parser.add_argument_group("the study's protocol (default: the demo's: FedAvg, logistic regression)")
        protocol.add_argument("--strategy", choices=Strategy.values)
        protocol.add_argument("--model", dest="model_kind", choices=ModelKind.values)
        for option, kind in PROTOCOL_OPTIONS.items():
            if option not in ("strategy", "model_kind"):
                protocol.add_argument(f"--{option.replace('_', '-')}", type=kind)
        protocol.add_argument("--secure-aggregation", action="store_true",
                              help="the sites send masked inputs only (SecAgg+): the coordinator learns their sum, "
                                   "never one update; no statistics round (it would send sums in the clear)")
        run = parser.add_argument_group("the run")
        run.add_argument("--seed", type=int, default=0,
                         help="the held-out split, the agents' validation splits and batch order, and the reference "
                              "models (default 0); never differential-privacy noise, which comes from the OS")
        run.add_argument("--port", type=int, default=0, help="the server's port (default: a free one)")

    def handle(self, *args: Any, **options: Any) -> None:
        rounds, seed = options["rounds"], options["seed"]
        if rounds < 1:
            raise CommandError("--rounds must be at least 1.")
        stamp = timezone.now()
        data = _federation_data(options, demo.demo_dir() / "runs" / f"{stamp:%Y%m%d-%H%M%S-%f}")
        protocol = {key: options[key] for key in PROTOCOL_OPTIONS if options.get(key) is not None}
        protocol.update(label_column=data.label, num_features=data.num_features, feature_names=data.feature_names)
        if options["secure_aggregation"]:
            protocol.update(secure_aggregation=True,
                            quorum=max(protocol.get("quorum", 3), 3))
        if protocol.get("quorum", 1) > len(data.files):
            raise CommandError(f"--quorum {protocol['quorum']} is more than the {len(data.files)} sites.")
        demo.interrupt_on_sigterm()
        call_command("migrate", verbosity=0)
        call_command("seed_demo", stdout=io.StringIO())
        try:
            study = federation_study(title=f"Headless federation {stamp:%Y-%m-%d %H:%M:%S}", rounds=rounds,
                                     site_codes=sorted(data.files), **protocol)
        except LookupError as exc:  # a demo database seeded by an older version
            raise CommandError(str(exc)) from exc
        except DomainError as exc:
            raise CommandError(f"The study's protocol was refused: {exc.message}") from exc
        except ValidationError as exc:
            raise CommandError(f"The study's protocol was refused: {' '.join(exc.messages)}") from exc
        tokens = demo.ensure_tokens(sorted(data.files))
        logs = Path(demo.demo_dir()) / "logs" / f"study{study.pk}"
        port = options["port"] or demo.free_port()
        processes = [demo.start_server(port, logs / "server.log")]
        processes += demo.start_agents(f"http://127.0.0.1:{port}", tokens, data.files, logs, poll=0.5,
                                       studies=[study.pk], seed=seed)
        self.stdout.write(f"Study {study.pk} ({rounds} rounds, {study.get_strategy_display()}): server on port {port}, "
                          f"worker, {len(tokens)} agents; logs in {logs}")
        try:
            # The worker (which opens rounds) starts once every site's agent has registered its data set, so the
            # first round counts every site, not only those whose agents happened to start first.
            self._wait_for_registrations(study, len(tokens), options["timeout"], processes, logs)
            processes.append(demo.start_worker(logs / "worker.log", tick_seconds=1))
            self._wait(study, rounds, options["timeout"], processes, logs)
        finally:
            demo.stop(processes)
        figures = self._figures(study, data, seed)
        self._report(figures)
        if options["json"]:
            self.stdout.write(_json_line(figures))

    def _wait_for_registrations(self, study: Study, sites: int, timeout: float, processes: list, logs: Path) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            _stop_if_dead(processes, logs)
            registered = DatasetRegistration.objects.filter(study=study).values("site").distinct().count()
            if registered >= sites:
                self.stdout.write(f"  {registered} sites registered their data sets")
                return
            time.sleep(0.5)
        raise CommandError(f"Timed out after {timeout:.0f} s waiting for the agents to register their data sets; "
                           f"see the logs in {logs}")

    def _wait(self, study: Study, rounds: int, timeout: float, processes: list, logs: Path) -> None:
        """Until the training rounds and the evaluation of the final model have closed."""
        deadline, reported = time.monotonic() + timeout, 0
        while time.monotonic() < deadline:
            _stop_if_dead(processes, logs)
            done = Round.objects.filter(study=study, kind=RoundKind.TRAINING, status=RoundStatus.CLOSED).count()
            stuck = Round.objects.filter(study=study, status__in=[RoundStatus.BLOCKED, RoundStatus.FAILED]).first()
            if stuck:
                raise CommandError(f"Round {stuck.number} {stuck.get_status_display().lower()}: {stuck.status_reason}")
            if done > reported:
                # A closed round's sites all evaluated the model it trained from: v(done - 1) is complete.
                self.stdout.write(f"  round {done}/{rounds} closed{_evaluation(study, done - 1)}")
                reported = done
            if Round.objects.filter(study=study, kind=RoundKind.EVALUATION, status=RoundStatus.CLOSED).exists():
                self.stdout.write(f"  final model evaluated by the sites{_evaluation(study, done)}")
                return
            time.sleep(0.5)
        raise CommandError(f"Timed out after {timeout:.0f} s with {reported} of {rounds} rounds closed.")

    def _figures(self, study: Study, data: demo.FederationData, seed: int) -> dict[str, Any]:
        """ROC AUC on the held-out test split: federated, each site alone, and central; and the final model's
        AUC over the sites' own validation splits (from their score histograms)."""
        study.refresh_from_db()
        protocol = {field: getattr(study, field) for field in AGENT_PROTOCOL_FIELDS}
        epochs = study.rounds * study.local_epochs  # as many passes over its data as a site made in the federation
        final = latest_version(study)
        standardization = getattr(study, "standardization", None)
        global_std = {"features": standardization.features, "mean": standardization.mean,
                      "std": standardization.std} if standardization else None
        if global_std is None and study.secure_aggregation:
            # Each site standardized with its own figures; the test rows, with those of all training rows.
            global_std = agent_data.own_standardization(agent_data.pooled(list(data.train.values())))
        federated = demo_data.evaluate(version_tensors(final), data.test, protocol,
                                       standardization=global_std)["auc"]
        site_aucs = {code: _alone(rows, protocol, epochs, data.test, seed) for code, rows in sorted(data.train.items())}
        central = _alone(agent_data.pooled(list(data.train.values())), protocol, epochs, data.test, seed)
        validation = final.evaluation.get("global") or {}
        return {"study_id": study.pk, "rounds": study.rounds, "strategy": study.strategy, "seed": seed,
                "federated_auc": federated, "central_auc": central, "site_aucs": site_aucs,
                "mean_site_auc": sum(site_aucs.values()) / len(site_aucs), "test_examples": len(data.test),
                "final_version": final.number, "final_validation_auc": validation.get(VAL_AUC),
                "final_validation_examples": validation.get(VAL_EXAMPLES)}

    def _report(self, figures: dict[str, Any]) -> None:
        self.stdout.write(f"\nROC AUC on the held-out test split ({figures['test_examples']} rows no site trained on):")
        self.stdout.write(f"  federated model ({figures['rounds']} rounds, {figures['strategy']}) "
                          f"{figures['federated_auc']:.4f}")
        for code, auc in figures["site_aucs"].items():
            self.stdout.write(f"  {code:<8} own data only          {auc:.4f}")
        self.stdout.write(f"  mean single-site model          {figures['mean_site_auc']:.4f}")
        self.stdout.write(f"  central model (all data pooled) {figures['central_auc']:.4f}")
        beats = figures["federated_auc"] > figures["mean_site_auc"]
        close = figures["central_auc"] - figures["federated_auc"] <= 0.02
        self.stdout.write(f"  federated beats the mean single-site model: {'yes' if beats else 'NO'}; "
                          f"within 0.02 of central: {'yes' if close else 'NO'}")
        if figures["final_validation_auc"] is not None:
            self.stdout.write(f"Final model v{figures['final_version']} on the sites' validation splits "
                              f"({figures['final_validation_examples']} rows, federated ROC): AUC "
                              f"{figures['final_validation_auc']:.4f}")


def _stop_if_dead(processes: list, logs: Path) -> None:
    dead = [process for process in processes if process.poll() is not None]
    if dead:
        raise CommandError(f"A federation process stopped (exit {dead[0].returncode}): "
                           f"{' '.join(map(str, dead[0].args))[:200]}; see the logs in {logs}")


def _federation_data(options: dict[str, Any], run_dir: Path) -> demo.FederationData:
    """The demo partitions, or the site CSVs of `--data-dir` with their held-out test split."""
    folder, test_csv, holdout = options["data_dir"], options["test_csv"], options["holdout_fraction"]
    try:
        if folder is None:
            if test_csv is not None or holdout is not None or options["label"] != demo_data.LABEL:
                raise CommandError("--label, --test-csv and --holdout-fraction go with --data-dir.")
            return demo.demo_federation(options["seed"], out=run_dir)
        return demo.own_federation(folder, label=options["label"], out=run_dir, seed=options["seed"],
                                   test_csv=test_csv, holdout=0.2 if holdout is None else holdout)
    except agent_data.DataError as exc:
        raise CommandError(str(exc)) from exc


def _alone(rows: agent_data.Dataset, protocol: dict[str, Any], epochs: int, test: agent_data.Dataset,
           seed: int) -> float:
    """A model trained on `rows` only (standardized with their own statistics), scored on the test split."""
    own = agent_data.standardization_of(rows)
    state = demo_data.train_local(rows, protocol, epochs, seed=seed, standardization=own)
    return demo_data.evaluate(state, test, protocol, standardization=own)["auc"]


def _evaluation(study: Study, number: int) -> str:
    """The validation AUC across the sites of model version `number` (from their score histograms)."""
    version = ModelVersion.objects.filter(study=study, number=number).first()
    auc = (version.evaluation.get("global") or {}).get(VAL_AUC) if version else None
    return f"; model v{number}: validation AUC across the sites {auc:.3f}" if auc is not None else ""


def _json_line(figures: dict[str, Any]) -> str:
    return json.dumps(figures, sort_keys=True)
