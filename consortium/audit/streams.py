"""The audit log's CSV and JSONL exports, streamed: rows leave as the database yields them (`iterator()`), so
memory stays flat whatever the size of the log. Both carry exactly `EXPORT_FIELDS` (every field the hash
covers, then the hash); CSV cells a spreadsheet would run get one leading `'` (`csvsafe`)."""

import csv
from collections.abc import Iterator
from typing import Any

from django.db.models import QuerySet
from django.http import StreamingHttpResponse

from consortium.audit.models import AuditCheckpoint
from consortium.audit.tree import stream
from consortium.evidence import csvsafe
from consortium.evidence.canonical import EXPORT_FIELDS, canonical_json

CONTENT_TYPES = {"csv": "text/csv; charset=utf-8", "jsonl": "application/x-ndjson; charset=utf-8"}
BATCH = 500  # rows per chunk written to the response


def export_rows(events: QuerySet, through_seq: int) -> Iterator[dict[str, Any]]:
    """The filtered events up to `through_seq`, oldest first, as plain export rows."""
    return stream(events.filter(seq__lte=through_seq).order_by("seq"), EXPORT_FIELDS)


class _Lines:
    """csv.writer's file: hands back what it was given to write."""

    def write(self, text: str) -> str:
        return text


def _cells(row: dict[str, Any]) -> list[str]:
    """The row's cells exactly as `csvsafe.to_cell` writes them, without asking each value its type: only free
    text can start a formula (ids are digits, hashes hex, times ISO, details a JSON object)."""
    neutralise = csvsafe.neutralise
    return [str(row["seq"]), row["created_at"], neutralise(row["actor_kind"]), _id(row["actor_user_id"]),
            neutralise(row["actor_label"]), neutralise(row["action"]), neutralise(row["outcome"]),
            neutralise(row["object_type"]), neutralise(row["object_id"]), neutralise(row["object_repr"]),
            _id(row["study_id"]), _id(row["site_id"]), neutralise(canonical_json(row["details"]).decode("utf-8")),
            row["prev_hash"], row["hash"]]


def _id(value: int | None) -> str:
    return "" if value is None else str(value)


def csv_chunks(rows: Iterator[dict[str, Any]]) -> Iterator[str]:
    writer = csv.writer(_Lines())
    yield writer.writerow([csvsafe.neutralise(name) for name in EXPORT_FIELDS])
    batch: list[str] = []
    for row in rows:
        batch.append(writer.writerow(_cells(row)))
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


def streamed_export(events: QuerySet, checkpoint: AuditCheckpoint, export_format: str) -> StreamingHttpResponse:
    """The response: events up to the checkpoint signed for this export, which its headers name."""
    rows = export_rows(events, checkpoint.tree_size)
    chunks = csv_chunks(rows) if export_format == "csv" else jsonl_chunks(rows)
    response = StreamingHttpResponse(chunks, content_type=CONTENT_TYPES[export_format])
    response["Content-Disposition"] = f'attachment; filename="consortium-audit.{export_format}"'
    response["X-Audit-Checkpoint"] = str(checkpoint.number)
    response["X-Audit-Checkpoint-Size"] = str(checkpoint.tree_size)
    response["X-Audit-Key-Fingerprint"] = checkpoint.key_fingerprint
    return response

