"""Studies' own live events: governance changes and the gate's verdict. Their kinds (`studies.choices.EventKind`),
the shape of each payload and the sentence the feed shows; registered with `studies.event_registry` by
`StudiesConfig.ready()`. (Round and update events are aggregation's: `aggregation.events`.)"""

from typing import NotRequired, TypedDict

from studies import event_registry
from studies.choices import EventKind
from studies.event_registry import Payload


class CheckPayload(TypedDict):
    """One gate check (`studies.governance.Check.as_dict`)."""

    name: str
    passed: bool
    reason: str
    site_id: int | None
    site: str
    expires_at: str | None


class GatePayload(TypedDict):
    """The gate's verdict (`studies.governance.GateResult.as_dict`)."""

    study_id: int
    action: str
    moment: str
    as_of: bool  # read from the records' history as they stood at `moment` (never, for a live verdict)
    allowed: bool
    eligible_site_ids: list[int]
    checks: list[CheckPayload]


class GateEvaluated(TypedDict):
    trigger: str
    gate: GatePayload


class ParticipationChanged(TypedDict):
    site_id: int
    site: str
    before: str | None
    after: str
    reason: str
    by: str


class StudyChanged(TypedDict):
    before: str
    after: str
    reason: NotRequired[str]


class ApprovalChanged(TypedDict):
    role: str
    decision: str
    by: str
    status: str
    reason: NotRequired[str]


class GovernanceChanged(TypedDict):
    """A data use agreement published or signed, a DPIA step, an ethics approval recorded, a protocol reviewed."""

    what: str
    change: str
    version: NotRequired[int]
    site_id: NotRequired[int]
    site: NotRequired[str]
    status: NotRequired[str]
    valid_until: NotRequired[str | None]


class GovernanceExpired(TypedDict):
    checks: list[CheckPayload]


PAYLOADS = {
    EventKind.GATE_EVALUATED: GateEvaluated,
    EventKind.PARTICIPATION_CHANGED: ParticipationChanged,
    EventKind.STUDY_CHANGED: StudyChanged,
    EventKind.APPROVAL_CHANGED: ApprovalChanged,
    EventKind.GOVERNANCE_CHANGED: GovernanceChanged,
    EventKind.GOVERNANCE_EXPIRED: GovernanceExpired,
}

CHANGED_WHAT = {"agreement": "Data use agreement", "dpia": "DPIA", "ethics": "Ethics approval",
                "protocol_review": "Protocol", "dataset": "Data set"}


def _because(d: Payload) -> str:
    return f" ({d['reason']})" if d.get("reason") else ""


def _gate_evaluated(d: Payload) -> str:
    gate = d.get("gate") or {}
    checks = gate.get("checks") or []
    sites = len({c["site_id"] for c in checks if c.get("site_id") is not None})
    return (f"Gate checked after {d.get('trigger')}: {len(gate.get('eligible_site_ids') or [])} of {sites}"
            f" sites eligible; rounds {'may' if gate.get('allowed') else 'may not'} run.")


def _governance_changed(d: Payload) -> str:
    return (f"{CHANGED_WHAT.get(d.get('what'), d.get('what'))} {d.get('change')}"
            + (f" v{d['version']}" if d.get("version") else "")
            + (f" by {d['site']}" if d.get("site") else "") + ".")


SENTENCES = {
    EventKind.GATE_EVALUATED: _gate_evaluated,
    EventKind.PARTICIPATION_CHANGED: lambda d: (f"{d.get('site')}'s participation: {d.get('before') or 'none'} → "
                                                f"{d.get('after')}{_because(d)}, by {d.get('by')}."),
    EventKind.STUDY_CHANGED: lambda d: f"The study went from {d.get('before')} to {d.get('after')}{_because(d)}.",
    EventKind.APPROVAL_CHANGED: lambda d: (f"{str(d.get('role', '')).upper()} approval {d.get('decision')} by "
                                           f"{d.get('by')}{_because(d)}."),
    EventKind.GOVERNANCE_CHANGED: _governance_changed,
    EventKind.GOVERNANCE_EXPIRED: lambda d: "Lapsed: " + " ".join(c.get("reason", "") for c in d.get("checks", [])),
}

TONES = {
    # A gate verdict by whether rounds may run.
    EventKind.GATE_EVALUATED: lambda d: "good" if (d.get("gate") or {}).get("allowed") else "bad",
    EventKind.PARTICIPATION_CHANGED: "info",
    EventKind.STUDY_CHANGED: "info",
    EventKind.APPROVAL_CHANGED: "info",
    EventKind.GOVERNANCE_CHANGED: "info",
    EventKind.GOVERNANCE_EXPIRED: "bad",
}


def register() -> None:
    event_registry.register(EventKind, payloads=PAYLOADS, sentences=SENTENCES, tones=TONES)
