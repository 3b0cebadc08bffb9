"""Writing and verifying the hash-chained audit log.

Every service calls `record` inside the transaction that makes its change, so
the event and the change commit or roll back together. Appends are serialised
(an advisory lock on PostgreSQL; SQLite's IMMEDIATE transactions already take
the write lock) so that sequence numbers stay gapless and each event chains to
the one before it. That lock comes last in the one lock order (`consortium.locks`).
"""

import functools
import json
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any, ParamSpec, TypeVar

from django.core.exceptions import ValidationError
from django.db import connection, models, transaction
from django.utils import timezone

from consortium.audit.models import AuditActorKind, AuditEvent, AuditOutcome
from consortium.errors import DomainError
from consortium.evidence.canonical import GENESIS_HASH, event_hash, format_timestamp

P = ParamSpec("P")
R = TypeVar("R")

_CHAIN_LOCK_KEY = 0x0C0A5D17  # any constant: names the audit chain's advisory lock


@dataclass(frozen=True)
class ActorRef:
    """Who acted: a user, a site agent or the system itself."""

    kind: str
    label: str
    user_id: int | None = None


SYSTEM = ActorRef(kind=AuditActorKind.SYSTEM, label="system")


def actor_ref(actor: Any) -> ActorRef:
    """Normalise what services receive as `actor` (a user, an agent credential, None) to an ActorRef."""
    if actor is None:
        return SYSTEM
    if isinstance(actor, ActorRef):
        return actor
    if hasattr(actor, "audit_actor"):
        return actor.audit_actor()
    if getattr(actor, "is_authenticated", False):
        return ActorRef(kind=AuditActorKind.USER, label=actor.get_username(), user_id=actor.pk)
    return ActorRef(kind=AuditActorKind.USER, label="anonymous")


def _object_fields(target: Any) -> dict[str, str]:
    if target is None:
        return {"object_type": "", "object_id": "", "object_repr": ""}
    if isinstance(target, models.Model):
        return {
            "object_type": target._meta.label_lower,
            "object_id": str(target.pk),
            "object_repr": str(target)[:300],
        }
    return {"object_type": type(target).__name__, "object_id": "", "object_repr": str(target)[:300]}


def _id_of(value: Any) -> int | None:
    if value is None:
        return None
    return value.pk if isinstance(value, models.Model) else int(value)


def to_json(value: Any) -> Any:
    """Make details JSON-native once, so what is stored is exactly what is hashed."""
    return json.loads(json.dumps(value, default=str, sort_keys=True))


def canonical_fields(event: AuditEvent) -> dict[str, Any]:
    """The event's hashed fields as plain data (`consortium.evidence.canonical.HASHED_FIELDS`)."""
    return {
        "seq": event.seq,
        "created_at": format_timestamp(event.created_at),
        "actor_kind": event.actor_kind,
        "actor_user_id": event.actor_user_id,
        "actor_label": event.actor_label,
        "action": event.action,
        "outcome": event.outcome,
        "object_type": event.object_type,
        "object_id": event.object_id,
        "object_repr": event.object_repr,
        "study_id": event.study_id,
        "site_id": event.site_id,
        "details": event.details,
        "prev_hash": event.prev_hash,
    }


def export_record(event: AuditEvent) -> dict[str, Any]:
    """An event as every export carries it: the hashed fields, then its hash (`EXPORT_FIELDS`)."""
    return {**canonical_fields(event), "hash": event.hash}


def compute_hash(event: AuditEvent) -> str:
    """The event's chain hash, by the one Django-free definition the offline verifier also uses."""
    return event_hash(canonical_fields(event))


def lock_chain() -> None:
    """Serialise appends until commit (PostgreSQL; SQLite's IMMEDIATE transactions already do).

    The last level of the one lock order (`consortium.locks`): take every row lock before the first
    `record` or `publish` of a transaction."""
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_advisory_xact_lock(%s)", [_CHAIN_LOCK_KEY])


def record(
    *,
    actor: Any,
    action: str,
    target: Any = None,
    study: Any = None,
    site: Any = None,
    details: dict[str, Any] | None = None,
    outcome: str = AuditOutcome.OK,
) -> AuditEvent:
    """Append one event to the chain, inside the caller's transaction."""
    ref = actor_ref(actor)
    with transaction.atomic(savepoint=False):
        lock_chain()
        last = AuditEvent.objects.order_by("-seq").values("seq", "hash").first()
        event = AuditEvent(
            seq=(last["seq"] + 1) if last else 1,
            created_at=timezone.now(),
            actor_kind=ref.kind,
            actor_user_id=ref.user_id,
            actor_label=ref.label[:200],
            action=action,
            outcome=outcome,
            study_id=_id_of(study),
            site_id=_id_of(site),
            details=to_json(details or {}),
            prev_hash=last["hash"] if last else GENESIS_HASH,
            **_object_fields(target),
        )
        event.hash = compute_hash(event)
        event.save(force_insert=True)
    return event


# A refusal's reason as stored and shown: long enough for any sentence a service writes, short enough that
# no input echoed into it can bloat the audit log, the live event log or every viewer's page.
MAX_REASON_CHARS = 1000


def bounded_reason(reason: str) -> str:
    """`reason`, cut to MAX_REASON_CHARS (an ellipsis marks the cut)."""
    return reason if len(reason) <= MAX_REASON_CHARS else reason[:MAX_REASON_CHARS - 1] + "…"


def record_denial(*, actor: Any, action: str, reason: str, **context: Any) -> AuditEvent:
    """Record a refused attempt in its own transaction (the attempt itself was rolled back)."""
    details = {"reason": bounded_reason(reason), **context.pop("details", {})}
    return record(actor=actor, action=action, outcome=AuditOutcome.DENIED, details=details, **context)


@dataclass(frozen=True)
class ChainReport:
    verified: int
    broken_seq: int | None = None
    problem: str = ""
    head_hash: str = GENESIS_HASH

    @property
    def intact(self) -> bool:
        return self.broken_seq is None


def verify_chain(events: Iterable[AuditEvent] | None = None) -> ChainReport:
    """Recompute the chain from the first event; report the first sequence number that does not fit."""
    rows: Iterator[AuditEvent] = iter(events if events is not None else AuditEvent.objects.order_by("seq").iterator())
    expected_seq, prev_hash, verified = 1, GENESIS_HASH, 0
    for event in rows:
        if event.seq != expected_seq:
            missing = event.seq > expected_seq
            problem = f"event #{expected_seq} is missing" if missing else f"event #{event.seq} is out of sequence"
            return ChainReport(verified, expected_seq if missing else event.seq, problem, prev_hash)
        if event.prev_hash != prev_hash:
            return ChainReport(verified, event.seq, "does not chain to the event before it", prev_hash)
        if compute_hash(event) != event.hash:
            return ChainReport(verified, event.seq, "its content does not match its hash", prev_hash)
        prev_hash, expected_seq, verified = event.hash, expected_seq + 1, verified + 1
    return ChainReport(verified, head_hash=prev_hash)


def audited_service(
    action: str, *, on_denial: Callable[[DomainError | ValidationError, dict[str, Any]], None] | None = None,
    denial_details: Callable[[dict[str, Any]], dict[str, Any]] | None = None,
) -> Callable[[Callable[P, R]], Callable[P, R]]:
    """Run a service in one transaction; if it refuses (DomainError, or a model's ValidationError),
    roll back and record the denial.

    The denial names `action` with outcome "denied" and the refusal's reason, and is
    written after the rollback so it survives it. Study and site come from the
    error, or from the service's `study`/`site`/`participation` arguments. `on_denial(error, kwargs)`
    runs in the denial's transaction (e.g. to tell a live dashboard that an update was refused);
    `denial_details(kwargs)` adds to the denial's details what the arguments alone do not say (e.g. the
    number of the round an id names).
    """

    def decorate(fn: Callable[P, R]) -> Callable[P, R]:
        @functools.wraps(fn)
        def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
            try:
                with transaction.atomic():
                    return fn(*args, **kwargs)
            except DomainError as exc:
                with transaction.atomic():
                    record_denial(
                        actor=kwargs.get("actor"),
                        action=action,
                        reason=exc.message,
                        target=exc.target if exc.target is not None else _first_model(kwargs),
                        study=exc.study if exc.study is not None else _context(kwargs, "study"),
                        site=exc.site if exc.site is not None else _context(kwargs, "site"),
                        details={"code": exc.code, **(denial_details(kwargs) if denial_details else {})},
                    )
                    if on_denial is not None:
                        on_denial(exc, kwargs)
                raise
            except ValidationError as exc:
                # A model's own validation (full_clean) refusing the input is a denied attempt too.
                with transaction.atomic():
                    record_denial(actor=kwargs.get("actor"), action=action, reason=_validation_reason(exc),
                                  target=_first_model(kwargs), study=_context(kwargs, "study"),
                                  site=_context(kwargs, "site"),
                                  details={"code": "validation_failed",
                                           **(denial_details(kwargs) if denial_details else {})})
                    if on_denial is not None:
                        on_denial(exc, kwargs)
                raise

        return wrapper

    return decorate


def _validation_reason(exc: ValidationError) -> str:
    if hasattr(exc, "error_dict"):
        return " ".join(f"{field}: {' '.join(messages)}" for field, messages in exc.message_dict.items())
    return " ".join(exc.messages)


def _first_model(kwargs: dict[str, Any]) -> models.Model | None:
    for key, value in kwargs.items():
        if key != "actor" and isinstance(value, models.Model):
            return value
    return None


def _context(kwargs: dict[str, Any], name: str) -> Any:
    """Find the study or site an attempt was about, directly or through the object acted on."""
    if kwargs.get(name) is not None:
        return kwargs[name]
    for key, value in kwargs.items():
        if key != "actor" and isinstance(value, models.Model) and hasattr(value, f"{name}_id"):
            return getattr(value, f"{name}_id")
    if name == "site" and not isinstance(kwargs.get("actor"), models.Model):
        return getattr(kwargs.get("actor"), "site_id", None)  # a site agent acts for its one site
    return None


def denial_reason(exc: DomainError | ValidationError) -> str:
    """The human reason of a refusal, whichever kind of error carried it (bounded, as the audit log keeps it)."""
    return bounded_reason(exc.message if isinstance(exc, DomainError) else _validation_reason(exc))
