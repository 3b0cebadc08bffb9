"""The export bundle: a directory (or the same files in a .zip) an auditor verifies offline.

    manifest.json    what the export claims, signed: format and version, created_at, log_id, filters,
                     range (first_seq..last_seq), counts (included, skipped), events_file, every other
                     file's SHA-256, byte size and row count, the signed checkpoint at export time,
                     key_fingerprint, and `signature` over the canonical manifest without it
    events.jsonl     every included event: `EXPORT_FIELDS` (hashed fields and hash), one JSON object a line
      or events.csv  the same with exactly `EXPORT_FIELDS` as columns; details as canonical JSON (csvsafe)
    skipped.jsonl    every event of the range the filter leaves out: its leaf (`LEAF_FIELDS`) only
    prefix.json      the leaves before the range: the compact range of [1, first_seq - 2] and the leaf of
                     event first_seq - 1 (so the first event's prev_hash is checked against a proven hash)
    suffix.json      the leaves after it, up to the checkpoint: the compact range of [last_seq + 1, N - 1]
                     and the leaf of event N (so the checkpoint's chain head is checked)
    consistency.json optional: proofs that earlier checkpoints are prefixes of this one
    anything else    (a ledger, say) is only hash-checked

Writers stream: they take iterators of dicts and hash while writing, in constant memory.
"""

import csv
import hashlib
import json
import re
import tempfile
import zipfile
from collections.abc import Iterable, Iterator, Mapping
from contextlib import AbstractContextManager
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any, BinaryIO, Protocol

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from consortium.evidence import csvsafe, merkle, signing
from consortium.evidence.canonical import EXPORT_FIELDS, LEAF_FIELDS, canonical_json, format_timestamp
from consortium.evidence.checkpoint import parse_checkpoint
from consortium.evidence.errors import EvidenceError
from consortium.evidence.filters import EventFilter

FORMAT = "consortium-audit-export"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
MANIFEST_DOMAIN = "consortium.audit.export-manifest.v1"
SKIPPED, PREFIX, SUFFIX, CONSISTENCY = "skipped.jsonl", "prefix.json", "suffix.json", "consistency.json"
EVENTS_FILES = {"jsonl": "events.jsonl", "csv": "events.csv"}
FILE_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,99}")
CHUNK = 1 << 20


class LogSource(Protocol):
    """Where an export reads the log: the Django export backs it with the ORM and stored Merkle nodes."""

    def events(self, first_seq: int, last_seq: int) -> Iterable[Mapping[str, Any]]:
        """Events first_seq..last_seq in order, each with `EXPORT_FIELDS` (created_at: datetime or text)."""
        ...

    def leaf(self, seq: int) -> Mapping[str, Any]:
        """One event's `LEAF_FIELDS`."""
        ...

    def subtree_hash(self, start: int, end: int) -> bytes:
        """The Merkle hash of leaves [start, end), 0-based (leaf i is event i + 1)."""
        ...


@dataclass(frozen=True)
class FileEntry:
    """A data file as the manifest lists it."""

    sha256: str
    bytes: int
    rows: int | None


class HashingWriter:
    """A binary file that hashes, counts bytes and counts rows as it is written."""

    def __init__(self, path: Path) -> None:
        self._handle: BinaryIO = open(path, "wb")  # noqa: SIM115 (closed by close())
        self._sha = hashlib.sha256()
        self.size = 0
        self.rows = 0

    def write(self, data: bytes | str) -> None:
        raw = data.encode("utf-8") if isinstance(data, str) else data
        self._sha.update(raw)
        self._handle.write(raw)
        self.size += len(raw)

    def close(self, *, rows: bool = True) -> FileEntry:
        self._handle.close()
        return FileEntry(self._sha.hexdigest(), self.size, self.rows if rows else None)


class JsonlWriter(HashingWriter):
    """One canonical JSON object a line."""

    def write_row(self, row: Mapping[str, Any]) -> None:
        self.write(canonical_json(row) + b"\n")
        self.rows += 1


class CsvWriter(HashingWriter):
    """A header, then one row a record, every cell neutralised (`csvsafe`)."""

    def __init__(self, path: Path, header: Iterable[str]) -> None:
        super().__init__(path)
        self._header = tuple(header)
        self._csv = csv.writer(self)
        self._csv.writerow([csvsafe.neutralise(name) for name in self._header])

    def write_row(self, row: Mapping[str, Any]) -> None:
        self._csv.writerow([csvsafe.to_cell(row[name]) for name in self._header])
        self.rows += 1


def write_jsonl(path: Path, rows: Iterable[Mapping[str, Any]]) -> FileEntry:
    """Stream dicts to a JSONL file; what the manifest lists for it."""
    writer = JsonlWriter(path)
    for row in rows:
        writer.write_row(row)
    return writer.close()


def write_csv(path: Path, header: Iterable[str], rows: Iterable[Mapping[str, Any]]) -> FileEntry:
    """Stream dicts to a formula-safe CSV file with `header` as columns; what the manifest lists for it."""
    writer = CsvWriter(path, header)
    for row in rows:
        writer.write_row(row)
    return writer.close()


def _export_row(event: Mapping[str, Any], fields: tuple[str, ...]) -> dict[str, Any]:
    row = {name: event[name] for name in fields}
    if isinstance(row["created_at"], datetime):
        row["created_at"] = format_timestamp(row["created_at"])
    return row


def _tree_edges(source: LogSource, first_seq: int, last_seq: int, size: int) -> tuple[dict, dict]:
    """prefix.json and suffix.json: what the verifier needs, besides the range, to rebuild the root."""
    before, subtree_hash = max(first_seq - 2, 0), source.subtree_hash
    prefix = {
        "size": before,
        "compact_range": [h.hex() for h in merkle.compact_range(0, before, subtree_hash)],
        "previous": _export_row(source.leaf(first_seq - 1), LEAF_FIELDS) if first_seq > 1 else None,
    }
    suffix = {
        "compact_range": [h.hex() for h in merkle.compact_range(last_seq, max(size - 1, last_seq), subtree_hash)],
        "head": _export_row(source.leaf(size), LEAF_FIELDS) if last_seq < size else None,
    }
    return prefix, suffix


def _write_range(directory: Path, source: LogSource, events_format: str, first_seq: int, last_seq: int,
                 event_filter: EventFilter) -> dict[str, FileEntry]:
    """Split the range into included events and skipped leaves, checking it is gapless and in order."""
    name = EVENTS_FILES[events_format]
    included = JsonlWriter(directory / name) if events_format == "jsonl" else CsvWriter(directory / name, EXPORT_FIELDS)
    skipped = JsonlWriter(directory / SKIPPED)
    expected = first_seq
    for event in source.events(first_seq, last_seq):
        if event["seq"] != expected:
            raise ValueError(f"the log source gave event #{event['seq']} where #{expected} belongs")
        row = _export_row(event, EXPORT_FIELDS)
        if event_filter.matches(row):
            included.write_row(row)
        else:
            skipped.write_row(_export_row(row, LEAF_FIELDS))
        expected += 1
    if expected != last_seq + 1:
        raise ValueError(f"the log source ended at event #{expected - 1}, before #{last_seq}")
    return {name: included.close(), SKIPPED: skipped.close()}


def write_bundle(destination: Path, source: LogSource, *, key: Ed25519PrivateKey, checkpoint: Mapping[str, Any],
                 first_seq: int = 1, last_seq: int | None = None, filters: Mapping[str, Any] | None = None,
                 earlier_checkpoints: Iterable[Mapping[str, Any]] = (), extra_files: Mapping[str, Path] | None = None,
                 events_format: str = "jsonl", created_at: datetime | None = None) -> dict[str, Any]:
    """Write an export of events first_seq..last_seq (default: up to the checkpoint) matching `filters`.

    `checkpoint` is the signed checkpoint taken for this export (its seq bounds the range); proofs that
    each of `earlier_checkpoints` is a prefix of it go to consistency.json; `extra_files` are copied in
    and hash-checked. A destination ending in .zip gets a zip of the files. Returns the signed manifest.
    """
    signed = parse_checkpoint(dict(checkpoint))
    last_seq = signed.seq if last_seq is None else last_seq
    if not 1 <= first_seq <= last_seq + 1 or last_seq > signed.seq:
        raise ValueError(f"range #{first_seq}..#{last_seq} does not fit a log of {signed.seq} events")
    if signed.key_fingerprint != signing.fingerprint(key):
        raise ValueError("the checkpoint was signed by another key than the one signing the export")
    if events_format not in EVENTS_FILES:
        raise ValueError(f"events_format is one of {sorted(EVENTS_FILES)}")
    event_filter = EventFilter(filters)
    extras = {_checked_name(name, events_format): Path(path) for name, path in (extra_files or {}).items()}
    destination = Path(destination)
    if destination.suffix == ".zip":
        with tempfile.TemporaryDirectory(dir=destination.parent) as scratch:
            manifest = write_bundle(Path(scratch), source, key=key, checkpoint=checkpoint, first_seq=first_seq,
                                    last_seq=last_seq, filters=filters, earlier_checkpoints=earlier_checkpoints,
                                    extra_files=extra_files, events_format=events_format, created_at=created_at)
            _zip_directory(Path(scratch), destination)
        return manifest
    destination.mkdir(parents=True, exist_ok=True)
    files = _write_range(destination, source, events_format, first_seq, last_seq, event_filter)
    included = files[EVENTS_FILES[events_format]].rows or 0
    files.update(_write_proofs(destination, source, first_seq, last_seq, signed.seq, earlier_checkpoints))
    for name, path in extras.items():
        files[name] = copy_file(path, destination / name)
    manifest = {
        "format": FORMAT,
        "version": FORMAT_VERSION,
        "created_at": format_timestamp(created_at or datetime.now(UTC)),
        "log_id": signed.log_id,
        "filters": event_filter.spec,
        "range": {"first_seq": first_seq, "last_seq": last_seq},
        "counts": {"included": included, "skipped": last_seq - first_seq + 1 - included},
        "events_file": EVENTS_FILES[events_format],
        "files": {name: asdict(entry) for name, entry in sorted(files.items())},
        "checkpoint": dict(checkpoint),
    }
    return _sign_manifest(destination, manifest, key)


def _sign_manifest(destination: Path, manifest: dict[str, Any], key: Ed25519PrivateKey) -> dict[str, Any]:
    manifest = {**manifest, "key_fingerprint": signing.fingerprint(key)}
    manifest["signature"] = signing.sign(key, MANIFEST_DOMAIN, manifest)
    _write_json(destination / MANIFEST, manifest)
    return manifest


def _write_proofs(destination: Path, source: LogSource, first_seq: int, last_seq: int, size: int,
                  earlier_checkpoints: Iterable[Mapping[str, Any]]) -> dict[str, FileEntry]:
    """prefix.json, suffix.json and (given earlier checkpoints) consistency.json."""
    prefix, suffix = _tree_edges(source, first_seq, last_seq, size)
    files = {PREFIX: _write_json(destination / PREFIX, prefix), SUFFIX: _write_json(destination / SUFFIX, suffix)}
    earlier = [dict(c) for c in earlier_checkpoints]
    if earlier:
        files[CONSISTENCY] = _write_json(destination / CONSISTENCY, consistency_document(size, earlier, source))
    return files


def consistency_document(size: int, earlier: Iterable[Mapping[str, Any]], source: LogSource) -> dict[str, Any]:
    """consistency.json: for each earlier signed checkpoint, the proof that its tree is a prefix of `size`'s."""
    proofs = []
    for data in earlier:
        old = parse_checkpoint(dict(data), name="earlier checkpoint")
        if old.seq > size:
            raise ValueError(f"checkpoint #{old.seq} is newer than the export's #{size}")
        proof = merkle.consistency_proof(old.seq, size, source.subtree_hash)
        proofs.append({"checkpoint": dict(data), "proof": [h.hex() for h in proof]})
    return {"to_seq": size, "proofs": proofs}


def _checked_name(name: str, events_format: str) -> str:
    """An extra file's name: plain (no folders), and none of the files the format itself writes."""
    reserved = {MANIFEST, SKIPPED, PREFIX, SUFFIX, CONSISTENCY, EVENTS_FILES[events_format]}
    if not FILE_NAME.fullmatch(name) or name in reserved:
        raise ValueError(f"{name!r} cannot name an extra file of the bundle")
    return name


def _write_json(path: Path, document: Any) -> FileEntry:
    writer = HashingWriter(path)
    writer.write(json.dumps(document, sort_keys=True, indent=1, ensure_ascii=False) + "\n")
    return writer.close(rows=False)


def copy_file(source: Path, target: Path) -> FileEntry:
    """Copy a file into the bundle, hashing it; rows counted as the verifier counts them."""
    counter = RowCounter(target.name)
    writer = HashingWriter(target)
    with open(source, "rb") as handle:
        for chunk in iter_chunks(handle):
            writer.write(chunk)
            counter.feed(chunk)
    writer.rows = counter.finish() or 0
    return writer.close(rows=counter.counts_rows)


def file_entry(path: Path) -> FileEntry:
    """What the manifest lists for a file already in the bundle (rows counted by its name's kind)."""
    sha, size, counter = hashlib.sha256(), 0, RowCounter(path.name)
    with open(path, "rb") as handle:
        for chunk in iter_chunks(handle):
            sha.update(chunk)
            size += len(chunk)
            counter.feed(chunk)
    return FileEntry(sha.hexdigest(), size, counter.finish())


class RowCounter:
    """Counts rows while bytes stream by: lines for .jsonl, CSV records (less the header) for .csv."""

    def __init__(self, name: str) -> None:
        self.kind = name.rsplit(".", 1)[-1] if "." in name else ""
        self.counts_rows = self.kind in ("jsonl", "csv")
        self._lines = 0
        self._csv = _CsvRecordCounter() if self.kind == "csv" else None

    def feed(self, chunk: bytes) -> None:
        if self.kind == "jsonl":
            self._lines += chunk.count(b"\n")
        elif self._csv is not None:
            self._csv.feed(chunk)

    def finish(self) -> int | None:
        if self.kind == "jsonl":
            return self._lines
        if self._csv is not None:
            return max(self._csv.finish() - 1, 0)
        return None


class _CsvRecordCounter:
    """Counts CSV records (RFC 4180 quoting: newlines inside quotes do not end a record) in O(1) memory."""

    def __init__(self) -> None:
        self.records, self._quoted, self._pending = 0, False, False

    def feed(self, chunk: bytes) -> None:
        for index, segment in enumerate(chunk.split(b'"')):
            if index:  # a quote opens or closes a quoted stretch (an escaped "" does both)
                self._quoted, self._pending = not self._quoted, True
            newlines = 0 if self._quoted else segment.count(b"\n")
            if newlines:
                self.records += newlines
                self._pending = not segment.endswith(b"\n")
            elif segment:
                self._pending = True

    def finish(self) -> int:
        return self.records + (1 if self._pending else 0)


class Bundle(AbstractContextManager):
    """A bundle to read, whether a directory or a .zip: `names()` and `open(name)`."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._zip: zipfile.ZipFile | None = None
        if self.path.is_dir():
            return
        if not self.path.exists():
            raise EvidenceError(f"bundle: {self.path} does not exist")
        try:
            self._zip = zipfile.ZipFile(self.path)
        except (zipfile.BadZipFile, OSError) as exc:
            raise EvidenceError(f"bundle: {self.path} is neither a directory nor a readable zip ({exc})") from exc

    def names(self) -> list[str]:
        if self._zip is not None:
            return sorted(info.filename for info in self._zip.infolist() if not info.is_dir())
        return sorted(p.name for p in self.path.iterdir() if p.is_file())

    def open(self, name: str) -> IO[bytes]:
        if not FILE_NAME.fullmatch(name):
            raise EvidenceError(f"bundle: {name!r} is not a plain file name")
        try:
            if self._zip is not None:
                return self._zip.open(name)
            return open(self.path / name, "rb")  # noqa: SIM115 (the caller closes it)
        except (KeyError, FileNotFoundError) as exc:
            raise EvidenceError(f"{name}: missing from the bundle") from exc

    def read(self, name: str, limit: int) -> bytes:
        with self.open(name) as handle:
            data = handle.read(limit + 1)
        if len(data) > limit:
            raise EvidenceError(f"{name}: larger than {limit} bytes")
        return data

    def __exit__(self, *exc_info: object) -> None:
        if self._zip is not None:
            self._zip.close()


def iter_chunks(handle: IO[bytes]) -> Iterator[bytes]:
    while chunk := handle.read(CHUNK):
        yield chunk


def _zip_directory(directory: Path, destination: Path) -> None:
    with zipfile.ZipFile(destination, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for path in sorted(directory.iterdir()):
            archive.write(path, arcname=path.name)
