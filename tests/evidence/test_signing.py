"""Ed25519 keys as production supplies them, fingerprints, and signed checkpoints."""

import base64
from dataclasses import asdict
from datetime import UTC, datetime

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ec import SECP256R1, generate_private_key

from consortium.evidence import signing
from consortium.evidence.checkpoint import parse_checkpoint, sign_checkpoint, verify_checkpoint
from consortium.evidence.errors import EvidenceError

HEAD, ROOT = "ab" * 32, bytes.fromhex("cd" * 32)


@pytest.fixture(scope="module")
def key():
    return signing.generate_private_key()


def seed_of(key) -> bytes:
    return key.private_bytes(serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption())


def test_it_loads_the_same_private_key_from_pem_a_hex_seed_and_a_base64_seed(key):
    seed = seed_of(key)
    for text in [signing.private_key_pem(key), seed.hex(), base64.b64encode(seed).decode(), f"  {seed.hex()}\n", seed]:
        assert signing.fingerprint(signing.load_private_key(text)) == signing.fingerprint(key)


def test_it_loads_the_public_key_from_pem_and_raw_and_names_it_by_its_fingerprint(key):
    public = key.public_key()
    raw = signing.public_key_raw(public)
    fingerprint = signing.fingerprint(public)
    assert fingerprint.startswith("ed25519:") and len(fingerprint) == len("ed25519:") + 64
    assert fingerprint == signing.fingerprint(key) != signing.fingerprint(signing.generate_private_key())
    for text in [signing.public_key_pem(public), raw.hex(), base64.b64encode(raw)]:
        assert signing.fingerprint(signing.load_public_key(text)) == fingerprint


def test_it_refuses_keys_that_are_not_ed25519_or_not_keys():
    other = generate_private_key(SECP256R1())
    pem = other.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    with pytest.raises(EvidenceError, match="public key: not an Ed25519 key"):
        signing.load_public_key(pem)
    with pytest.raises(EvidenceError, match="private key: expected PEM or a 32-byte seed"):
        signing.load_private_key("not a key")
    with pytest.raises(EvidenceError, match="public key: expected PEM or 32 raw bytes"):
        signing.load_public_key("ab" * 31)


def test_it_signs_a_checkpoint_that_verifies_with_the_public_key(key):
    moment = datetime(2025, 5, 1, 12, 0, tzinfo=UTC)
    signed = sign_checkpoint(key, log_id="consortium-audit", seq=12, chain_head=HEAD, merkle_root=ROOT,
                             issued_at=moment)
    checkpoint = verify_checkpoint(signed, key.public_key())
    assert asdict(checkpoint) == {
        "version": 1, "log_id": "consortium-audit", "seq": 12, "chain_head": HEAD, "merkle_root": ROOT.hex(),
        "issued_at": "2025-05-01T12:00:00.000000+00:00", "key_fingerprint": signing.fingerprint(key),
    }


@pytest.mark.parametrize(("field", "value"), [("seq", 13), ("chain_head", "ef" * 32), ("merkle_root", "00" * 32),
                                              ("issued_at", "2030-01-01T00:00:00.000000+00:00"), ("log_id", "other")])
def test_it_refuses_a_checkpoint_with_any_field_changed_after_signing(key, field, value):
    signed = sign_checkpoint(key, log_id="consortium-audit", seq=12, chain_head=HEAD, merkle_root=ROOT)
    with pytest.raises(EvidenceError, match="^checkpoint: signature invalid$"):
        verify_checkpoint({**signed, field: value}, key.public_key())


def test_it_names_the_key_when_a_checkpoint_was_signed_by_another(key):
    other = signing.generate_private_key()
    signed = sign_checkpoint(other, log_id="consortium-audit", seq=1, chain_head=HEAD, merkle_root=ROOT)
    with pytest.raises(EvidenceError, match=f"signed by key {signing.fingerprint(other)}, not by the given key"):
        verify_checkpoint(signed, key.public_key())
    # Claiming the right fingerprint does not help: the signature is still the other key's.
    forged = {**signed, "key_fingerprint": signing.fingerprint(key)}
    with pytest.raises(EvidenceError, match="signature invalid"):
        verify_checkpoint(forged, key.public_key())


def test_it_refuses_a_signature_made_for_another_kind_of_object(key):
    signed = sign_checkpoint(key, log_id="consortium-audit", seq=1, chain_head=HEAD, merkle_root=ROOT)
    fields = {k: v for k, v in signed.items() if k != "signature"}
    assert signing.verify(key.public_key(), "consortium.audit.checkpoint.v1", fields, signed["signature"])
    assert not signing.verify(key.public_key(), "consortium.audit.export-manifest.v1", fields, signed["signature"])


def test_it_names_what_is_malformed_in_a_checkpoint(key):
    signed = sign_checkpoint(key, log_id="consortium-audit", seq=1, chain_head=HEAD, merkle_root=ROOT)
    with pytest.raises(EvidenceError, match=r"missing \['signature'\]"):
        parse_checkpoint({k: v for k, v in signed.items() if k != "signature"})
    with pytest.raises(EvidenceError, match="chain_head must be 64 lowercase hex digits"):
        parse_checkpoint({**signed, "chain_head": "AB" * 32})
    with pytest.raises(EvidenceError, match="seq must be a count of events"):
        parse_checkpoint({**signed, "seq": -1})
    with pytest.raises(EvidenceError, match="not a JSON object"):
        parse_checkpoint([])
