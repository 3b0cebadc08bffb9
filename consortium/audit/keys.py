"""The coordinator's Ed25519 key for signing audit checkpoints and export manifests.

Production gives it in the environment (`AUDIT_SIGNING_KEY`: PEM, or the raw 32-byte seed in hex or
base64) or a file (`AUDIT_SIGNING_KEY_FILE`). The demo generates one into the git-ignored data folder
(`seed_demo`, or a DEBUG server finding none). A server with DEBUG off and no key configured refuses
to sign, naming the settings, at the moment a checkpoint is needed: never a silent throw-away key,
whose signatures nobody could check later.
"""

import os
from functools import lru_cache
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured

from consortium.evidence import signing
from consortium.evidence.errors import EvidenceError


class SigningKeyMissing(ImproperlyConfigured):
    """No usable signing key: the message says which setting to give."""


def signing_key() -> Ed25519PrivateKey:
    """The configured private key (loaded once per configuration)."""
    return _load(settings.AUDIT_SIGNING_KEY, settings.AUDIT_SIGNING_KEY_FILE, bool(settings.DEBUG),
                 str(settings.AUDIT_DEMO_KEY_FILE))


def public_key() -> Ed25519PublicKey:
    return signing_key().public_key()


def public_key_pem() -> str:
    return signing.public_key_pem(public_key()).decode("ascii")


def fingerprint() -> str:
    """`ed25519:<hex>`, or "" when no key is configured (pages show it only when there is one)."""
    try:
        return signing.fingerprint(signing_key())
    except SigningKeyMissing:
        return ""


def ensure_demo_key(path: Path | str | None = None) -> Path:
    """Generate the demo's key file (owner-only) unless it exists; returns its path."""
    path = Path(path or settings.AUDIT_DEMO_KEY_FILE)
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        # O_EXCL: two processes starting at once cannot each write a different key.
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            return path
        with os.fdopen(fd, "wb") as handle:
            handle.write(signing.private_key_pem(signing.generate_private_key()))
    return path


@lru_cache(maxsize=8)
def _load(text: str, file: str, debug: bool, demo_file: str) -> Ed25519PrivateKey:
    if text:
        return _parse(text.encode("utf-8"), "AUDIT_SIGNING_KEY")
    if file:
        try:
            data = Path(file).read_bytes()
        except OSError as exc:
            raise SigningKeyMissing(f"AUDIT_SIGNING_KEY_FILE={file!r} cannot be read ({exc.strerror}).") from exc
        return _parse(data, f"AUDIT_SIGNING_KEY_FILE={file!r}")
    if debug:
        return _parse(ensure_demo_key(demo_file).read_bytes(), f"the demo key {demo_file}")
    raise SigningKeyMissing(
        "No audit signing key: set AUDIT_SIGNING_KEY (an Ed25519 key, PEM or 32-byte seed in base64) or "
        "AUDIT_SIGNING_KEY_FILE (a file holding one). The demo key is used only with DEBUG=1.")


def _parse(data: bytes, source: str) -> Ed25519PrivateKey:
    try:
        return signing.load_private_key(data)
    except EvidenceError as exc:
        raise SigningKeyMissing(f"{source}: {exc}") from exc
