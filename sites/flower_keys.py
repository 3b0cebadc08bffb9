"""Flower SuperNode public keys: Flower's node authentication uses NIST elliptic-curve keys, which a site
admin has as an OpenSSH public key (`ecdsa-sha2-nistp384 AAAA...`, what `ssh-keygen -t ecdsa -b 384` writes)
or as PEM. Both are read with `cryptography` into one canonical form, the PEM the SuperLink itself keeps, and
a fingerprint, the SHA-256 of the DER encoding. No Django here: the Flower strategy uses it too."""

import hashlib
from typing import NamedTuple

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

# Flower accepts the NIST curves only (`flwr.supercore.primitives.asymmetric.uses_nist_ec_curve`).
NIST_CURVES = (ec.SECP256R1, ec.SECP384R1, ec.SECP521R1)
MAX_KEY_CHARS = 4096


class InvalidNodeKey(ValueError):
    """The text is not a NIST elliptic-curve public key."""


class NodeKey(NamedTuple):
    pem: str
    fingerprint: str


def read_public_key(text: str | bytes) -> NodeKey:
    """The canonical PEM and fingerprint of a SuperNode public key given as OpenSSH or PEM text."""
    raw = text.encode("ascii", "replace") if isinstance(text, str) else text
    raw = raw.strip()
    if not raw or len(raw) > MAX_KEY_CHARS:
        raise InvalidNodeKey("Paste the SuperNode's public key: one OpenSSH line (ecdsa-sha2-nistp384 ...) or a "
                             "PEM block.")
    try:
        key = (serialization.load_pem_public_key(raw) if raw.startswith(b"-----BEGIN")
               else serialization.load_ssh_public_key(raw))
    except (ValueError, UnsupportedAlgorithm):
        raise InvalidNodeKey("That is not a readable public key: paste one OpenSSH line (ecdsa-sha2-nistp384 ...) "
                        "or a PEM block.") from None
    if not isinstance(key, ec.EllipticCurvePublicKey) or not isinstance(key.curve, NIST_CURVES):
        raise InvalidNodeKey("Flower's node authentication takes NIST elliptic-curve keys (P-256, P-384 or P-521), "
                        "e.g. from `ssh-keygen -t ecdsa -b 384`.")
    der = key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    pem = key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    return NodeKey(pem.decode("ascii"), hashlib.sha256(der).hexdigest())
