"""What the round tests share: a governed active study with two agents, rounds opened through the real
services, update bytes made from the base model, and the check that a refused submission stored nothing.

The fixtures built from these helpers are in conftest.py files: `fed`, `model_store` (tensors in a temporary
folder; autouse under tests/aggregation) and `no_broker` in tests/conftest.py.
"""

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch
from django.conf import settings as django_settings

from aggregation.events import RoundEventKind
from aggregation.models import Evaluation, ModelVersion, Round, SiteStatistics, Standardization, Update
from aggregation.services import evaluation_submit, round_open_next, update_submit
from aggregation.storage import version_tensors
from consortium.errors import DomainError, NotFound
from consortium.federated import codec
from consortium.federated.metrics import score_histogram
from sites.agents import AgentPrincipal
from sites.models import Site
from sites.services import agent_token_create
from studies.models import Participation, Study
from tests.base import Personas, active_study, appoint_site_admin
from tests.support import Refusal, refused

# Every aggregation table: equal snapshots mean a refused request stored nothing.
AGGREGATION = (Round, Update, ModelVersion, SiteStatistics, Standardization, Evaluation)

GOOD_METRICS = {"train_loss": 0.5, "val_loss": 0.55, "val_accuracy": 0.8, "val_auc": 0.85, "val_examples": 20,
                "training_seconds": 1.5}




def evaluation_metrics(scores: list[float], labels: list[int], **metrics: Any) -> dict[str, Any]:
    """A site's evaluation of a model as the agent sends it: loss, accuracy, AUC, rows and the score histogram."""
    return {"val_loss": 0.3, "val_accuracy": 0.9, "val_auc": 0.95, "val_examples": len(scores),
            "score_histogram": score_histogram(scores, labels), **metrics}


# Twenty validation rows, both classes, ranked perfectly.
GOOD_EVALUATION = evaluation_metrics([0.1] * 10 + [0.9] * 10, [0] * 10 + [1] * 10, val_auc=1.0)


@dataclass
class Federation:
    """An active study (no statistics round, four features, quorum 2) and one agent per site."""

    p: Personas
    study: Study
    agent_a: AgentPrincipal
    agent_b: AgentPrincipal
    plaintext_a: str
    plaintext_b: str

    def participation(self, site: Site) -> Participation:
        return Participation.objects.get(study=self.study, site=site)


def federation(p: Personas) -> Federation:
    """The `fed` fixture (tests/conftest.py): a governed study and an agent for each of its two sites."""
    study = governed_study(p)
    (agent_a, plaintext_a), (agent_b, plaintext_b) = agent_for(p, p.site_a), agent_for(p, p.site_b)
    return Federation(p, study, agent_a, agent_b, plaintext_a, plaintext_b)


def governed_study(p: Personas, **protocol: Any) -> Study:
    """An active, fully governed study of sites A and B without a statistics round."""
    return active_study(p, **{"federated_statistics": False, "num_features": 4, "quorum": 2, **protocol})


def agent_for(p: Personas, site: Site, name: str = "Agent next to the data") -> tuple[AgentPrincipal, str]:
    """An agent principal for `site` through a token its admin created; also the token's plaintext."""
    token, plaintext = agent_token_create(actor=p.site_admin_of(site), site=site, name=name)
    return AgentPrincipal(token), plaintext


def third_site(p: Personas) -> Site:
    """Site C, administered by site B's admin (so `govern_site` and `agent_for` can act for it)."""
    site = Site.objects.create(name="Karolinska", code="ki", city="Stockholm", country="SE")
    appoint_site_admin(p.admin, site, p.site_b_admin)
    return site


def three_site_study(p: Personas, site_c: Site, **protocol: Any) -> Study:
    """Like `governed_study`, with a third governed site."""
    return active_study(p, sites=(p.site_a, p.site_b, site_c),
                        **{"federated_statistics": False, "num_features": 4, "quorum": 2, **protocol})


def three_site_round(p: Personas) -> tuple[Study, Round, Site]:
    """The first round of a fresh study of sites A, B and C (`third_site`), and site C."""
    site_c = third_site(p)
    study = three_site_study(p, site_c, title="Three sites")
    return study, open_round(study), site_c


def open_round(study: Study) -> Round:
    round_ = round_open_next(study_id=study.pk)
    assert round_ is not None, "the round did not open"
    return round_


def base_tensors(round_: Round) -> dict[str, torch.Tensor]:
    return version_tensors(round_.base_version)


def update_tensors(round_: Round, *, seed: int = 1, scale: float = 0.01) -> dict[str, torch.Tensor]:
    """The round's base model plus small deterministic noise: what a site sends after training."""
    generator = torch.Generator().manual_seed(seed)
    return {name: tensor + scale * torch.randn(tensor.shape, generator=generator)
            for name, tensor in base_tensors(round_).items()}


def update_bytes(round_: Round, *, seed: int = 1) -> bytes:
    return codec.encode(update_tensors(round_, seed=seed))


def submit(agent: AgentPrincipal, round_: Round, *, body: bytes | None = None, seed: int | None = None,
           num_examples: int = 10, metrics: dict[str, Any] | None = None, key: str | None = None,
           round_number: int | None = None, base_version: int | None = None) -> tuple[Update, bool]:
    """Submit an update as `agent` (by default: valid, made from the base model, seeded by the site)."""
    seed = agent.site_id if seed is None else seed
    return update_submit(
        actor=agent, round_id=round_.pk, body=update_bytes(round_, seed=seed) if body is None else body,
        round_number=round_.number if round_number is None else round_number,
        base_version=round_.base_version.number if base_version is None else base_version,
        num_examples=num_examples, metrics=dict(GOOD_METRICS) if metrics is None else metrics,
        idempotency_key=key or f"key-{agent.site_id}-{round_.number}-{seed}",
    )


def send_evaluation(agent: AgentPrincipal, round_: Round, *, metrics: dict[str, Any] | None = None,
                    round_number: int | None = None, base_version: int | None = None) -> Evaluation:
    """Submit the site's evaluation of an evaluation round's model as `agent` (by default: valid)."""
    return evaluation_submit(
        actor=agent, round_id=round_.pk, round_number=round_.number if round_number is None else round_number,
        base_version=round_.base_version.number if base_version is None else base_version,
        metrics=dict(GOOD_EVALUATION) if metrics is None else metrics)


def aggregation_rows() -> dict[str, list[dict[str, Any]]]:
    return {model._meta.label: list(model.objects.order_by("pk").values()) for model in AGGREGATION}


def stored_files(kind: str = "updates") -> list[str]:
    root = Path(django_settings.MODEL_STORE) / kind
    return sorted(str(path) for path in root.rglob("*")) if root.exists() else []


@contextmanager
def rejected(error: type[DomainError], match: str, *, code: str, status: int,
             action: str = "aggregation.update.submit") -> Iterator[Refusal]:
    """The block must be refused with `error` (its `code` and HTTP `status`, message matching `match`),
    store no row and no tensor file, and leave exactly one audit event: the denial named `action`, which
    for a submission also names its round."""
    rows, files = aggregation_rows(), stored_files()
    # A refused submission is shown on the study's dashboard; a 404 names no study to show it on.
    submission = action in ("aggregation.update.submit", "aggregation.statistics.submit",
                            "aggregation.evaluation.submit")
    published = (RoundEventKind.UPDATE_REFUSED,) if submission and not issubclass(error, NotFound) else ()
    with refused(error, match, action=action, published=published,
                 context=frozenset({"round_id", "round"}) if submission else frozenset()) as outcome:
        yield outcome
    assert outcome.error.code == code and outcome.error.status == status, (outcome.error.code, outcome.error.status)
    if submission:  # the denial names the round the agent sent to, by id and (when it exists) by number
        named = outcome.event.details
        assert named["round"] == Round.objects.filter(pk=named["round_id"]).values_list("number", flat=True).first()
    assert aggregation_rows() == rows, "a refused request changed rounds, updates or model versions"
    assert stored_files() == files, "a refused update was written to the model store"


def record_enqueued(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Replace `aggregate_round.delay` (the broker) by a recorder; returns the round ids it was given."""
    from aggregation.tasks import aggregate_round

    calls: list[int] = []
    monkeypatch.setattr(aggregate_round, "delay", lambda round_id: calls.append(round_id))
    return calls
