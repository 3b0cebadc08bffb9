"""Hostile and malformed uploads through the real agent endpoint: every one gets a short JSON 4xx and
one denied audit event, and stores nothing: no file under the model store, no row, no live event but
the refusal's. A generated corpus (`tests.aggregation.hostile`) of several hundred mutations of a valid
update, and the cases the hardening issue reported one by one."""

import json

import pytest
from django.db.models import Max

from aggregation.events import RoundEventKind
from aggregation.models import Round
from consortium.audit.log import MAX_REASON_CHARS
from consortium.audit.models import AuditOutcome
from consortium.federated import codec
from studies.models import StudyEvent
from tests.aggregation.hostile import corpus, join, split, zero_size_tensors
from tests.aggregation.support import (
    aggregation_rows,
    open_round,
    stored_files,
    update_bytes,
    update_tensors,
)
from tests.aggregation.test_api_agent import agent_client, headers, upload
from tests.api_support import assert_error
from tests.support import events_after, last_seq

pytestmark = pytest.mark.usefixtures("no_broker")

MAX_DETAIL_CHARS = 1000  # what a refusal may say, however much the body or headers held


def last_event_pk() -> int:
    return StudyEvent.objects.aggregate(top=Max("pk"))["top"] or 0


def assert_refused_storing_nothing(response, label: str, before: dict) -> dict:
    """A 4xx JSON answer with a short reason; no row, no file, only the refusal's live event; one denial."""
    assert 400 <= response.status_code < 500, (label, response.status_code, response.content[:300])
    body = assert_error(response, response.status_code)
    assert len(body["detail"]) <= MAX_DETAIL_CHARS, (label, len(body["detail"]))
    assert aggregation_rows() == before["rows"], f"{label}: a refused upload changed rounds, updates or versions"
    assert stored_files("") == before["files"], f"{label}: a refused upload left a file in the model store"
    kinds = list(StudyEvent.objects.filter(pk__gt=before["event"]).values_list("kind", flat=True))
    assert kinds in ([], [RoundEventKind.UPDATE_REFUSED]), (label, kinds)
    for payload in StudyEvent.objects.filter(pk__gt=before["event"]).values_list("payload", flat=True):
        assert len(json.dumps(payload)) <= 2 * MAX_REASON_CHARS, label
    events = events_after(before["seq"])
    assert [(e.action, e.outcome) for e in events] == [("aggregation.update.submit", AuditOutcome.DENIED)], label
    assert len(events[0].details["reason"]) <= MAX_REASON_CHARS, label
    return body


def state() -> dict:
    return {"rows": aggregation_rows(), "files": stored_files(""), "event": last_event_pk(), "seq": last_seq()}


def test_it_refuses_every_update_of_a_generated_corpus_of_malformed_bodies(fed):
    round_ = open_round(fed.study)
    valid = update_bytes(round_)
    cases = corpus(valid, update_tensors(round_))
    assert len(cases) >= 300, len(cases)
    site_a, site_b = agent_client(fed.plaintext_a), agent_client(fed.plaintext_b)
    codes = set()
    for index, (label, body, extra) in enumerate(cases):
        before = state()
        response = upload(site_a, round_, body, **headers(round_, key=f"case-{index}", **extra))
        codes.add(assert_refused_storing_nothing(response, label, before)["error"])
        if index % 25 == 0:  # another site is served meanwhile, and still sees the round open
            listed = site_b.get("/api/agent/rounds/")
            assert listed.status_code == 200 and [r["round_id"] for r in listed.json()] == [round_.pk], label
    assert {"not_safetensors", "duplicate_names", "header_too_large", "metadata_too_large", "tensor_names", "dtype",
            "shape", "not_finite", "update_norm", "content_encoding", "bad_header"} <= codes, codes
    accepted = upload(site_a, round_, valid, **headers(round_, key="the-valid-one"))
    assert accepted.status_code == 201, accepted.content  # the corpus refused mutations, not the site


@pytest.mark.parametrize("encoding", ["gzip", "deflate"])
def test_it_refuses_a_body_labelled_compressed_instead_of_reading_it_as_plain(fed, encoding):
    round_ = open_round(fed.study)
    before = state()
    response = upload(agent_client(fed.plaintext_a), round_, update_bytes(round_),
                      **headers(round_, HTTP_CONTENT_ENCODING=encoding))
    body = assert_refused_storing_nothing(response, encoding, before)
    assert body["error"] == "content_encoding" and f"Content-Encoding '{encoding}' is not accepted" in body["detail"]


def test_it_stores_no_file_for_an_update_refused_after_decoding(fed):
    """A num_examples beyond 64 bits passes the header parse and the decode, and is refused by the row's own
    validation: the bytes must not be on disk by then."""
    round_ = open_round(fed.study)
    before = state()
    response = upload(agent_client(fed.plaintext_a), round_, update_bytes(round_),
                      **headers(round_, HTTP_X_NUM_EXAMPLES=str(2**64)))
    assert_refused_storing_nothing(response, "num_examples 2**64", before)
    assert response.status_code == 400


def test_it_refuses_a_hundred_thousand_zero_size_tensors_by_the_length_prefix_with_a_short_reason(fed):
    """The issue's body held a million (bench/hostile_upload.py sends that one to a real server); once past
    the header cap the count changes nothing but the upload's size."""
    round_ = open_round(fed.study)
    body = zero_size_tensors(update_bytes(round_), 100_000)
    before = state()
    response = upload(agent_client(fed.plaintext_a), round_, body, **headers(round_))
    refusal = assert_refused_storing_nothing(response, "a hundred thousand zero-size tensors", before)
    assert refusal["error"] == "header_too_large" and len(refusal["detail"]) < 200


def test_it_refuses_a_duplicate_tensor_name_rather_than_keeping_the_last(fed):
    round_ = open_round(fed.study)
    header, data = split(update_bytes(round_))
    text = json.dumps(header)[:-1] + f', "linear.bias": {json.dumps(header["linear.bias"])}}}'
    before = state()
    response = upload(agent_client(fed.plaintext_a), round_, join(text, data), **headers(round_))
    refusal = assert_refused_storing_nothing(response, "duplicate", before)
    assert refusal == {"error": "duplicate_names",
                       "detail": "The safetensors header names 'linear.bias' more than once."}


def test_it_refuses_megabytes_of_metadata(fed):
    round_ = open_round(fed.study)
    header, data = split(update_bytes(round_))
    before = state()
    response = upload(agent_client(fed.plaintext_a), round_,
                      join({"__metadata__": {"pad": "x" * 32_000_000}, **header}, data), **headers(round_))
    refusal = assert_refused_storing_nothing(response, "metadata", before)
    assert refusal["error"] == "header_too_large"  # the prefix alone says it: the 32 MB are never parsed
    small = join({"__metadata__": {"pad": "x" * (codec.MAX_METADATA_BYTES + 1)}, **header}, data)
    before = state()
    response = upload(agent_client(fed.plaintext_a), round_, small, **headers(round_))
    refusal = assert_refused_storing_nothing(response, "metadata", before)
    assert refusal["error"] == "metadata_too_large"


@pytest.mark.parametrize(("metrics", "mentions"), [
    (json.dumps({"train_loss": 0.5, "note": "x" * 5000}), "X-Metrics is 5,"),
    ('{"train_loss": NaN}', "finite numbers"),
    ('{"extra": 1e999}', "finite numbers"),
    ("[" * 2000 + "]" * 2000, "JSON object"),  # nested past the parser's stack, within the length cap
])
def test_it_refuses_metrics_that_are_too_long_or_not_storable_json(fed, metrics, mentions):
    round_ = open_round(fed.study)
    before = state()
    response = upload(agent_client(fed.plaintext_a), round_, update_bytes(round_),
                      **headers(round_, HTTP_X_METRICS=metrics))
    refusal = assert_refused_storing_nothing(response, metrics[:20], before)
    assert refusal["error"] == "bad_header" and mentions in refusal["detail"]


def test_it_reads_only_ascii_digits_as_an_integer_header(fed):
    round_ = open_round(fed.study)
    for raw in ("٣", "1_0", " 10", "+10", "9" * 21):
        before = state()
        response = upload(agent_client(fed.plaintext_a), round_, update_bytes(round_),
                          **headers(round_, HTTP_X_NUM_EXAMPLES=raw))
        refusal = assert_refused_storing_nothing(response, raw, before)
        assert refusal["error"] == "bad_header" and len(refusal["detail"]) < 100
    assert Round.objects.get(pk=round_.pk).updates.count() == 0


def test_it_bounds_any_reason_a_live_event_carries(fed):
    from studies.events import publish

    event = publish(fed.study, RoundEventKind.ROUND_FAILED, {"round": 1, "reason": "x" * 50_000})
    assert len(event.payload["reason"]) == MAX_REASON_CHARS and event.payload["reason"].endswith("…")
    assert event.payload["round"] == 1
