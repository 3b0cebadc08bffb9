"""Tensors on the wire and on disk: safetensors only (never pickle, never `torch.load` of an upload),
with every check an untrusted update must pass before anything is stored. Imports no Django."""

import hashlib
import math
from collections.abc import Iterator, Mapping
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

TensorSpec = dict[str, tuple[tuple[int, ...], str]]


class UpdateRejected(ValueError):
    """An update that fails validation; `code` names the failed check for the JSON error."""

    def __init__(self, code: str, message: str, status: int = 400):
        super().__init__(message)
        self.code = code
        self.message = message
        self.status = status


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def encode(tensors: Mapping[str, torch.Tensor], metadata: dict[str, str] | None = None) -> bytes:
    """Serialise tensors (made contiguous, on the CPU) to safetensors bytes."""
    prepared = {name: tensor.detach().cpu().contiguous() for name, tensor in tensors.items()}
    return st_save(prepared, metadata=metadata)


def spec_of(tensors: Mapping[str, torch.Tensor]) -> TensorSpec:
    """Names, shapes and dtypes: what every update must match exactly."""
    return {name: (tuple(tensor.shape), str(tensor.dtype).removeprefix("torch.")) for name, tensor in tensors.items()}


def expected_size(spec: TensorSpec) -> int:
    """Bytes of tensor data the spec describes (the header comes on top)."""
    return sum(math.prod(shape) * torch.empty((), dtype=getattr(torch, dtype)).element_size()
               for shape, dtype in spec.values())


def decode(data: bytes, *, expected: TensorSpec, max_bytes: int) -> dict[str, torch.Tensor]:
    """Parse and validate an untrusted update: size, format, tensor names, shapes, dtypes, finite values."""
    if len(data) > max_bytes:
        raise UpdateRejected("too_large", f"The update is {len(data):,} bytes; the limit is {max_bytes:,}.", 413)
    try:
        tensors = st_load(data)
    except (SafetensorError, ValueError, RuntimeError) as exc:
        raise UpdateRejected("not_safetensors", f"The body is not a valid safetensors file ({exc}).") from exc
    missing, extra = sorted(set(expected) - set(tensors)), sorted(set(tensors) - set(expected))
    if missing or extra:
        raise UpdateRejected("tensor_names", f"Tensor names differ from the global model: missing {missing or 'none'}, "
                                             f"unexpected {extra or 'none'}.")
    got = spec_of(tensors)
    for name, (shape, dtype) in expected.items():
        if got[name][1] != dtype:
            raise UpdateRejected("dtype", f"Tensor {name!r} is {got[name][1]}; the global model's is {dtype}.")
        if got[name][0] != shape:
            raise UpdateRejected("shape", f"Tensor {name!r} has shape {list(got[name][0])}; expected {list(shape)}.")
        if not bool(torch.isfinite(tensors[name]).all()):
            raise UpdateRejected("not_finite", f"Tensor {name!r} contains NaN or infinite values.")
    return tensors


def write_file(data: bytes, directory: Path) -> tuple[Path, str]:
    """Store bytes content-addressed (name = SHA-256): rewriting the same update is harmless."""
    digest = sha256_hex(data)
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{digest}.safetensors"
    if not path.exists():
        tmp = path.with_suffix(".tmp")
        tmp.write_bytes(data)
        tmp.replace(path)
    return path, digest


def read_file(path: Path) -> dict[str, torch.Tensor]:
    return st_load(Path(path).read_bytes())


class LazyTensors(Mapping[str, torch.Tensor]):
    """A stored safetensors file read one tensor at a time (memory-mapped), so strategies can stream."""

    def __init__(self, path: Path):
        self.path = Path(path)
        with safe_open(str(self.path), framework="pt") as handle:
            self._names = list(handle.keys())

    def __getitem__(self, name: str) -> torch.Tensor:
        if name not in self._names:
            raise KeyError(name)
        with safe_open(str(self.path), framework="pt") as handle:
            return handle.get_tensor(name)

    def __iter__(self) -> Iterator[str]:
        return iter(self._names)

    def __len__(self) -> int:
        return len(self._names)
