"""An audit log held in memory, with its Merkle tree: a `LogSource` for tests, benches and tools.

`append` builds a genuine chain (seq, prev_hash, hash exactly as `consortium.audit.log.record` does),
so bundles written from it verify like the coordinator's.
"""

from collections.abc import Iterator, Mapping
from datetime import UTC, datetime
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from consortium.evidence.canonical import GENESIS_HASH, LEAF_FIELDS, event_hash, event_leaf_hash, format_timestamp
from consortium.evidence.checkpoint import sign_checkpoint
from consortium.evidence.merkle import MerkleTree

DEFAULTS: dict[str, Any] = {
    "actor_kind": "system", "actor_user_id": None, "actor_label": "system", "action": "tests.thing.done",
    "outcome": "ok", "object_type": "", "object_id": "", "object_repr": "", "study_id": None, "site_id": None,
    "details": {},
}


class MemoryLog:
    """Events (dicts with `EXPORT_FIELDS`) and the Merkle tree over their leaves."""

    def __init__(self, log_id: str = "consortium-audit") -> None:
        self.log_id = log_id
        self.rows: list[dict[str, Any]] = []
        self.tree = MerkleTree()

    def append(self, created_at: datetime | None = None, **fields: Any) -> dict[str, Any]:
        event = {**DEFAULTS, **fields}
        event["seq"] = len(self.rows) + 1
        event["created_at"] = format_timestamp(created_at or datetime.now(UTC))
        event["prev_hash"] = self.rows[-1]["hash"] if self.rows else GENESIS_HASH
        event["hash"] = event_hash(event)
        self.rows.append(event)
        self.tree.append(event_leaf_hash(event))
        return event

    def events(self, first_seq: int, last_seq: int) -> Iterator[Mapping[str, Any]]:
        return iter(self.rows[first_seq - 1:last_seq])

    def leaf(self, seq: int) -> Mapping[str, Any]:
        return {name: self.rows[seq - 1][name] for name in LEAF_FIELDS}

    def subtree_hash(self, start: int, end: int) -> bytes:
        return self.tree.subtree_hash(start, end)

    def checkpoint(self, key: Ed25519PrivateKey, seq: int | None = None) -> dict[str, Any]:
        """A signed checkpoint of the first `seq` events (default: all)."""
        seq = len(self.rows) if seq is None else seq
        head = self.rows[seq - 1]["hash"] if seq else GENESIS_HASH
        return sign_checkpoint(key, log_id=self.log_id, seq=seq, chain_head=head, merkle_root=self.tree.root(seq))
