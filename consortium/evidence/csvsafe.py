"""CSV that a spreadsheet cannot turn into a formula, and that reads back exactly: the one helper
every CSV export in the project uses.

Convention: a cell whose text starts with one of `= + - @ TAB CR '` is written with one extra
leading `'` (spreadsheets then show it as text); a reader strips exactly one leading `'` when the
character after it is one of those. Every string therefore survives a write and a read unchanged,
including ones that themselves start with `'`.
"""

import csv
import json
import sys
from collections.abc import Iterable, Iterator
from typing import Any, TextIO

FORMULA_START = frozenset("=+-@\t\r'")
# Audit details can be long; the csv module's default limit (128 KiB a cell) would refuse them.
FIELD_SIZE_LIMIT = min(sys.maxsize, 1 << 30)


def neutralise(text: str) -> str:
    """The cell as written: one extra leading `'` when the text could start a formula."""
    return "'" + text if text and text[0] in FORMULA_START else text


def restore(cell: str) -> str:
    """The text a cell holds: strips the one `'` that `neutralise` added."""
    return cell[1:] if len(cell) > 1 and cell[0] == "'" and cell[1] in FORMULA_START else cell


def to_cell(value: Any) -> str:
    """A value as cell text: "" for None, canonical JSON for objects and lists, str() otherwise; neutralised."""
    if value is None:
        text = ""
    elif isinstance(value, dict | list):
        text = json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    else:
        text = str(value)
    return neutralise(text)


def write_rows(handle: TextIO, header: Iterable[str], rows: Iterable[Iterable[Any]]) -> int:
    """Write a header and rows (cells through `to_cell`) to a text handle opened with newline=""; returns rows."""
    writer = csv.writer(handle)
    writer.writerow([neutralise(name) for name in header])
    count = 0
    for row in rows:
        writer.writerow([to_cell(value) for value in row])
        count += 1
    return count


def read_rows(handle: TextIO) -> Iterator[list[str]]:
    """Rows of a CSV text handle (opened with newline=""), header included, each cell through `restore`."""
    csv.field_size_limit(FIELD_SIZE_LIMIT)
    for row in csv.reader(handle):
        yield [restore(cell) for cell in row]
