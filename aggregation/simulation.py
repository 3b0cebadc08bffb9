"""A simulated consortium of many sites (`manage.py simulate`): the sites, their governance and agent tokens,
made through the services as in the demo, and the figures of a run read back from the rounds it produced.

The agents themselves are `sites.agent.swarm`: Django-free, over HTTP, like any hospital's agent.
"""

import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from django.utils import timezone

from aggregation.choices import RoundKind, RoundStatus
from aggregation.models import Round, Update
from sites.models import Site
from sites.services import agent_token_create
from studies.demo import demo_users, federation_study
from studies.models import Study

SITE_PREFIX = "sim"
FEATURES = 8
TOKEN_NAME = "simulated agent"


@dataclass(frozen=True)
class Simulation:
    study: Study
    tokens: dict[str, str]  # site code -> agent token (plaintext: it exists only in this run's memory)


def site_codes(count: int) -> list[str]:
    return [f"{SITE_PREFIX}{index:03d}" for index in range(1, count + 1)]


def simulation_create(*, sites: int, rounds: int, strategy: str = "fedavg", **protocol: Any) -> Simulation:
    """A fresh active study over `sites` simulated sites (registered when missing), each invited by the PI,
    granted, its DUA signed and ethics recorded by its own admin; DPIA and approvals as in the demo; and one
    new agent token per site, issued by that site's admin. Needs the demo consortium (`seed_demo`)."""
    codes = site_codes(sites)
    settings = {"model_kind": "logistic_regression", "num_features": FEATURES, "label_column": "target",
                "local_epochs": 1, "batch_size": 32, "learning_rate": 0.1, "quorum": max(1, sites // 2),
                "round_deadline_minutes": 30, **protocol}
    study = federation_study(title=f"Simulated federation of {sites} sites {timezone.now():%Y-%m-%d %H:%M:%S.%f}",
                             rounds=rounds, site_codes=codes, strategy=strategy, **settings)
    admins = demo_users() | {user.username: user for user in _site_admins(codes)}
    tokens = {}
    for site in Site.objects.filter(code__in=codes).order_by("code"):
        _, tokens[site.code] = agent_token_create(actor=admins[f"admin_{site.code}"], site=site, name=TOKEN_NAME)
    return Simulation(study=study, tokens=tokens)


def _site_admins(codes: Sequence[str]) -> list:
    from django.contrib.auth import get_user_model

    return list(get_user_model().objects.filter(username__in=[f"admin_{code}" for code in codes]))


def training_rounds_closed(study_id: int) -> int:
    return Round.objects.filter(study_id=study_id, kind=RoundKind.TRAINING, status=RoundStatus.CLOSED).count()


def stuck_round(study_id: int) -> Round | None:
    """A round of the study that blocked or failed: the run cannot finish."""
    return Round.objects.filter(study_id=study_id, status__in=[RoundStatus.BLOCKED, RoundStatus.FAILED]).first()


def run_figures(study_id: int) -> dict[str, Any]:
    """Per closed training round, from the coordinator's own timestamps: update ingest (updates per second from
    the first to the last update received) and the time from the last update received to the next round
    opened (aggregation, the model stored, the round closed and the next one opened)."""
    rounds = list(Round.objects.filter(study_id=study_id).order_by("number"))
    received: dict[int, list] = {}
    for round_id, at in Update.objects.filter(round__study_id=study_id).values_list("round_id", "received_at"):
        received.setdefault(round_id, []).append(at)
    ingest, to_next = [], []
    total_updates, total_window = 0, 0.0
    for current, following in zip(rounds, rounds[1:], strict=False):
        if current.kind != RoundKind.TRAINING or current.status != RoundStatus.CLOSED or current.pk not in received:
            continue
        times = sorted(received[current.pk])
        window = (times[-1] - times[0]).total_seconds()
        total_updates, total_window = total_updates + len(times), total_window + window
        if window > 0:
            ingest.append((len(times) - 1) / window)
        to_next.append((following.opened_at - times[-1]).total_seconds())
    return {
        "updates": total_updates,
        "updates_per_s": round(total_updates / total_window, 1) if total_window else None,
        "updates_per_s_p50_round": round(statistics.median(ingest), 1) if ingest else None,
        "last_submission_to_next_open_p50_s": _percentile(to_next, 50),
        "last_submission_to_next_open_p99_s": _percentile(to_next, 99),
        "rounds_measured": len(to_next),
    }


def _percentile(values: list[float], q: float) -> float | None:
    """Nearest-rank percentile (with few rounds, p99 is the worst round)."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, min(len(ordered), -(-len(ordered) * q // 100)))
    return round(ordered[int(rank) - 1], 3)
