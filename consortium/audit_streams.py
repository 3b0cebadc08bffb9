"""The audit log's CSV and JSONL exports, streamed: rows leave as the database yields them (`iterator()`), so
memory stays flat whatever the size of the log. Both carry exactly `EXPORT_FIELDS` (every field the hash
covers, then the hash); CSV cells a spreadsheet would run get one leading `'` (`csvsafe`)."""

import csv
from collections.abc import Iterator
from typing import Any

from django.http import StreamingHttpResponse

from consortium.audit_tree import CHUNK
from consortium.evidence import csvsafe
from consortium.evidence.canonical import EXPORT_FIELDS, canonical_json, format_timestamp
from consortium.models import AuditCheckpoint

CONTENT_TYPES = {"csv": "text/csv; charset=utf-8", "jsonl": "application/x-ndjson; charset=utf-8"}
BATCH = 500  # rows per chunk written to the response


def export_rows(events: "Any", through_seq: int) -> Iterator[dict[str, Any]]:
    """The filtered events up to `through_seq`, oldest first, as plain export rows."""
    rows = events.filter(seq__lte=through_seq).order_by("seq").values(*EXPORT_FIELDS).iterator(chunk_size=CHUNK)
    for row in rows:
        row["created_at"] = format_timestamp(row["created_at"])
        yield row


class _Lines:
    """csv.writer's file: hands back what it was given to write."""

    def write(self, text: str) -> str:
        return text


def csv_chunks(rows: Iterator[dict[str, Any]]) -> Iterator[str]:
    writer = csv.writer(_Lines())
    yield writer.writerow([csvsafe.neutralise(name) for name in EXPORT_FIELDS])
    batch: list[str] = []
    for row in rows:
        batch.append(writer.writerow([csvsafe.to_cell(row[name]) for name in EXPORT_FIELDS]))
        if len(batch) == BATCH:
            yield "".join(batch)
            batch = []
    yield "".join(batch)


def jsonl_chunks(rows: Iterator[dict[str, Any]]) -> Iterator[bytes]:
    batch: list[bytes] = []
    for row in rows:
        batch.append(canonical_json(row) + b"\n")
        if len(batch) == BATCH:
            yield b"".join(batch)
            batch = []
    yield b"".join(batch)


def streamed_export(events: "Any", checkpoint: AuditCheckpoint, export_format: str) -> StreamingHttpResponse:
    """The response: events up to the checkpoint signed for this export, which its headers name."""
    rows = export_rows(events, checkpoint.tree_size)
    chunks = csv_chunks(rows) if export_format == "csv" else jsonl_chunks(rows)
    response = StreamingHttpResponse(chunks, content_type=CONTENT_TYPES[export_format])
    response["Content-Disposition"] = f'attachment; filename="consortium-audit.{export_format}"'
    response["X-Audit-Checkpoint"] = str(checkpoint.number)
    response["X-Audit-Checkpoint-Size"] = str(checkpoint.tree_size)
    response["X-Audit-Key-Fingerprint"] = checkpoint.key_fingerprint
    return response

