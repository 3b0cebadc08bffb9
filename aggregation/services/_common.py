"""Shared steps of the round services: storage of tensors, locking (in the order of `consortium.locks`),
state moves, the agent's view."""

from pathlib import Path
from typing import Any

import torch
from django.conf import settings
from django.utils import timezone

from aggregation.audit_actions import ROUND_MOVES
from aggregation.choices import ROUND_TRANSITIONS, RoundStatus
from aggregation.models import ModelVersion, Round
from aggregation.services import _events
from consortium.audit import record
from consortium.errors import InvalidTransition, NotFound
from consortium.federated import codec
from consortium.locks import locked
from studies.locks import lock_study
from studies.models import Participation


def store(data: bytes, kind: str, study_id: int) -> tuple[str, str]:
    """Write safetensors bytes under the model store; returns (path relative to the store, SHA-256)."""
    path, digest = codec.write_file(data, Path(settings.MODEL_STORE) / kind / str(study_id))
    return str(path.relative_to(settings.MODEL_STORE)), digest


def stored_path(kind: str, study_id: int, digest: str) -> str:
    """Where `store` puts bytes of this SHA-256 (relative to the store), known before anything is written."""
    return str(Path(kind) / str(study_id) / codec.file_name(digest))


def load_bytes(relative: str) -> bytes:
    return (Path(settings.MODEL_STORE) / relative).read_bytes()


def absolute(relative: str) -> Path:
    return Path(settings.MODEL_STORE) / relative


def verified_bytes(version: ModelVersion) -> bytes:
    """A stored model version's file, after checking it still matches its recorded SHA-256."""
    data = load_bytes(version.path)
    if codec.sha256_hex(data) != version.sha256:
        raise RuntimeError(f"Stored model v{version.number} of study {version.study_id} does not match its SHA-256.")
    return data


def version_tensors(version: ModelVersion) -> dict[str, torch.Tensor]:
    """A stored model version's tensors (SHA-256 checked)."""
    data = verified_bytes(version)
    return codec.decode(data, expected=spec(version), max_bytes=len(data))


def spec(version: ModelVersion) -> codec.TensorSpec:
    return {name: (tuple(shape), dtype) for name, (shape, dtype) in version.spec.items()}


def lock_round(round_id: int) -> Round:
    """The round and its study under their row locks, study first (levels 1 and 2 of `consortium.locks`)."""
    study_id = Round.objects.filter(pk=round_id).values_list("study_id", flat=True).get()  # never changes
    study = lock_study(study_id)
    # `of`: PostgreSQL cannot lock the nullable side of the outer join to base_version.
    round_ = locked(Round.objects.select_related("base_version").filter(pk=round_id), of=("self",)).get()
    round_.study = study
    return round_


def lock_round_for_site(round_id: int, site_id: int, *, lock: bool = True) -> Round:
    """The round (with its study's and its own row lock unless `lock` is False), if the site takes or took
    part in its study; else 404."""
    study_id = Round.objects.filter(pk=round_id).values_list("study_id", flat=True).first()
    if study_id is None or not Participation.objects.filter(study_id=study_id, site_id=site_id).exists():
        raise NotFound("No such round.")
    if lock:
        return lock_round(round_id)
    return Round.objects.select_related("study", "base_version").get(pk=round_id)


def move_round(round_: Round, to: RoundStatus, *, actor: Any, reason: str = "", details: dict | None = None) -> None:
    """One round state step, audited; an illegal one is refused."""
    if to not in ROUND_TRANSITIONS[round_.status]:
        raise InvalidTransition(f"Round {round_.number} is {round_.get_status_display().lower()} and cannot become "
                                f"{RoundStatus(to).label.lower()}.", study=round_.study_id)
    before = round_.status
    round_.status, round_.status_reason = to, reason
    if to in (RoundStatus.CLOSED, RoundStatus.BLOCKED, RoundStatus.FAILED):
        round_.closed_at = timezone.now()
    if to == RoundStatus.AGGREGATING:
        # Dispatched now too: the task is sent when this commits (or runs in this very transaction).
        round_.aggregation_started_at = round_.aggregation_dispatched_at = timezone.now()
    round_.full_clean()
    round_.save()
    record(actor=actor, action=ROUND_MOVES[to], target=round_, study=round_.study_id,
           details={"round": round_.number, "kind": round_.kind, "before": before, "after": to, "reason": reason,
                    **(details or {})})
    _events.round_moved(round_, reason, details or {})
