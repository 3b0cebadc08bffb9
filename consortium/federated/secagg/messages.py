"""What the sites and the coordinator send each other, with a JSON-safe wire form (base64 for bytes).

Everything a site sends passes through the coordinator; the shares are end-to-end encrypted to their
recipients, so the coordinator relays them without being able to read them."""

import base64
import hashlib
from dataclasses import dataclass

import numpy as np
from safetensors import numpy as safetensors_numpy

from consortium.federated.secagg.errors import SecAggError


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _unb64(text: object, *, what: str, size: int | None = None) -> bytes:
    try:
        data = base64.b64decode(str(text), validate=True)
    except ValueError as error:
        raise SecAggError(f"{what} is not valid base64.") from error
    if size is not None and len(data) != size:
        raise SecAggError(f"{what} must be {size} bytes, not {len(data)}.")
    return data


def _field(payload: dict, name: str) -> object:
    if not isinstance(payload, dict) or name not in payload:
        raise SecAggError(f"The message lacks the field {name!r}.")
    return payload[name]


@dataclass(frozen=True)
class Keys:
    """Stage 1 (keys): a site's two public keys for this round."""

    site: str
    encryption_key: bytes
    mask_key: bytes

    def to_wire(self) -> dict:
        return {"site": self.site, "encryption_key": _b64(self.encryption_key), "mask_key": _b64(self.mask_key)}

    @classmethod
    def from_wire(cls, payload: dict) -> "Keys":
        return cls(str(_field(payload, "site")),
                   _unb64(_field(payload, "encryption_key"), what="encryption_key", size=32),
                   _unb64(_field(payload, "mask_key"), what="mask_key", size=32))


@dataclass(frozen=True)
class Shares:
    """Stage 2 (shares): a commitment to the self-mask seed, and one ciphertext per neighbour."""

    site: str
    commitment: bytes
    ciphertexts: dict[str, bytes]

    def to_wire(self) -> dict:
        return {"site": self.site, "commitment": _b64(self.commitment),
                "ciphertexts": {to: _b64(ct) for to, ct in sorted(self.ciphertexts.items())}}

    @classmethod
    def from_wire(cls, payload: dict) -> "Shares":
        ciphertexts = _field(payload, "ciphertexts")
        if not isinstance(ciphertexts, dict):
            raise SecAggError("ciphertexts must map recipients to base64 strings.")
        return cls(str(_field(payload, "site")), _unb64(_field(payload, "commitment"), what="commitment", size=32),
                   {str(to): _unb64(ct, what=f"the ciphertext for {to}") for to, ct in ciphertexts.items()})


@dataclass(frozen=True)
class MaskedInput:
    """Stage 3 (masked inputs): the masked ring vector, its SHA-256, and the neighbours it was masked with."""

    site: str
    vector: np.ndarray
    masked_with: tuple[str, ...]

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.vector.tobytes()).hexdigest()

    def to_safetensors(self) -> bytes:
        """The wire and storage form: safetensors holding one uint32 tensor "masked" (never pickle)."""
        return safetensors_numpy.save({"masked": self.vector.astype("<u4", copy=False)})

    @staticmethod
    def from_safetensors(data: bytes, *, length: int, sha256: str | None = None) -> np.ndarray:
        """The vector from its safetensors bytes: one tensor "masked" of `length` uint32 values and nothing else;
        refuses anything else, and bytes that do not match `sha256` (altered in transit or at rest)."""
        if sha256 is not None and hashlib.sha256(data).hexdigest() != sha256:
            raise SecAggError("The masked input does not match its SHA-256 (altered in transit or at rest).")
        if len(data) > 4 * length + 1024:
            raise SecAggError(f"A masked input of {length} values cannot be {len(data)} bytes.")
        try:
            tensors = safetensors_numpy.load(data)
        except Exception as error:  # noqa: BLE001 - whatever the parser says, it is not a masked input
            raise SecAggError(f"The masked input is not a safetensors file ({error}).") from error
        vector = tensors.get("masked")
        if set(tensors) != {"masked"} or vector is None or vector.dtype != np.uint32 or vector.shape != (length,):
            raise SecAggError(f"A masked input must hold exactly one tensor \"masked\" of {length} uint32 values.")
        return vector.astype(np.uint32)


@dataclass(frozen=True)
class UnmaskRequest:
    """Stage 4 (unmasking), coordinator to survivors: whose masked input counts and who dropped out."""

    survivors: tuple[str, ...]
    dropped: tuple[str, ...]

    def to_wire(self) -> dict:
        return {"survivors": list(self.survivors), "dropped": list(self.dropped)}

    @classmethod
    def from_wire(cls, payload: dict) -> "UnmaskRequest":
        return cls(tuple(map(str, _field(payload, "survivors"))), tuple(map(str, _field(payload, "dropped"))))


@dataclass(frozen=True)
class Unmask:
    """Stage 4 (unmasking), site to coordinator: self-mask shares of survivors, mask-key shares of dropouts."""

    site: str
    self_mask_shares: dict[str, bytes]
    mask_key_shares: dict[str, bytes]

    def to_wire(self) -> dict:
        return {"site": self.site,
                "self_mask_shares": {s: _b64(v) for s, v in sorted(self.self_mask_shares.items())},
                "mask_key_shares": {s: _b64(v) for s, v in sorted(self.mask_key_shares.items())}}

    @classmethod
    def from_wire(cls, payload: dict) -> "Unmask":
        def shares(name: str) -> dict[str, bytes]:
            value = _field(payload, name)
            if not isinstance(value, dict):
                raise SecAggError(f"{name} must map sites to base64 shares.")
            return {str(s): _unb64(v, what=f"a share of {s}", size=66) for s, v in value.items()}
        self_mask, mask_key = shares("self_mask_shares"), shares("mask_key_shares")
        if set(self_mask) & set(mask_key):
            raise SecAggError("An answer reveals both kinds of share for one site.")
        return cls(str(_field(payload, "site")), self_mask, mask_key)
