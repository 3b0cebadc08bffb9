"""The live events' payloads are defined once (TypedDicts registered per kind): every key the dashboard's
JavaScript reads from an event is in its kind's definition, every kind it handles is registered, and the
gate's own dictionaries have the shape its events declare."""

import re
from datetime import UTC, datetime
from pathlib import Path

import pytest

from aggregation.events import PAYLOADS, RoundEventKind, SiteRoundFigures
from aggregation.services import model_download, round_aggregate
from consortium.federated.metric_keys import UPDATE_METRICS
from studies.choices import EventKind
from studies.event_registry import event_types
from studies.governance import Check, GateResult
from studies.governance_events import CheckPayload, GatePayload
from studies.models import StudyEvent
from tests.aggregation.support import GOOD_METRICS, open_round, submit

pytestmark = pytest.mark.usefixtures("no_broker")

SCRIPT = (Path(__file__).resolve().parents[2] / "static" / "js" / "dashboard.js").read_text()


def keys(payload: type) -> set[str]:
    return set(payload.__required_keys__ | payload.__optional_keys__)


def function_body(name: str) -> str:
    match = re.search(rf"\n  function {name}\([^)]*\) {{\n(.*?)\n  }}\n", SCRIPT, re.S)
    assert match, f"dashboard.js has no function {name}"
    return match.group(1)


def handlers() -> dict[str, str]:
    """Each event kind's handler in dashboard.js, with the helpers it hands the payload `d` to."""
    start = SCRIPT.index("  const handlers = {")
    block = SCRIPT[start:SCRIPT.index("\n  };\n", start)]
    parts = re.split(r'\n    "([a-z_.]+)": ', block)
    bodies = dict(zip(parts[1::2], parts[2::2], strict=True))
    for kind, body in bodies.items():
        named = re.fullmatch(r"\s*(\w+),?\s*", body)
        body = function_body(named.group(1)) if named else body
        bodies[kind] = body + "".join(function_body(helper) for helper in re.findall(r"\b(\w+)\(d\)", body))
    return bodies


def test_the_dashboard_handles_only_registered_kinds():
    handled = set(handlers())
    assert len(handled) > 10 and handled <= set(event_types())


def test_every_payload_key_the_dashboard_reads_is_in_its_kinds_definition():
    types = event_types()
    for kind, body in handlers().items():
        read = set(re.findall(r"\bd\.([a-z_]+)", body))
        assert read, kind
        assert read <= keys(types[kind].payload), (kind, sorted(read - keys(types[kind].payload)))


def test_the_nested_keys_the_dashboard_reads_are_defined_too():
    bodies = handlers()
    eligible_site = re.findall(r"\bs\.([a-z_]+)", bodies[RoundEventKind.ROUND_OPENED])
    assert eligible_site and set(eligible_site) <= keys(PAYLOADS[RoundEventKind.ROUND_OPENED].__annotations__[
        "eligible_sites"].__args__[0])
    per_site = re.findall(r"d\.sites\[id\]\.([a-z_]+)", bodies[RoundEventKind.ROUND_METRICS])
    assert per_site and set(per_site) <= keys(SiteRoundFigures)
    gate = re.findall(r"\bgate\.([a-z_]+)", function_body("renderGate"))
    assert gate and set(gate) <= keys(GatePayload)
    check = re.findall(r"\b(?:check|c)\.([a-z_]+)", function_body("checkItem") + function_body("renderGate"))
    assert check and set(check) <= keys(CheckPayload)


def test_the_message_fields_the_dashboard_reads_are_in_every_message():
    message = StudyEvent(study_id=1, seq=1, kind=EventKind.STUDY_CHANGED, payload={"before": "a", "after": "b"},
                         created_at=datetime.now(UTC)).as_message()
    read = set(re.findall(r"\bevent\.([a-z_]+)", SCRIPT)) - {"code"}  # a socket's close event has a code
    assert read and read <= set(message), sorted(read - set(message))


def test_the_gate_dictionaries_have_the_declared_shape():
    check = Check("quorum", True, "ok")
    gate = GateResult(1, "aggregate", datetime.now(UTC), (check,), ())
    assert set(check.as_dict()) == keys(CheckPayload)
    assert set(gate.as_dict()) == keys(GatePayload)


def test_a_round_metrics_payload_names_every_update_metric_per_site():
    assert set(UPDATE_METRICS) <= keys(SiteRoundFigures)


def test_a_rounds_events_carry_exactly_their_declared_payloads(fed):
    mark = StudyEvent.objects.filter(study=fed.study).count()
    round_ = open_round(fed.study)
    model_download(actor=fed.agent_a, round_id=round_.pk)
    base = {"val_auc": 0.7, "val_accuracy": 0.6, "val_loss": 0.65, "val_examples": 20}
    submit(fed.agent_a, round_, num_examples=30, metrics={**GOOD_METRICS, "base": base})
    submit(fed.agent_b, round_, num_examples=10, metrics={**GOOD_METRICS, "base": base})
    round_aggregate(round_id=round_.pk)

    types = event_types()
    events = list(StudyEvent.objects.filter(study=fed.study, seq__gt=mark).order_by("seq"))
    assert {RoundEventKind.ROUND_OPENED, RoundEventKind.UPDATE_RECEIVED, RoundEventKind.ROUND_METRICS,
            EventKind.GATE_EVALUATED} <= {event.kind for event in events}
    for event in events:
        declared = types[event.kind].payload
        assert declared.__required_keys__ <= set(event.payload) <= keys(declared), event.kind
        if event.kind == RoundEventKind.ROUND_METRICS:
            assert all(set(figures) == keys(SiteRoundFigures) for figures in event.payload["sites"].values())
