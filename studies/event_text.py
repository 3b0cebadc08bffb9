"""Each live event as a sentence a PI or site admin reads. The feed on first load and every
websocket message (`StudyEvent.as_message`, its "text") say it the same way, from here only."""

from typing import Any

from studies.choices import EventKind


def _num(value: Any, digits: int = 3) -> str:
    return "—" if value is None else f"{value:.{digits}f}" if isinstance(value, float) else str(value)


def _round_sentence(kind: str, d: dict[str, Any]) -> str | None:
    r = d.get("round")
    sentences = {
        EventKind.ROUND_OPENED: lambda: f"Round {r} opened{_opened_what(d)}: {d.get('eligible', 0)} sites eligible.",
        EventKind.UPDATE_RECEIVED: lambda: (f"{d.get('site')} submitted its update to round {r}"
                                            + (f" ({d['num_examples']} examples)" if d.get("num_examples") else "")
                                            + f": {d.get('submitted')} of {d.get('eligible')} eligible sites in."),
        EventKind.STATISTICS_RECEIVED: lambda: (f"{d.get('site')} sent its statistics for round {r}: "
                                                f"{d.get('submitted')} of {d.get('eligible')} eligible sites in."),
        EventKind.EVALUATION_RECEIVED: lambda: (f"{d.get('site')} evaluated the final model v{d.get('version')} "
                                                f"for round {r}: {d.get('submitted')} of {d.get('eligible')} "
                                                "eligible sites in."),
        EventKind.UPDATE_REFUSED: lambda: f"An update from {d.get('site') or 'a site'} was refused: {d.get('reason')}",
        EventKind.UPDATE_EXCLUDED: lambda: f"{d.get('site')}'s update to round {r} was excluded: {d.get('reason')}",
        EventKind.AGGREGATION_STARTED: lambda: f"Aggregating round {r}: {d.get('reason')}",
        EventKind.AGGREGATION_FINISHED: lambda: (f"Round {r} aggregated into model v{d.get('version')} from "
                                                 f"{len(d.get('sites') or [])} sites in "
                                                 f"{_num(d.get('duration_seconds'), 2)} s."),
        EventKind.ROUND_METRICS: lambda: (f"Model v{d.get('evaluated_version')} on the sites' held-out data: "
                                          + (d["global_suppressed"] if d.get("global_suppressed") else
                                             f"AUC {_num((d.get('global') or {}).get('val_auc'))}, accuracy "
                                             f"{_num((d.get('global') or {}).get('val_accuracy'))}.")),
        EventKind.ROUND_CLOSED: lambda: f"Round {r} closed: {d.get('reason')}",
        EventKind.ROUND_BLOCKED: lambda: f"Round {r} blocked: {d.get('reason')}",
        EventKind.ROUND_FAILED: lambda: f"Round {r} failed: {d.get('reason')}",
    }
    return sentences[kind]() if kind in sentences else None


def _opened_what(d: dict[str, Any]) -> str:
    if d.get("kind") == "evaluation":
        return f" to evaluate the final model v{d.get('base_version')} (no training)"
    return f" from model v{d['base_version']}" if d.get("base_version") is not None else " (federated statistics)"


def _governance_sentence(kind: str, d: dict[str, Any]) -> str | None:
    gate = d.get("gate") or {}
    checks = gate.get("checks") or []
    because = f" ({d['reason']})" if d.get("reason") else ""
    sentences = {
        EventKind.GATE_EVALUATED: lambda: (f"Gate checked after {d.get('trigger')}: "
                                           f"{len(gate.get('eligible_site_ids') or [])} of "
                                           f"{len({c['site_id'] for c in checks if c.get('site_id') is not None})}"
                                           f" sites eligible; rounds {'may' if gate.get('allowed') else 'may not'}"
                                           " run."),
        EventKind.PARTICIPATION_CHANGED: lambda: (f"{d.get('site')}'s participation: {d.get('before') or 'none'} → "
                                                  f"{d.get('after')}{because}, by {d.get('by')}."),
        EventKind.STUDY_CHANGED: lambda: f"The study went from {d.get('before')} to {d.get('after')}{because}.",
        EventKind.APPROVAL_CHANGED: lambda: (f"{str(d.get('role', '')).upper()} approval {d.get('decision')} by "
                                             f"{d.get('by')}{because}."),
        EventKind.GOVERNANCE_CHANGED: lambda: (f"{CHANGED_WHAT.get(d.get('what'), d.get('what'))} {d.get('change')}"
                                               + (f" v{d['version']}" if d.get("version") else "")
                                               + (f" by {d['site']}" if d.get("site") else "") + "."),
        EventKind.GOVERNANCE_EXPIRED: lambda: "Lapsed: " + " ".join(c.get("reason", "") for c in d.get("checks", [])),
    }
    return sentences[kind]() if kind in sentences else None


CHANGED_WHAT = {"agreement": "Data use agreement", "dpia": "DPIA", "ethics": "Ethics approval"}


def event_sentence(kind: str, data: dict[str, Any]) -> str:
    """What happened, in a sentence a PI or site admin reads."""
    text = _round_sentence(kind, data) or _governance_sentence(kind, data)
    return text if text is not None else dict(EventKind.choices).get(kind, kind)


BAD_KINDS = {EventKind.UPDATE_REFUSED, EventKind.UPDATE_EXCLUDED, EventKind.ROUND_BLOCKED, EventKind.ROUND_FAILED,
             EventKind.GOVERNANCE_EXPIRED}
GOOD_KINDS = {EventKind.UPDATE_RECEIVED, EventKind.STATISTICS_RECEIVED, EventKind.EVALUATION_RECEIVED,
              EventKind.AGGREGATION_FINISHED, EventKind.ROUND_METRICS, EventKind.ROUND_CLOSED}


def event_tone(kind: str, data: dict[str, Any]) -> str:
    """"good", "bad" or "info": how the feed colours the event (a gate verdict by whether rounds may run)."""
    if kind == EventKind.GATE_EVALUATED:
        return "good" if (data.get("gate") or {}).get("allowed") else "bad"
    return "bad" if kind in BAD_KINDS else "good" if kind in GOOD_KINDS else "info"
