"""Tensors on the wire and on disk: safetensors only (never pickle, never `torch.load` of an upload),
with every check an untrusted update must pass before anything is stored. Imports no Django."""

import hashlib
import json
import math
import mmap
import os
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

TensorSpec = dict[str, tuple[tuple[int, ...], str]]

# Updates are float32 only: the zoo's models are, and a float64 or integer update would double the
# storage or dodge the finiteness check.
UPDATE_DTYPE = "float32"

# safetensors dtype codes -> torch dtypes, for the memory-mapped reader.
_DTYPES = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
    "BOOL": torch.bool,
}


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
        if got[name][1] != UPDATE_DTYPE:
            raise UpdateRejected("dtype", f"Tensor {name!r} is {got[name][1]}; updates must be {UPDATE_DTYPE}.")
        if got[name][1] != dtype:
            raise UpdateRejected("dtype", f"Tensor {name!r} is {got[name][1]}; the global model's is {dtype}.")
        if got[name][0] != shape:
            raise UpdateRejected("shape", f"Tensor {name!r} has shape {list(got[name][0])}; expected {list(shape)}.")
        if not bool(torch.isfinite(tensors[name]).all()):
            raise UpdateRejected("not_finite", f"Tensor {name!r} contains NaN or infinite values.")
    return tensors


def write_file(data: bytes, directory: Path) -> tuple[Path, str]:
    """Store bytes content-addressed (name = SHA-256): rewriting the same update is harmless.

    Each writer uses its own temporary file, so two processes storing the same bytes at once never
    expose a half-written file under the final name (a shared ``.tmp`` name could be truncated by the
    second writer while the first renames it)."""
    digest = sha256_hex(data)
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{digest}.safetensors"
    if not path.exists():
        fd, tmp_name = tempfile.mkstemp(dir=directory, prefix=f".{digest}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as tmp:
                tmp.write(data)
            os.replace(tmp_name, path)
        except BaseException:
            Path(tmp_name).unlink(missing_ok=True)
            raise
    return path, digest


def read_file(path: Path) -> dict[str, torch.Tensor]:
    """Every tensor of a stored safetensors file, in memory (use `LazyTensors` to stream instead)."""
    return st_load(Path(path).read_bytes())


class LazyTensors(Mapping[str, torch.Tensor]):
    """A stored safetensors file whose tensors are zero-copy views of one memory map, so strategies stream.

    safetensors validates the header and every offset once, when the file is opened. A tensor is read
    only when indexed, straight from the page cache without a copy. Treat the views as read-only: the
    map is private (copy-on-write), so a write never reaches the file, and `release` discards it.
    Strategies call `release` after each tensor or chunk so that the resident set stays about one
    chunk per file instead of growing to the whole file.
    """

    def __init__(self, path: Path):
        self.path = Path(path)
        with safe_open(str(self.path), framework="pt") as handle:
            names = list(handle.keys())
        with open(self.path, "rb") as file:
            header_len = int.from_bytes(file.read(8), "little")
            header = json.loads(file.read(header_len))
            # mmap refuses an empty length; a file always has its 8-byte prefix and a header.
            self._map = mmap.mmap(file.fileno(), 0, access=mmap.ACCESS_COPY)
        self._data_start = 8 + header_len
        self._entries = {name: header[name] for name in names}

    def __getitem__(self, name: str) -> torch.Tensor:
        entry = self._entries.get(name)
        if entry is None:
            raise KeyError(name)
        dtype, shape = _DTYPES[entry["dtype"]], tuple(entry["shape"])
        count = math.prod(shape)
        if count == 0:
            return torch.empty(shape, dtype=dtype)
        offset = self._data_start + entry["data_offsets"][0]
        return torch.frombuffer(self._map, dtype=dtype, count=count, offset=offset).view(shape)

    def release(self, name: str, start: int = 0, stop: int | None = None) -> None:
        """Drop the mapped pages of elements [start, stop) of `name` from this process's resident set.

        The page cache keeps the data, so a later read costs a page fault, not a disk read."""
        entry = self._entries[name]
        item = torch.empty((), dtype=_DTYPES[entry["dtype"]]).element_size()
        begin, end = entry["data_offsets"]
        stop_byte = end if stop is None else min(end, begin + stop * item)
        low = (self._data_start + begin + start * item) // mmap.PAGESIZE * mmap.PAGESIZE
        high = min(len(self._map), -(-(self._data_start + stop_byte) // mmap.PAGESIZE) * mmap.PAGESIZE)
        if high > low:
            self._map.madvise(mmap.MADV_DONTNEED, low, high - low)

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)
