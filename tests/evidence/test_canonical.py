"""The one canonical encoding: the same hash `consortium.audit` has always stored, without Django."""

from datetime import UTC, datetime, timedelta, timezone

from consortium.evidence.canonical import (
    EXPORT_FIELDS,
    FILTER_FIELDS,
    HASHED_FIELDS,
    LEAF_FIELDS,
    event_hash,
    format_timestamp,
    leaf_data,
)

EVENT = {
    "seq": 42, "created_at": "2025-03-04T12:05:06.000789+00:00", "actor_kind": "user", "actor_user_id": 7,
    "actor_label": "dpo", "action": "studies.dpia.approved", "outcome": "ok", "object_type": "studies.dpia",
    "object_id": "3", "object_repr": "DPIA für Studie «Sepsis»", "study_id": 5, "site_id": None,
    "details": {"reason": "ok", "b": [1, 2.5, None], "a": {"z": "é"}}, "prev_hash": "ab" * 32,
}
# Computed with the hash code audit.py shipped before this module existed: logs written then must still verify.
EVENT_HASH = "ff61e2dc0bc778eadb0a45fc87e1d95e83d0e71a0af396bbc2196a4c9ef8318f"


def test_it_hashes_an_event_exactly_as_the_log_always_has():
    assert event_hash(EVENT) == EVENT_HASH
    assert event_hash({**EVENT, "hash": "ignored", "extra": 1}) == EVENT_HASH
    assert event_hash({**EVENT, "details": {**EVENT["details"], "reason": "changed"}}) != EVENT_HASH


def test_it_formats_times_in_utc_with_microseconds():
    moment = datetime(2025, 3, 4, 13, 5, 6, 789, tzinfo=timezone(timedelta(hours=1)))
    assert format_timestamp(moment) == "2025-03-04T12:05:06.000789+00:00"
    assert format_timestamp(datetime(2025, 1, 1, tzinfo=UTC)) == "2025-01-01T00:00:00.000000+00:00"


def test_it_names_the_fields_exports_and_leaves_carry():
    assert HASHED_FIELDS[0] == "seq" and HASHED_FIELDS[-1] == "prev_hash" and len(set(HASHED_FIELDS)) == 14
    assert EXPORT_FIELDS == (*HASHED_FIELDS, "hash")
    # A leaf shows what an export may filter on, never an event's details or description.
    assert set(FILTER_FIELDS) == set(HASHED_FIELDS) - {"details", "object_repr", "prev_hash"}
    assert LEAF_FIELDS == (*FILTER_FIELDS, "hash")
    data = leaf_data({**EVENT, "hash": EVENT_HASH})
    assert b"Sepsis" not in data and b"reason" not in data and EVENT_HASH.encode() in data
