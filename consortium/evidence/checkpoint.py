"""Signed checkpoints: the coordinator's signed statement of its audit log's head.

A checkpoint says "my log `log_id` had `seq` events; event #seq's chain hash is `chain_head`; the
Merkle root over their leaves is `merkle_root`", at `issued_at`, signed with the key named by
`key_fingerprint`. Whoever keeps one (a site, an auditor) can later demand proof that any export
or any newer checkpoint extends that same history (a Merkle consistency proof): a log rewritten
afterwards, however carefully its hashes are recomputed, cannot produce one.
"""

import re
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from consortium.evidence import signing
from consortium.evidence.errors import EvidenceError

CHECKPOINT_VERSION = 1
SIGNING_DOMAIN = "consortium.audit.checkpoint.v1"
_HEX64 = re.compile(r"[0-9a-f]{64}")


@dataclass(frozen=True)
class Checkpoint:
    """The signed fields of a checkpoint (the signature travels beside them, in `to_dict`)."""

    version: int
    log_id: str
    seq: int
    chain_head: str
    merkle_root: str
    issued_at: str
    key_fingerprint: str

    @property
    def root(self) -> bytes:
        return bytes.fromhex(self.merkle_root)

    def describe(self) -> str:
        return f"checkpoint #{self.seq} of {self.log_id} (issued {self.issued_at})"


def sign_checkpoint(key: Ed25519PrivateKey, *, log_id: str, seq: int, chain_head: str, merkle_root: bytes | str,
                    issued_at: datetime | None = None) -> dict[str, Any]:
    """A signed checkpoint, as published and stored: its fields plus `signature` (base64 Ed25519)."""
    moment = (issued_at or datetime.now(UTC)).astimezone(UTC)
    checkpoint = Checkpoint(
        version=CHECKPOINT_VERSION,
        log_id=log_id,
        seq=seq,
        chain_head=chain_head,
        merkle_root=merkle_root.hex() if isinstance(merkle_root, bytes) else merkle_root,
        issued_at=moment.isoformat(timespec="microseconds"),
        key_fingerprint=signing.fingerprint(key),
    )
    _check_fields(checkpoint)
    fields = asdict(checkpoint)
    return {**fields, "signature": signing.sign(key, SIGNING_DOMAIN, fields)}


def parse_checkpoint(data: Any, *, name: str = "checkpoint") -> Checkpoint:
    """The fields of a signed checkpoint (not yet verified); EvidenceError if malformed."""
    if not isinstance(data, dict):
        raise EvidenceError(f"{name}: not a JSON object")
    expected = {*Checkpoint.__dataclass_fields__, "signature"}
    if set(data) != expected:
        missing, extra = sorted(expected - set(data)), sorted(set(data) - expected)
        raise EvidenceError(f"{name}: malformed (missing {missing or 'nothing'}, unexpected {extra or 'nothing'})")
    try:
        checkpoint = Checkpoint(**{key: data[key] for key in Checkpoint.__dataclass_fields__})
    except TypeError as exc:
        raise EvidenceError(f"{name}: malformed ({exc})") from exc
    _check_fields(checkpoint, name=name)
    return checkpoint


def verify_checkpoint(data: Any, key: Ed25519PublicKey, *, name: str = "checkpoint") -> Checkpoint:
    """The checkpoint, once its signature is proven `key`'s; EvidenceError naming what failed otherwise."""
    checkpoint = parse_checkpoint(data, name=name)
    expected = signing.fingerprint(key)
    if checkpoint.key_fingerprint != expected:
        raise EvidenceError(f"{name}: signed by key {checkpoint.key_fingerprint}, not by the given key {expected}")
    if not signing.verify(key, SIGNING_DOMAIN, asdict(checkpoint), data["signature"]):
        raise EvidenceError(f"{name}: signature invalid")
    return checkpoint


def _check_fields(checkpoint: Checkpoint, *, name: str = "checkpoint") -> None:
    problems = []
    if checkpoint.version != CHECKPOINT_VERSION:
        problems.append(f"version {checkpoint.version!r} is not {CHECKPOINT_VERSION}")
    if not isinstance(checkpoint.log_id, str) or not checkpoint.log_id:
        problems.append("log_id must be a non-empty string")
    if not isinstance(checkpoint.seq, int) or isinstance(checkpoint.seq, bool) or checkpoint.seq < 0:
        problems.append("seq must be a count of events")
    for field in ("chain_head", "merkle_root"):
        if not isinstance(getattr(checkpoint, field), str) or not _HEX64.fullmatch(getattr(checkpoint, field)):
            problems.append(f"{field} must be 64 lowercase hex digits")
    try:
        datetime.fromisoformat(checkpoint.issued_at)
    except (TypeError, ValueError):
        problems.append("issued_at must be an ISO 8601 time")
    if not isinstance(checkpoint.key_fingerprint, str) or not checkpoint.key_fingerprint.startswith("ed25519:"):
        problems.append("key_fingerprint must read ed25519:<hex>")
    if problems:
        raise EvidenceError(f"{name}: malformed ({'; '.join(problems)})")
