"""Ed25519 keys and signatures (the `cryptography` package), with a fingerprint people can compare.

The coordinator's private key comes from the environment or a file in production (PEM, or the raw
32-byte seed in hex or base64) and is generated for the demo. Its public key is published, with
the fingerprint `ed25519:<SHA-256 of the raw public key, hex>`, which every signed object names.

Each kind of signed object signs under its own domain string, so a signature over one kind
(a checkpoint) can never be passed off as a signature over another (a manifest).
"""

import base64
import binascii
import hashlib
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from consortium.evidence.canonical import canonical_json
from consortium.evidence.errors import EvidenceError

FINGERPRINT_PREFIX = "ed25519:"


def generate_private_key() -> Ed25519PrivateKey:
    """A new key from the operating system's randomness (the demo's; production loads its own)."""
    return Ed25519PrivateKey.generate()


def _raw_32(data: bytes) -> bytes | None:
    """The 32 bytes a raw key is written as: hex, base64 (standard or URL-safe) or binary."""
    text = data.strip()
    if len(text) == 64:
        try:
            return bytes.fromhex(text.decode("ascii"))
        except (UnicodeDecodeError, ValueError):
            pass
    for decode in (base64.b64decode, base64.urlsafe_b64decode):
        try:
            raw = decode(text)
        except (binascii.Error, ValueError):
            continue
        if len(raw) == 32:
            return raw
    return data if len(data) == 32 else None


def load_private_key(data: bytes | str) -> Ed25519PrivateKey:
    """A private key from PEM (PKCS#8, unencrypted) or a raw 32-byte seed in hex or base64."""
    data = data.encode("ascii") if isinstance(data, str) else data
    if data.lstrip().startswith(b"-----BEGIN"):
        try:
            key = serialization.load_pem_private_key(data, password=None)
        except (ValueError, TypeError) as exc:
            raise EvidenceError(f"private key: not a readable unencrypted PEM key ({exc})") from exc
        if not isinstance(key, Ed25519PrivateKey):
            raise EvidenceError("private key: not an Ed25519 key")
        return key
    seed = _raw_32(data)
    if seed is None:
        raise EvidenceError("private key: expected PEM or a 32-byte seed in hex or base64")
    return Ed25519PrivateKey.from_private_bytes(seed)


def load_public_key(data: bytes | str) -> Ed25519PublicKey:
    """A public key from PEM (SubjectPublicKeyInfo) or the raw 32 bytes in hex or base64."""
    data = data.encode("ascii") if isinstance(data, str) else data
    if data.lstrip().startswith(b"-----BEGIN"):
        try:
            key = serialization.load_pem_public_key(data)
        except ValueError as exc:
            raise EvidenceError(f"public key: not a readable PEM key ({exc})") from exc
        if not isinstance(key, Ed25519PublicKey):
            raise EvidenceError("public key: not an Ed25519 key")
        return key
    raw = _raw_32(data)
    if raw is None:
        raise EvidenceError("public key: expected PEM or 32 raw bytes in hex or base64")
    return Ed25519PublicKey.from_public_bytes(raw)


def private_key_pem(key: Ed25519PrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def public_key_pem(key: Ed25519PublicKey) -> bytes:
    return key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


def public_key_raw(key: Ed25519PublicKey) -> bytes:
    return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def fingerprint(key: Ed25519PublicKey | Ed25519PrivateKey) -> str:
    """`ed25519:` and the hex SHA-256 of the raw public key: what the UI shows and signed objects name."""
    public = key.public_key() if isinstance(key, Ed25519PrivateKey) else key
    return FINGERPRINT_PREFIX + hashlib.sha256(public_key_raw(public)).hexdigest()


def signed_message(domain: str, payload: Any) -> bytes:
    """What is signed: the domain, a NUL, then the payload's canonical JSON."""
    return domain.encode("ascii") + b"\x00" + canonical_json(payload)


def sign(key: Ed25519PrivateKey, domain: str, payload: Any) -> str:
    """The base64 Ed25519 signature of `payload` under `domain`."""
    return base64.b64encode(key.sign(signed_message(domain, payload))).decode("ascii")


def verify(key: Ed25519PublicKey, domain: str, payload: Any, signature: str) -> bool:
    """Whether `signature` (base64) is `key`'s over `payload` under `domain`."""
    try:
        raw = base64.b64decode(signature, validate=True)
        key.verify(raw, signed_message(domain, payload))
    except (InvalidSignature, binascii.Error, ValueError, TypeError):
        return False
    return True
