"""The audit log's Merkle tree (RFC 6962, `consortium.evidence.merkle`) kept beside the log in the database.

Leaf i is event i + 1's leaf (`consortium.evidence.canonical.event_leaf_hash`). Signing a checkpoint extends
the tree from the previous checkpoint's compact range with only the new events and stores each perfect
subtree of 2**STORED_LEVEL leaves or more that they complete (`AuditTreeNode`): about 2n / 2**STORED_LEVEL rows.
Smaller subtrees are recomputed from their events, at most 2**STORED_LEVEL of them, so any inclusion or
consistency proof, and an export's prefix and suffix, cost O(log n) lookups and one small read.
"""

import json
from collections.abc import Iterator, Mapping
from datetime import UTC, datetime
from typing import Any

from django.db import connection
from django.db.models import QuerySet

from consortium.audit.models import AuditEvent, AuditTreeNode
from consortium.evidence import merkle
from consortium.evidence.canonical import EXPORT_FIELDS, LEAF_FIELDS, event_leaf_hash, format_timestamp

STORED_LEVEL = 6
CHUNK = 2000
Node = tuple[int, int, bytes]  # (level, index, hash)


def _timestamp(value: datetime | str) -> str:
    """`created_at` as hashed, from what the driver returns (an aware datetime, or SQLite's UTC text)."""
    moment = datetime.fromisoformat(value) if isinstance(value, str) else value
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)  # Django keeps UTC in SQLite, without the offset
    return format_timestamp(moment)


def stream(events: QuerySet, fields: tuple[str, ...]) -> Iterator[dict[str, Any]]:
    """The queryset's rows as plain dicts of `fields` (created_at as hashed, details parsed), streamed.

    Straight from a chunked (server-side on PostgreSQL) cursor, without the ORM's per-value converters: the
    exports' hot loop, a few times faster than `.values().iterator()`, in the same constant memory."""
    sql, params = events.values_list(*fields).query.sql_with_params()
    parse_details = "details" in fields
    with connection.chunked_cursor() as cursor:
        cursor.execute(sql, params)
        while batch := cursor.fetchmany(CHUNK):
            for values in batch:
                row = dict(zip(fields, values, strict=True))
                row["created_at"] = _timestamp(row["created_at"])
                if parse_details and isinstance(row["details"], str):
                    row["details"] = json.loads(row["details"])
                yield row


def _range(first_seq: int, last_seq: int) -> QuerySet:
    return AuditEvent.objects.filter(seq__gte=first_seq, seq__lte=last_seq).order_by("seq")


def leaves(first_seq: int, last_seq: int) -> Iterator[dict[str, Any]]:
    """The leaf fields of events first_seq..last_seq, in order, streamed."""
    return stream(_range(first_seq, last_seq), LEAF_FIELDS)


def events(first_seq: int, last_seq: int) -> Iterator[dict[str, Any]]:
    """Events first_seq..last_seq with `EXPORT_FIELDS`, in order, streamed."""
    return stream(_range(first_seq, last_seq), EXPORT_FIELDS)


class TreeBuilder:
    """The compact range of leaves [0, size), which also reports each perfect subtree an append completes."""

    def __init__(self, size: int = 0, hashes: list[bytes] | tuple[bytes, ...] = ()) -> None:
        levels = [level for level in range(size.bit_length() - 1, -1, -1) if size >> level & 1]
        if len(levels) != len(hashes):
            raise ValueError(f"a compact range of {size} leaves has {len(levels)} hashes, not {len(hashes)}")
        self.size = size
        self._stack = list(zip(levels, hashes, strict=True))

    def append(self, leaf: bytes, completed: list[Node]) -> None:
        """Add a leaf; append to `completed` every stored-level subtree it closes."""
        self.size += 1
        level, node = 0, leaf
        while self._stack and self._stack[-1][0] == level:
            node = merkle.node_hash(self._stack.pop()[1], node)
            level += 1
            if level >= STORED_LEVEL:
                completed.append((level, (self.size >> level) - 1, node))
        self._stack.append((level, node))

    @property
    def hashes(self) -> list[bytes]:
        return [node for _, node in self._stack]

    def root(self) -> bytes:
        return merkle.CompactRange(self.size, self.hashes).root()


def extend(builder: TreeBuilder, last_seq: int) -> None:
    """Fold events builder.size + 1 .. last_seq into the tree, storing the subtrees they complete."""
    completed: list[Node] = []
    for row in leaves(builder.size + 1, last_seq):
        if row["seq"] != builder.size + 1:
            raise ValueError(f"the audit log has no event #{builder.size + 1} (found #{row['seq']})")
        builder.append(event_leaf_hash(row), completed)
        if len(completed) >= CHUNK:
            _store(completed)
    _store(completed)
    if builder.size != last_seq:
        raise ValueError(f"the audit log ends at event #{builder.size}, not #{last_seq}")


def _store(nodes: list[Node]) -> None:
    # ignore_conflicts: a node is a function of the leaves under it, so one stored earlier is the same node.
    AuditTreeNode.objects.bulk_create([AuditTreeNode(level=level, index=index, hash=node.hex())
                                       for level, index, node in nodes], ignore_conflicts=True)
    nodes.clear()


class StoredTree:
    """`subtree_hash(start, end)` over the stored nodes (and small blocks of events): a proof provider for
    trees up to the latest checkpoint's size."""

    def __init__(self) -> None:
        self._nodes: dict[tuple[int, int], bytes] = {}
        self._blocks: dict[int, merkle.MerkleTree] = {}
        self.subtree_hash = merkle.subtree_hash_from_perfect(self.perfect)

    def perfect(self, level: int, index: int) -> bytes:
        if level < STORED_LEVEL:
            block = (index << level) >> STORED_LEVEL
            offset = index - (block << (STORED_LEVEL - level))
            return self._block(block).perfect(level, offset)
        if (level, index) not in self._nodes:
            stored = AuditTreeNode.objects.filter(level=level, index=index).values_list("hash", flat=True).first()
            if stored is None:
                raise LookupError(f"no stored Merkle node {level}/{index}: sign a checkpoint covering it first")
            self._nodes[(level, index)] = bytes.fromhex(stored)
        return self._nodes[(level, index)]

    def _block(self, block: int) -> merkle.MerkleTree:
        if block not in self._blocks:
            first = (block << STORED_LEVEL) + 1
            tree = merkle.MerkleTree(event_leaf_hash(row) for row in leaves(first, first + (1 << STORED_LEVEL) - 1))
            self._blocks = {block: tree}  # one block at a time: a proof walks the blocks in order
        return self._blocks[block]


class DatabaseLog:
    """The audit log as `consortium.evidence.bundle.LogSource`: events and leaves from the ORM, streamed, and
    subtree hashes from the stored tree."""

    def __init__(self) -> None:
        self.tree = StoredTree()

    def events(self, first_seq: int, last_seq: int) -> Iterator[Mapping[str, Any]]:
        return events(first_seq, last_seq)

    def leaf(self, seq: int) -> Mapping[str, Any]:
        row = next(leaves(seq, seq), None)
        if row is None:
            raise LookupError(f"the audit log has no event #{seq}")
        return row

    def subtree_hash(self, start: int, end: int) -> bytes:
        return self.tree.subtree_hash(start, end)
