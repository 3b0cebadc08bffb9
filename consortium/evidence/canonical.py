"""THE definition of an audit event's canonical encoding, its chain hash and its Merkle leaf.

`event_hash` is byte-identical to what `consortium.audit.log.compute_hash` has always stored: SHA-256 over
the compact, key-sorted, UTF-8 JSON of the hashed fields (`prev_hash` included, so events chain).
Changing anything here breaks every existing log: don't.

The Merkle leaf of an event commits to its *filterable attributes* and its chain hash, not to its
details. So an export that leaves an event out can show the leaf (what the event was about, who
did it, when, and its hash) without its content, and the verifier can prove, against a signed
root, that every event left out indeed falls outside the export's filter.
"""

import hashlib
import json
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

GENESIS_HASH = "0" * 64

# The fields an event's hash covers, in the order exports use as columns.
HASHED_FIELDS: tuple[str, ...] = (
    "seq",
    "created_at",
    "actor_kind",
    "actor_user_id",
    "actor_label",
    "action",
    "outcome",
    "object_type",
    "object_id",
    "object_repr",
    "study_id",
    "site_id",
    "details",
    "prev_hash",
)
# An exported event: the hashed fields and the hash the log stored, which the verifier recomputes.
EXPORT_FIELDS: tuple[str, ...] = (*HASHED_FIELDS, "hash")
# What an export may filter on, and what a Merkle leaf commits to besides the event's hash.
FILTER_FIELDS: tuple[str, ...] = (
    "seq",
    "created_at",
    "actor_kind",
    "actor_user_id",
    "actor_label",
    "action",
    "outcome",
    "object_type",
    "object_id",
    "study_id",
    "site_id",
)
LEAF_FIELDS: tuple[str, ...] = (*FILTER_FIELDS, "hash")
INT_FIELDS = frozenset({"seq"})
NULLABLE_INT_FIELDS = frozenset({"actor_user_id", "study_id", "site_id"})


# json.dumps with these options; one encoder, not one per call (the verifier encodes two objects per event).
_ENCODER = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def canonical_json(value: Any) -> bytes:
    """Compact, key-sorted UTF-8 JSON: one byte string per value, the same on every machine."""
    return _ENCODER.encode(value).encode("utf-8")


def format_timestamp(moment: datetime) -> str:
    """An event's `created_at` as hashed: ISO 8601 in UTC with microseconds (`...T12:00:00.000000+00:00`)."""
    return moment.astimezone(UTC).isoformat(timespec="microseconds")


def event_hash(fields: Mapping[str, Any]) -> str:
    """The chain hash (hex) of an event given as a mapping with at least `HASHED_FIELDS`."""
    return hashlib.sha256(canonical_json({name: fields[name] for name in HASHED_FIELDS})).hexdigest()


def leaf_attributes(fields: Mapping[str, Any]) -> dict[str, Any]:
    """What an export shows of an event it leaves out: `LEAF_FIELDS` (the filterable attributes and the hash)."""
    return {name: fields[name] for name in LEAF_FIELDS}


def leaf_data(fields: Mapping[str, Any]) -> bytes:
    """The Merkle leaf's data for an event given as a mapping with at least `LEAF_FIELDS`."""
    return canonical_json(leaf_attributes(fields))


def event_leaf_hash(fields: Mapping[str, Any]) -> bytes:
    """The RFC 6962 leaf hash of an event: SHA-256(0x00 || leaf_data)."""
    return hashlib.sha256(b"\x00" + leaf_data(fields)).digest()
