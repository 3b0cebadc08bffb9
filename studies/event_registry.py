"""The kinds of event a study's live log carries, registered by the app that owns each kind.

Studies keeps the log and its broadcast (`studies.events`, `StudyEvent`); the kinds come from the apps:
studies registers its governance kinds (`studies.governance_events`), aggregation its round and update
kinds (`aggregation.events`), each from its AppConfig.ready(). A kind brings its label, the typed shape of
its payload (a TypedDict), the sentence people read in the feed and the tone the feed colours it with, so
the first page load and every websocket message say it the same way, from one place.
"""

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from django.db import models

Payload = dict[str, Any]
TONES = ("good", "bad", "info")


@dataclass(frozen=True)
class EventType:
    """One kind of event: its value in the log, its label, its payload's TypedDict, its sentence and tone."""

    kind: str
    label: str
    payload: type
    sentence: Callable[[Payload], str]
    tone: Callable[[Payload], str]


_TYPES: dict[str, EventType] = {}


def register(kinds: type[models.TextChoices], *, payloads: Mapping[str, type],
             sentences: Mapping[str, Callable[[Payload], str]], tones: Mapping[str, str | Callable[[Payload], str]]
             ) -> None:
    """Register every kind of `kinds`; each needs a payload type, a sentence and a tone ("good", "bad", "info",
    or a function of the payload). Registering the same kinds again (a second `ready()`) changes nothing."""
    for kind in kinds:
        missing = [what for what, table in (("payload", payloads), ("sentence", sentences), ("tone", tones))
                   if kind not in table]
        if missing:
            raise ValueError(f"Event kind {kind.value!r} has no {', '.join(missing)}.")
        tone = tones[kind]
        if isinstance(tone, str) and tone not in TONES:
            raise ValueError(f"Event kind {kind.value!r}: tone {tone!r} is not one of {TONES}.")
        known = _TYPES.get(kind.value)
        if known is not None and known.label != kind.label:
            raise ValueError(f"Event kind {kind.value!r} is registered twice.")
        _TYPES[kind.value] = EventType(kind.value, kind.label, payloads[kind], sentences[kind],
                                       (lambda _, fixed=tone: fixed) if isinstance(tone, str) else tone)


def event_types() -> dict[str, EventType]:
    return dict(_TYPES)


def choices() -> list[tuple[str, str]]:
    """The registered kinds as model field choices (`StudyEvent.kind`, evaluated when read)."""
    return [(event_type.kind, event_type.label) for event_type in _TYPES.values()]


def event_sentence(kind: str, data: Payload) -> str:
    """What happened, in a sentence a PI or site admin reads (an unknown kind reads as its value)."""
    event_type = _TYPES.get(kind)
    return event_type.sentence(data) if event_type else kind


def event_tone(kind: str, data: Payload) -> str:
    """"good", "bad" or "info": how the feed colours the event."""
    event_type = _TYPES.get(kind)
    return event_type.tone(data) if event_type else "info"


def number(value: Any, digits: int = 3) -> str:
    """A figure in a sentence: floats rounded, a missing one as a dash."""
    return "—" if value is None else f"{value:.{digits}f}" if isinstance(value, float) else str(value)
