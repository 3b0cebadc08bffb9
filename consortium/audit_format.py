"""The audit chain's canonical encoding and its exports (CSV and JSON), in one place and without Django.

Each event's hash is SHA-256 over the canonical JSON of `CHAINED_FIELDS` (sorted keys, no spaces, UTF-8),
and `prev_hash` is the hash of the event before it. `consortium.audit` hashes with these functions, and
every export carries exactly `EXPORT_COLUMNS` (the chained fields, then `hash`), so anyone holding an
export can recompute the chain from it alone (`manage.py verify_audit --csv FILE`; docs/audit-export.md).

A CSV cell that a spreadsheet would run as a formula (it starts with = + - @, a tab or a carriage return)
is written with a `'` in front; so is a cell that already starts with `'`, which keeps the rule
reversible: a verifier removes the first character of every cell that starts with `'`, and nothing else.
"""

import csv
import hashlib
import io
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

GENESIS_HASH = "0" * 64

CHAINED_FIELDS = (
    "seq", "created_at", "actor_kind", "actor_user_id", "actor_label", "action", "outcome", "object_type",
    "object_id", "object_repr", "study_id", "site_id", "details", "prev_hash",
)
EXPORT_COLUMNS = (*CHAINED_FIELDS, "hash")
# How a CSV cell (always text) becomes the value that was hashed; every other field is text as it is.
_INTEGER = frozenset({"seq"})
_OPTIONAL_INTEGER = frozenset({"actor_user_id", "study_id", "site_id"})  # an empty cell is null
_JSON = frozenset({"details"})

FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")
_ESCAPE = "'"


def canonical_json(fields: dict[str, Any]) -> str:
    return json.dumps(fields, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def chain_hash(fields: dict[str, Any]) -> str:
    """The hash of an event given its chained fields (`prev_hash` included, `hash` not)."""
    return hashlib.sha256(canonical_json({name: fields[name] for name in CHAINED_FIELDS}).encode("utf-8")).hexdigest()


# --- CSV cells ---------------------------------------------------------------------------------------


def neutralise(text: str) -> str:
    """A cell a spreadsheet shows as text: `'` in front of a formula start (or of a leading `'`)."""
    return _ESCAPE + text if text.startswith((*FORMULA_STARTS, _ESCAPE)) else text


def restore(cell: str) -> str:
    """Undo `neutralise`: every cell that starts with `'` had exactly one added."""
    return cell[1:] if cell.startswith(_ESCAPE) else cell


def write_csv(header: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    """CSV text with every cell neutralised: the one writer every CSV export uses. None is an empty cell."""
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    for row in (header, *rows):
        writer.writerow([neutralise("" if value is None else str(value)) for value in row])
    return buffer.getvalue()


def to_cells(record: dict[str, Any]) -> list[Any]:
    """An exported event (`EXPORT_COLUMNS` -> value) as CSV values: details as canonical JSON."""
    return [canonical_json(record[name]) if name in _JSON else record[name] for name in EXPORT_COLUMNS]


def from_cells(row: dict[str, str]) -> dict[str, Any]:
    """One parsed CSV row (header -> cell) back to the values that were hashed."""
    values: dict[str, Any] = {}
    for name in EXPORT_COLUMNS:
        text = restore(row[name])
        if name in _INTEGER:
            values[name] = int(text)
        elif name in _OPTIONAL_INTEGER:
            values[name] = int(text) if text else None
        elif name in _JSON:
            values[name] = json.loads(text)
        else:
            values[name] = text
    return values


# --- Verifying an export -----------------------------------------------------------------------------


@dataclass(frozen=True)
class ExportReport:
    rows: int
    problem: str = ""
    broken_seq: int | None = None
    complete_from_genesis: bool = False

    @property
    def intact(self) -> bool:
        return not self.problem


def verify_export(text: str) -> ExportReport:
    """Recompute every row's hash and check each row chains to the row before it when their sequence
    numbers follow each other (a filtered export skips events; a full one starts at the genesis hash)."""
    reader = csv.DictReader(io.StringIO(text, newline=""))
    missing = [name for name in EXPORT_COLUMNS if name not in (reader.fieldnames or [])]
    if missing:
        return ExportReport(0, f"the export lacks the columns {', '.join(missing)}")
    previous: dict[str, Any] | None = None
    count, contiguous = 0, True
    for row in reader:
        event = from_cells(row)
        seq = event["seq"]
        if chain_hash(event) != event["hash"]:
            return ExportReport(count, f"event #{seq}: its content does not match its hash", seq)
        follows = previous["seq"] + 1 == seq if previous else seq == 1
        expected_prev = (previous["hash"] if previous else GENESIS_HASH) if follows else None
        if expected_prev is not None and event["prev_hash"] != expected_prev:
            return ExportReport(count, f"event #{seq} does not chain to the event before it", seq)
        contiguous = contiguous and follows
        previous, count = event, count + 1
    return ExportReport(count, complete_from_genesis=contiguous and count > 0)
