"""Key agreement, seeds and share encryption: X25519, HKDF-SHA256 and ChaCha20-Poly1305 from `cryptography`.

Each site makes two X25519 key pairs per round: one to encrypt the shares it sends to other sites (so
the coordinator, which relays them, cannot read them) and one whose pairwise agreements seed the
pairwise masks. Only the second one's private key is ever secret-shared, so recovering a dropped
site's masks never exposes the channel that carried its shares. Every derived key is bound to the
round's context, so keys or ciphertexts from another round are useless here.
"""

import hashlib
import os

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from consortium.federated.secagg.errors import SecAggError

KEY_BYTES = 32
NONCE_BYTES = 12
_RAW = {"encoding": serialization.Encoding.Raw, "format": serialization.PublicFormat.Raw}


def new_private_key() -> bytes:
    """A fresh X25519 private key (32 bytes from the OS)."""
    return X25519PrivateKey.generate().private_bytes(
        serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption())


def public_key(private: bytes) -> bytes:
    return X25519PrivateKey.from_private_bytes(private).public_key().public_bytes(**_RAW)


def _derive(private: bytes, peer_public: bytes, *, purpose: bytes, context: bytes) -> bytes:
    try:
        shared = X25519PrivateKey.from_private_bytes(private).exchange(X25519PublicKey.from_public_bytes(peer_public))
    except ValueError as error:  # a low-order point gives an all-zero secret: refuse it
        raise SecAggError(f"A public key is not a usable X25519 key ({error}).") from error
    return HKDF(algorithm=hashes.SHA256(), length=KEY_BYTES, salt=None,
                info=b"consortium-secagg/" + purpose + b"/" + context).derive(shared)


def pairwise_seed(private: bytes, peer_public: bytes, *, context: bytes) -> bytes:
    """The seed two sites share for their pairwise mask; the same from either end."""
    return _derive(private, peer_public, purpose=b"mask", context=context)


def _aad(context: bytes, sender: str, recipient: str) -> bytes:
    return b"\x00".join([context, sender.encode(), recipient.encode()])


def encrypt_for(private: bytes, recipient_public: bytes, plaintext: bytes, *, context: bytes, sender: str,
                recipient: str) -> bytes:
    """Authenticated encryption of `plaintext` from `sender` to `recipient` (nonce || ciphertext || tag)."""
    key = _derive(private, recipient_public, purpose=b"share", context=context)
    nonce = os.urandom(NONCE_BYTES)
    return nonce + ChaCha20Poly1305(key).encrypt(nonce, plaintext, _aad(context, sender, recipient))


def decrypt_from(private: bytes, sender_public: bytes, ciphertext: bytes, *, context: bytes, sender: str,
                 recipient: str) -> bytes:
    """The plaintext, or a refusal if anyone changed a byte, the round, the sender or the recipient."""
    key = _derive(private, sender_public, purpose=b"share", context=context)
    try:
        return ChaCha20Poly1305(key).decrypt(ciphertext[:NONCE_BYTES], ciphertext[NONCE_BYTES:],
                                             _aad(context, sender, recipient))
    except (InvalidTag, ValueError) as error:
        raise SecAggError(f"The encrypted shares from site {sender} failed authentication (tampered or "
                          "not meant for this site and round).") from error


def commitment(seed: bytes, *, context: bytes, site: str) -> bytes:
    """A hiding, binding commitment to a 32-byte random seed: lets the coordinator check what it rebuilt."""
    return hashlib.sha256(b"consortium-secagg/commit\x00" + context + b"\x00" + site.encode() + b"\x00" + seed).digest()
