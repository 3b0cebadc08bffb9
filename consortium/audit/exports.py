"""The audit log's exports (CSV and JSON): their columns, the one CSV writer, and checking a CSV export.

The canonical encoding, the chain hash and the CSV cell convention are defined once, without Django, in
`consortium.evidence` (`canonical`, `csvsafe`); this module names them as the exports use them. Every
export carries exactly `EXPORT_COLUMNS` (the hashed fields, then `hash`), so anyone holding an export can
recompute the chain from it alone (`manage.py verify_audit --csv FILE`; docs/audit-export.md). A cell a
spreadsheet would run as a formula gets one leading `'`, which a reader strips (`csvsafe`).
"""

import csv
import io
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from consortium.evidence.canonical import EXPORT_FIELDS, GENESIS_HASH, HASHED_FIELDS, INT_FIELDS, NULLABLE_INT_FIELDS
from consortium.evidence.canonical import event_hash as chain_hash
from consortium.evidence.csvsafe import FORMULA_START, neutralise, read_rows, restore, to_cell

__all__ = ["CHAINED_FIELDS", "EXPORT_COLUMNS", "FORMULA_STARTS", "GENESIS_HASH", "chain_hash", "from_cells",
           "neutralise", "restore", "to_cells", "verify_export", "write_csv"]

# One definition, in the Django-free evidence package; these names are what the exports call them.
CHAINED_FIELDS = HASHED_FIELDS
EXPORT_COLUMNS = EXPORT_FIELDS
FORMULA_STARTS = tuple(sorted(FORMULA_START - {"'"}))


def write_csv(header: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    """CSV text with every cell neutralised: the one writer every CSV export uses. None is an empty cell."""
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow([neutralise(name) for name in header])
    for row in rows:
        writer.writerow([to_cell(value) for value in row])
    return buffer.getvalue()


def to_cells(record: dict[str, Any]) -> list[Any]:
    """An exported event (`EXPORT_COLUMNS` -> value) as CSV values (details become canonical JSON in `to_cell`)."""
    return [record[name] for name in EXPORT_COLUMNS]


def from_cells(row: dict[str, str]) -> dict[str, Any]:
    """One parsed CSV row (header -> restored cell) back to the values that were hashed."""
    values: dict[str, Any] = {}
    for name in EXPORT_COLUMNS:
        text = row[name]
        if name in INT_FIELDS:
            values[name] = int(text)
        elif name in NULLABLE_INT_FIELDS:
            values[name] = int(text) if text else None
        elif name == "details":
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
    rows = read_rows(io.StringIO(text, newline=""))
    header = next(rows, [])
    missing = [name for name in EXPORT_COLUMNS if name not in header]
    if missing:
        return ExportReport(0, f"the export lacks the columns {', '.join(missing)}")
    previous: dict[str, Any] | None = None
    count, contiguous = 0, True
    for cells in rows:
        event = from_cells(dict(zip(header, cells, strict=False)))
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
