"""Verify an export bundle offline: what an auditor runs (`python -m consortium.verify`).

In order, stopping at the first problem (an `EvidenceError` naming it):
1. the manifest is signed by the given key (its fingerprint, then the signature);
2. the checkpoint inside it is signed by the same key;
3. every listed file has the SHA-256, byte size and row count the manifest states;
4. in one streaming pass over the range: each included event's content gives its hash, each event
   (included or skipped) sits at its place and each included one's prev_hash is the hash of the one
   before it, each included event matches the filter and each skipped one does not (so the export
   is complete for what it claims), and the Merkle root rebuilt from the prefix, every leaf of the
   range and the suffix equals the signed checkpoint's, whose chain head is the last event's hash;
5. each earlier checkpoint (those in consistency.json and those the auditor holds) is signed and is
   a prefix of this one: a history rewritten since it was issued fails here.
"""

import hashlib
import io
import json
import operator
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from consortium.evidence import bundle as fmt
from consortium.evidence import csvsafe, merkle, signing
from consortium.evidence.canonical import (
    EXPORT_FIELDS,
    GENESIS_HASH,
    INT_FIELDS,
    LEAF_FIELDS,
    NULLABLE_INT_FIELDS,
    event_hash,
    event_leaf_hash,
)
from consortium.evidence.checkpoint import Checkpoint, verify_checkpoint
from consortium.evidence.errors import EvidenceError
from consortium.evidence.filters import EventFilter

JSON_LIMIT = 64 << 20  # manifest, prefix, suffix and consistency files are small: refuse absurd ones
MANIFEST_KEYS = {"format", "version", "created_at", "log_id", "filters", "range", "counts", "events_file", "files",
                 "checkpoint", "key_fingerprint", "signature"}
HEX64 = frozenset("0123456789abcdef")
HEX_HASH = re.compile(r"[0-9a-f]{64}")
HEX_HASHES = re.compile(r"[0-9a-f]+")
Report = Callable[[str], None]


@dataclass
class Summary:
    """What a successful verification established."""

    checkpoint: Checkpoint
    first_seq: int
    last_seq: int
    included: int = 0
    skipped: int = 0
    files: int = 0
    consistent_with: list[Checkpoint] = field(default_factory=list)


def verify_bundle(path: Any, public_key: Ed25519PublicKey, *, held_checkpoints: Sequence[Mapping[str, Any]] = (),
                  report: Report = lambda line: None) -> Summary:
    """Verify the bundle at `path` (directory or .zip); `report` gets one line per check passed."""
    with fmt.Bundle(path) as bundle:
        manifest = _verify_manifest(bundle, public_key, report)
        checkpoint = verify_checkpoint(manifest["checkpoint"], public_key)
        if checkpoint.log_id != manifest["log_id"]:
            raise EvidenceError(f"checkpoint: of log {checkpoint.log_id!r}, the manifest says {manifest['log_id']!r}")
        report(f"checkpoint: signature valid: {checkpoint.describe()}, {checkpoint.seq} events, "
               f"root {checkpoint.merkle_root[:16]}...")
        summary = Summary(checkpoint, manifest["range"]["first_seq"], manifest["range"]["last_seq"])
        _verify_files(bundle, manifest, summary, report)
        earlier = _earlier_checkpoints(bundle, manifest, checkpoint, public_key, held_checkpoints)
        heads = _verify_range(bundle, manifest, checkpoint, summary, {c.seq for c, _, _ in earlier}, report)
        _verify_consistency(checkpoint, earlier, heads, summary, report)
    return summary


def _verify_manifest(bundle: fmt.Bundle, key: Ed25519PublicKey, report: Report) -> dict[str, Any]:
    manifest = _load_json(bundle, fmt.MANIFEST)
    if not isinstance(manifest, dict) or set(manifest) != MANIFEST_KEYS:
        found = sorted(manifest) if isinstance(manifest, dict) else type(manifest).__name__
        raise EvidenceError(f"manifest: malformed (expected fields {sorted(MANIFEST_KEYS)}, found {found})")
    if manifest["format"] != fmt.FORMAT or manifest["version"] != fmt.FORMAT_VERSION:
        raise EvidenceError(f"manifest: format {manifest['format']!r} version {manifest['version']!r} is not "
                            f"{fmt.FORMAT!r} version {fmt.FORMAT_VERSION}")
    expected = signing.fingerprint(key)
    if manifest["key_fingerprint"] != expected:
        raise EvidenceError(f"manifest: signed by key {manifest['key_fingerprint']}, not by the given key {expected}")
    unsigned = {name: value for name, value in manifest.items() if name != "signature"}
    if not signing.verify(key, fmt.MANIFEST_DOMAIN, unsigned, manifest["signature"]):
        raise EvidenceError("manifest: signature invalid (the manifest was altered, or not signed by this key)")
    _check_manifest_fields(manifest)
    report(f"manifest: signature valid, key {expected}")
    return manifest


def _check_manifest_fields(manifest: dict[str, Any]) -> None:
    """The signed manifest's own consistency: a well-signed but ill-formed manifest is still refused."""
    seq_range, counts, files = manifest["range"], manifest["counts"], manifest["files"]
    try:
        first, last = _int(seq_range["first_seq"]), _int(seq_range["last_seq"])
        included, skipped = _int(counts["included"]), _int(counts["skipped"])
    except (TypeError, KeyError) as exc:
        raise EvidenceError("manifest: range and counts must hold integers") from exc
    if first < 1 or last < first - 1 or included < 0 or skipped < 0 or included + skipped != last - first + 1:
        raise EvidenceError(f"manifest: range #{first}..#{last} and counts {counts} do not add up")
    if manifest["events_file"] not in fmt.EVENTS_FILES.values() or not isinstance(files, dict):
        raise EvidenceError(f"manifest: events_file must be one of {sorted(fmt.EVENTS_FILES.values())}")
    for name in (manifest["events_file"], fmt.SKIPPED, fmt.PREFIX, fmt.SUFFIX):
        if name not in files:
            raise EvidenceError(f"manifest: lists no {name}")
    EventFilter(manifest["filters"])  # refuses an unknown or ill-typed filter before anything is counted


def _int(value: Any) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise TypeError("not an integer")
    return value


def _load_json(bundle: fmt.Bundle, name: str) -> Any:
    try:
        return json.loads(bundle.read(name, JSON_LIMIT))
    except (UnicodeDecodeError, ValueError) as exc:
        raise EvidenceError(f"{name}: not valid JSON ({exc})") from exc


def _verify_files(bundle: fmt.Bundle, manifest: dict[str, Any], summary: Summary, report: Report) -> None:
    total = 0
    for name, entry in sorted(manifest["files"].items()):
        if not isinstance(entry, dict) or set(entry) != {"sha256", "bytes", "rows"}:
            raise EvidenceError(f"manifest: the entry for {name} is malformed")
        total += _verify_file(bundle, name, entry)
    listed = set(manifest["files"]) | {fmt.MANIFEST}
    for extra in sorted(set(bundle.names()) - listed):
        report(f"note: {extra} is not in the manifest: nothing vouches for it, and it was not checked")
    summary.files = len(manifest["files"])
    report(f"files: {summary.files} files match their SHA-256, size and row count ({total:,} bytes)")


def _verify_file(bundle: fmt.Bundle, name: str, entry: dict[str, Any]) -> int:
    sha, size, counter = hashlib.sha256(), 0, fmt.RowCounter(name)
    with bundle.open(name) as handle:
        for chunk in fmt.iter_chunks(handle):
            size += len(chunk)
            if size > entry["bytes"]:
                raise EvidenceError(f"{name}: larger than the {entry['bytes']:,} bytes the manifest states")
            sha.update(chunk)
            counter.feed(chunk)
    if size != entry["bytes"]:
        raise EvidenceError(f"{name}: {size:,} bytes, the manifest states {entry['bytes']:,}")
    if sha.hexdigest() != entry["sha256"]:
        raise EvidenceError(f"{name}: SHA-256 differs from the manifest")
    rows = counter.finish()
    if rows != entry["rows"]:
        raise EvidenceError(f"{name}: {rows} rows, the manifest states {entry['rows']}")
    return size


Earlier = list[tuple[Checkpoint, list[bytes], str]]


def _earlier_checkpoints(bundle: fmt.Bundle, manifest: dict[str, Any], checkpoint: Checkpoint,
                         key: Ed25519PublicKey, held: Sequence[Mapping[str, Any]]) -> Earlier:
    """(checkpoint, consistency proof, who vouches for it) for each earlier checkpoint to prove a prefix."""
    proofs: dict[int, list[bytes]] = {}
    found: Earlier = []
    if fmt.CONSISTENCY in manifest["files"]:
        document = _load_json(bundle, fmt.CONSISTENCY)
        if not isinstance(document, dict) or document.get("to_seq") != checkpoint.seq:
            raise EvidenceError(f"{fmt.CONSISTENCY}: its proofs are not to checkpoint #{checkpoint.seq}")
        for index, item in enumerate(document.get("proofs", [])):
            where = f"{fmt.CONSISTENCY}: proof {index + 1}"
            old = verify_checkpoint(item.get("checkpoint") if isinstance(item, dict) else None, key, name=where)
            proof = _hashes(item.get("proof"), where)
            proofs[old.seq] = proof
            found.append((old, proof, f"the bundle's {old.describe()}"))
    for index, data in enumerate(held):
        old = verify_checkpoint(dict(data), key, name=f"held checkpoint {index + 1}")
        if old.seq > checkpoint.seq:
            raise EvidenceError(f"held {old.describe()} is newer than the bundle's #{checkpoint.seq}: "
                                f"ask for a newer export (its events are not in this one)")
        if old.seq not in proofs and old.seq not in (0, checkpoint.seq):
            raise EvidenceError(f"held {old.describe()}: the bundle carries no consistency proof from it")
        found.append((old, proofs.get(old.seq, []), f"held {old.describe()}"))
    for old, _, who in found:
        if old.log_id != checkpoint.log_id:
            raise EvidenceError(f"{who}: is of log {old.log_id!r}, not {checkpoint.log_id!r}")
    return found


def _hashes(values: Any, where: str) -> list[bytes]:
    if not isinstance(values, list) or not all(isinstance(v, str) and len(v) == 64 and set(v) <= HEX64
                                               for v in values):
        raise EvidenceError(f"{where}: hashes must be 64 lowercase hex digits each")
    return [bytes.fromhex(v) for v in values]


def _verify_consistency(checkpoint: Checkpoint, earlier: Earlier, heads: dict[int, str],
                        summary: Summary, report: Report) -> None:
    for old, proof, who in earlier:
        if not merkle.verify_consistency(old.seq, checkpoint.seq, old.root, checkpoint.root, proof):
            raise EvidenceError(f"{who} is not a prefix of checkpoint #{checkpoint.seq}: "
                                f"the history it vouched for was rewritten since")
        head = GENESIS_HASH if old.seq == 0 else heads.get(old.seq)
        if head is not None and head != old.chain_head:
            raise EvidenceError(f"{who}: its chain head differs from event #{old.seq}'s hash")
        summary.consistent_with.append(old)
        report(f"consistency: {who} is a prefix of checkpoint #{checkpoint.seq}")


class _Leaves:
    """The Merkle tree being rebuilt, and the chain hash each next event must point back to."""

    def __init__(self, prefix: Any, first_seq: int) -> None:
        if not isinstance(prefix, dict) or set(prefix) != {"size", "compact_range", "previous"}:
            raise EvidenceError(f"{fmt.PREFIX}: malformed")
        before = max(first_seq - 2, 0)
        if prefix["size"] != before:
            raise EvidenceError(f"{fmt.PREFIX}: covers {prefix['size']} events, the range starts after {before}")
        hashes = _hashes(prefix["compact_range"], fmt.PREFIX)
        if len(hashes) != before.bit_count():
            raise EvidenceError(f"{fmt.PREFIX}: {len(hashes)} subtree hashes, {before} events need "
                                f"{before.bit_count()}")
        self.tree = merkle.CompactRange(before, hashes)
        self.last_hash = GENESIS_HASH
        if first_seq > 1:
            previous = prefix["previous"]
            _check_entry(previous, LEAF_FIELDS, f"{fmt.PREFIX}: previous event")
            if previous["seq"] != first_seq - 1:
                raise EvidenceError(f"{fmt.PREFIX}: previous event is #{previous['seq']}, not #{first_seq - 1}")
            self.add(previous)
        elif prefix["previous"] is not None:
            raise EvidenceError(f"{fmt.PREFIX}: names a previous event, but the range starts at #1")

    def add(self, entry: Mapping[str, Any]) -> None:
        self.tree.append(event_leaf_hash(entry))
        self.last_hash = entry["hash"]


def _verify_range(bundle: fmt.Bundle, manifest: dict[str, Any], checkpoint: Checkpoint, summary: Summary,
                  wanted: set[int], report: Report) -> dict[int, str]:
    """The streaming pass; returns the hashes of the `wanted` seqs it saw (earlier checkpoints' heads)."""
    first, last = summary.first_seq, summary.last_seq
    if last > checkpoint.seq:
        raise EvidenceError(f"manifest: the range ends at #{last}, beyond checkpoint #{checkpoint.seq}")
    event_filter = EventFilter(manifest["filters"])
    leaves = _Leaves(_load_json(bundle, fmt.PREFIX), first)
    heads = {first - 1: leaves.last_hash} if first - 1 in wanted else {}
    with bundle.open(manifest["events_file"]) as events_file, bundle.open(fmt.SKIPPED) as skipped_file:
        included = _read_events(manifest["events_file"], events_file)
        skipped = _read_jsonl(fmt.SKIPPED, skipped_file, LEAF_FIELDS, "skipped event")
        for seq, entry, is_included in _merge(included, skipped, first, last):
            if is_included:
                _check_included(entry, leaves.last_hash, event_filter)
                summary.included += 1
            elif event_filter.matches(entry):
                raise EvidenceError(f"skipped event #{seq} matches the filter: the export is incomplete")
            else:
                summary.skipped += 1
            leaves.add(entry)
            if seq in wanted:
                heads[seq] = entry["hash"]
    _check_counts(manifest, summary)
    report(f"events: {summary.included:,} included events match their hashes")
    head = _add_suffix(leaves, _load_json(bundle, fmt.SUFFIX), last, checkpoint)
    heads[checkpoint.seq] = head
    if head != checkpoint.chain_head:
        raise EvidenceError(f"chain: event #{checkpoint.seq}'s hash differs from the checkpoint's chain head")
    report(f"chain: each included event links to the hash of the event before it; event #{checkpoint.seq}'s hash "
           f"is the checkpoint's chain head")
    report(f"filter: {summary.included:,} included events match {event_filter.describe()}; {summary.skipped:,} "
           f"skipped events do not: the export is complete for its claim")
    if leaves.tree.size != checkpoint.seq or leaves.tree.root() != checkpoint.root:
        raise EvidenceError(f"merkle: the root over the {leaves.tree.size:,} leaves differs from checkpoint "
                            f"#{checkpoint.seq}'s: an event, a skipped entry, the prefix or the suffix was altered")
    report(f"merkle: the root over {checkpoint.seq:,} leaves ({max(first - 1, 0):,} before the range, "
           f"{last - first + 1:,} in it, {checkpoint.seq - last:,} after) matches the checkpoint")
    return heads


def _check_counts(manifest: dict[str, Any], summary: Summary) -> None:
    counts = manifest["counts"]
    if (summary.included, summary.skipped) != (counts["included"], counts["skipped"]):
        raise EvidenceError(f"manifest: counts {counts['included']} included and {counts['skipped']} skipped, "
                            f"the files hold {summary.included} and {summary.skipped}")


def _check_included(event: Mapping[str, Any], previous_hash: str, event_filter: EventFilter) -> None:
    seq = event["seq"]
    if event_hash(event) != event["hash"]:
        raise EvidenceError(f"event #{seq}: content does not match its hash")
    if event["prev_hash"] != previous_hash:
        raise EvidenceError(f"event #{seq} does not chain to event #{seq - 1}: its prev_hash is not that event's hash")
    if not event_filter.matches(event):
        raise EvidenceError(f"event #{seq} does not match the filter, yet the export includes it")


def _add_suffix(leaves: _Leaves, suffix: Any, last: int, checkpoint: Checkpoint) -> str:
    """Fold in the leaves after the range; returns the hash of the checkpoint's head event."""
    if not isinstance(suffix, dict) or set(suffix) != {"compact_range", "head"}:
        raise EvidenceError(f"{fmt.SUFFIX}: malformed")
    size = checkpoint.seq
    pieces = merkle.decompose(last, max(size - 1, last))
    hashes = _hashes(suffix["compact_range"], fmt.SUFFIX)
    if len(hashes) != len(pieces):
        raise EvidenceError(f"{fmt.SUFFIX}: {len(hashes)} subtree hashes, events #{last + 1}..#{size - 1} need "
                            f"{len(pieces)}")
    for (start, end), subtree in zip(pieces, hashes, strict=True):
        leaves.tree.append_subtree((end - start).bit_length() - 1, subtree)
    if last == size:
        if suffix["head"] is not None:
            raise EvidenceError(f"{fmt.SUFFIX}: names a head event, but the range ends at the checkpoint")
        return leaves.last_hash
    head = suffix["head"]
    _check_entry(head, LEAF_FIELDS, f"{fmt.SUFFIX}: head event")
    if head["seq"] != size:
        raise EvidenceError(f"{fmt.SUFFIX}: head event is #{head['seq']}, not #{size}")
    leaves.add(head)
    return head["hash"]


def _merge(included: Iterator[dict], skipped: Iterator[dict], first: int,
           last: int) -> Iterator[tuple[int, dict, bool]]:
    """Each seq of the range once, from whichever file holds it; names the first missing or misplaced event."""
    inc, skp = next(included, None), next(skipped, None)
    for seq in range(first, last + 1):
        if inc is not None and inc["seq"] == seq:
            if skp is not None and skp["seq"] == seq:
                raise EvidenceError(f"event #{seq} is both included and skipped")
            yield seq, inc, True
            inc = next(included, None)
        elif skp is not None and skp["seq"] == seq:
            yield seq, skp, False
            skp = next(skipped, None)
        else:
            found = min((e["seq"] for e in (inc, skp) if e is not None), default=None)
            if found is None:
                raise EvidenceError(f"event #{seq} is missing: the export ends at #{seq - 1}, its range at #{last}")
            if found > seq:
                raise EvidenceError(f"event #{seq} is missing or out of order (#{found} stands in its place)")
            raise EvidenceError(f"event #{found} is out of order or repeated (found after #{seq - 1})")
    extra = inc if inc is not None else skp
    if extra is not None:
        raise EvidenceError(f"event #{extra['seq']} lies outside the export's range #{first}..#{last}")


def _read_events(name: str, handle: Any) -> Iterator[dict]:
    if name.endswith(".jsonl"):
        return _read_jsonl(name, handle, EXPORT_FIELDS, "event")
    return _read_csv_events(name, handle)


def _read_jsonl(name: str, handle: Any, fields: tuple[str, ...], what: str) -> Iterator[dict]:
    decode = json.JSONDecoder().decode
    for number, line in enumerate(handle, start=1):
        try:
            entry = decode(line.decode("utf-8"))
        except ValueError as exc:  # UnicodeDecodeError included
            raise EvidenceError(f"{name} line {number}: not valid JSON ({exc})") from exc
        _check_entry(entry, fields, f"{name} line {number}", what)
        yield entry


def _read_csv_events(name: str, handle: Any) -> Iterator[dict]:
    rows = csvsafe.read_rows(io.TextIOWrapper(handle, encoding="utf-8", newline=""))
    try:
        header = next(rows, None)
        if header != list(EXPORT_FIELDS):
            raise EvidenceError(f"{name}: its columns are not {', '.join(EXPORT_FIELDS)}")
        for number, row in enumerate(rows, start=2):
            where = f"{name} record {number}"
            if len(row) != len(EXPORT_FIELDS):
                raise EvidenceError(f"{where}: {len(row)} cells, not {len(EXPORT_FIELDS)}")
            entry = _typed(dict(zip(EXPORT_FIELDS, row, strict=True)), where)
            _check_entry(entry, EXPORT_FIELDS, where, "event")
            yield entry
    except UnicodeDecodeError as exc:
        raise EvidenceError(f"{name}: not UTF-8 text ({exc})") from exc


def _typed(row: dict[str, str], where: str) -> dict[str, Any]:
    """A CSV row's cells as the types the hash covers: integers, null for empty ids, details as JSON."""
    try:
        for name in INT_FIELDS:
            row[name] = int(row[name])
        for name in NULLABLE_INT_FIELDS:
            row[name] = int(row[name]) if row[name] != "" else None
        row["details"] = json.loads(row["details"])
    except ValueError as exc:
        raise EvidenceError(f"{where}: a number or the details JSON does not parse ({exc})") from exc
    return row


class _Shape:
    """The fields of an entry grouped by type, for a check that stays in C for a well-formed entry."""

    def __init__(self, fields: tuple[str, ...]) -> None:
        text = [n for n in fields if n not in INT_FIELDS | NULLABLE_INT_FIELDS | {"details", "hash", "prev_hash"}]
        self.keys = frozenset(fields)
        self.text, self.text_types = operator.itemgetter(*text), (str,) * len(text)
        self.ids = operator.itemgetter(*sorted(NULLABLE_INT_FIELDS))
        self.chained = "prev_hash" in fields

    def well_formed(self, entry: dict[str, Any]) -> bool:
        hashes = (entry["hash"], entry["prev_hash"]) if self.chained else (entry["hash"],)
        joined = "".join(hashes) if set(map(type, hashes)) == _STR else ""
        return (tuple(map(type, self.text(entry))) == self.text_types and type(entry["seq"]) is int
                and set(map(type, self.ids(entry))) <= _ID_TYPES
                and len(joined) == 64 * len(hashes) and HEX_HASHES.fullmatch(joined) is not None)


_ID_TYPES, _STR = {int, type(None)}, {str}
_SHAPES = {fields: _Shape(fields) for fields in (EXPORT_FIELDS, LEAF_FIELDS)}


def _check_entry(entry: Any, fields: tuple[str, ...], where: str, what: str = "") -> None:
    """Exactly the expected fields, each of the type the log stores: no string "5" passing for study 5."""
    shape = _SHAPES[fields]
    if type(entry) is not dict or entry.keys() != shape.keys:
        found = sorted(entry) if isinstance(entry, dict) else type(entry).__name__
        raise EvidenceError(f"{where}: expected the fields {', '.join(fields)}; found {found}")
    if shape.well_formed(entry):
        return
    for name in fields:  # the slow path, only to name the culprit
        value = entry[name]
        if name in INT_FIELDS or name in NULLABLE_INT_FIELDS:
            ok = type(value) is int or (value is None and name != "seq")
        elif name in ("hash", "prev_hash"):
            ok = isinstance(value, str) and HEX_HASH.fullmatch(value) is not None
        else:
            ok = name == "details" or isinstance(value, str)
        if not ok:
            label = f"{what} #{entry['seq']}" if what and type(entry["seq"]) is int else where
            raise EvidenceError(f"{label}: {name} has the wrong type or form ({value!r:.80})")
