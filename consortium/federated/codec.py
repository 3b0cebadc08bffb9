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
from typing import Any

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
_TORCH_NAMES = {code: str(dtype).removeprefix("torch.") for code, dtype in _DTYPES.items()}
_ITEM_SIZES = {code: torch.empty((), dtype=dtype).element_size() for code, dtype in _DTYPES.items()}

# Bounds on an untrusted header, whatever its length prefix claims: a few KB per tensor of the expected model
# (a zoo entry takes under 100 bytes), a small `__metadata__`, and tensor names quoted in refusals cut short.
HEADER_BYTES_PER_TENSOR = 4096
MAX_METADATA_BYTES = 4096
MAX_NAME_CHARS = 80


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
    """Parse and validate an untrusted update: size, format, tensor names, shapes, dtypes, finite values.

    The header is checked by `check_header` before the safetensors library sees the bytes, so a hostile
    body is refused in time and memory bounded by the expected model, whatever it claims."""
    if len(data) > max_bytes:
        raise UpdateRejected("too_large", f"The update is {len(data):,} bytes; the limit is {max_bytes:,}.", 413)
    check_header(data, expected)
    try:
        tensors = st_load(data)
    except (SafetensorError, ValueError, RuntimeError) as exc:  # a second opinion; check_header let it through
        raise _malformed(str(exc)) from exc
    for name in expected:
        if not bool(torch.isfinite(tensors[name]).all()):
            raise UpdateRejected("not_finite", f"Tensor {_name(name)} contains NaN or infinite values.")
    return tensors


def header_limit(expected: TensorSpec) -> int:
    """The largest header an update of `expected` may have: generous per tensor, plus the metadata cap."""
    return HEADER_BYTES_PER_TENSOR * max(len(expected), 1) + MAX_METADATA_BYTES + 64


def check_header(data: bytes, expected: TensorSpec) -> dict[str, dict[str, Any]]:
    """The safetensors header, validated against the format and then against `expected` (names, dtypes,
    shapes; offsets contiguous, in bounds and covering the body exactly). Returns the tensor entries."""
    entries = _entries(data, expected)
    missing, extra = set(expected) - set(entries), set(entries) - set(expected)
    if missing or extra:
        raise UpdateRejected("tensor_names", f"Tensor names differ from the global model: missing "
                                             f"{_names(missing)}, unexpected {_names(extra)}.")
    for name, (shape, dtype) in expected.items():
        got_dtype, got_shape = _TORCH_NAMES[entries[name]["dtype"]], entries[name]["shape"]
        if got_dtype != UPDATE_DTYPE:
            raise UpdateRejected("dtype", f"Tensor {_name(name)} is {got_dtype}; updates must be {UPDATE_DTYPE}.")
        if got_dtype != dtype:
            raise UpdateRejected("dtype", f"Tensor {_name(name)} is {got_dtype}; the global model's is {dtype}.")
        if tuple(got_shape) != tuple(shape):
            raise UpdateRejected("shape", f"Tensor {_name(name)} has shape {_clip(str(got_shape))}; "
                                          f"expected {list(shape)}.")
    return entries


def _entries(data: bytes, expected: TensorSpec) -> dict[str, dict[str, Any]]:
    """The header's tensor entries, each well formed, their offsets tiling the data exactly (format only)."""
    if len(data) < 8:
        raise _malformed(f"{len(data)} bytes, shorter than the 8-byte header length")
    length, limit = int.from_bytes(data[:8], "little"), header_limit(expected)
    if 8 + length > len(data):
        raise _malformed(f"the header length {length:,} runs past the end of the {len(data):,}-byte body")
    if length > limit:
        raise UpdateRejected("header_too_large", f"The safetensors header is {length:,} bytes; an update of this "
                                                 f"model has at most {limit:,}.")
    header = _parse_json(data[8:8 + length])
    metadata = header.pop("__metadata__", None)
    if metadata is not None:
        _check_metadata(metadata)
    for name, entry in header.items():
        _check_entry(name, entry)
    _check_offsets(header, len(data) - 8 - length)
    return header


class _DuplicateKey(Exception):
    def __init__(self, key: str):
        super().__init__(key)
        self.key = key


def _unique_object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """`object_pairs_hook`: JSON allows a repeated key (the last wins); a safetensors header must not."""
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise _DuplicateKey(key)
        result[key] = value
    return result


def _no_constant(name: str) -> None:
    raise ValueError(f"{name} is not JSON")


def _parse_json(raw: bytes) -> dict[str, Any]:
    try:
        text = raw.decode("utf-8")  # strict: json.loads of bytes would also guess UTF-16 or UTF-32
    except UnicodeDecodeError:
        raise _malformed("the header is not UTF-8") from None
    try:
        header = json.loads(text, object_pairs_hook=_unique_object, parse_constant=_no_constant)
    except _DuplicateKey as exc:
        message = f"The safetensors header names {_name(exc.key)} more than once."
        raise UpdateRejected("duplicate_names", message) from None
    except (ValueError, RecursionError):  # RecursionError: nesting deeper than the parser's stack
        raise _malformed("the header is not JSON") from None
    if not isinstance(header, dict):
        raise _malformed("the header is not a JSON object")
    return header


def _check_metadata(metadata: Any) -> None:
    if not isinstance(metadata, dict) or not all(isinstance(k, str) and isinstance(v, str)
                                                 for k, v in metadata.items()):
        raise _malformed("__metadata__ must map strings to strings")
    size = sum(len(k.encode()) + len(v.encode()) for k, v in metadata.items())
    if size > MAX_METADATA_BYTES:
        raise UpdateRejected("metadata_too_large", f"The safetensors __metadata__ holds {size:,} bytes; "
                                                   f"at most {MAX_METADATA_BYTES:,} are accepted.")


def _is_count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _check_entry(name: str, entry: Any) -> None:
    """One tensor's entry: exactly a known dtype, a shape of counts, and [begin, end] byte offsets that
    hold exactly the shape's elements."""
    if not isinstance(entry, dict) or set(entry) != {"dtype", "shape", "data_offsets"}:
        raise _malformed(f"the entry of tensor {_name(name)} is not {{dtype, shape, data_offsets}}")
    dtype, shape, offsets = entry["dtype"], entry["shape"], entry["data_offsets"]
    if not isinstance(dtype, str) or dtype not in _DTYPES:
        raise _malformed(f"tensor {_name(name)} has an unknown dtype")
    if not isinstance(shape, list) or not all(_is_count(n) for n in shape):
        raise _malformed(f"tensor {_name(name)} has a malformed shape")
    if not (isinstance(offsets, list) and len(offsets) == 2 and all(_is_count(n) for n in offsets)
            and offsets[0] <= offsets[1]):
        raise _malformed(f"tensor {_name(name)} has malformed data_offsets")
    if offsets[1] - offsets[0] != math.prod(shape) * _ITEM_SIZES[dtype]:
        raise _malformed(f"the data_offsets of tensor {_name(name)} do not hold its shape")


def _check_offsets(entries: dict[str, dict[str, Any]], data_length: int) -> None:
    """The tensors' bytes follow each other from 0 without gap or overlap and end where the body ends."""
    position = 0
    for entry in sorted(entries.values(), key=lambda e: tuple(e["data_offsets"])):
        begin, end = entry["data_offsets"]
        if begin != position:
            raise _malformed("tensor data overlap" if begin < position else "tensor data leave a gap")
        position = end
    if position > data_length:
        raise _malformed(f"tensor data run past the end of the body ({position:,} > {data_length:,} bytes)")
    if position < data_length:
        raise _malformed(f"{data_length - position:,} bytes follow the last tensor")


def _malformed(reason: str) -> UpdateRejected:
    return UpdateRejected("not_safetensors", f"The body is not a valid safetensors file ({_clip(reason, 300)}).")


def _clip(text: str, limit: int = MAX_NAME_CHARS) -> str:
    return text if len(text) <= limit else text[:limit - 1] + "…"


def _name(name: str) -> str:
    """A tensor name an untrusted body chose, quoted and cut short for a message."""
    return repr(_clip(name))


def _names(names: set[str], shown: int = 5) -> str:
    """At most `shown` names, then how many more: a refusal stays short however many names a body sends."""
    if not names:
        return "none"
    first = sorted(names)[:shown]  # as many as the header cap lets in: a few hundred at most
    more = f" and {len(names) - shown:,} more" if len(names) > shown else ""
    return f"[{', '.join(_name(name) for name in first)}]{more}"


def file_name(digest: str) -> str:
    """Stored files are named by their content's SHA-256."""
    return f"{digest}.safetensors"


def write_file(data: bytes, directory: Path) -> tuple[Path, str]:
    """Store bytes content-addressed (name = SHA-256): rewriting the same update is harmless.

    Each writer uses its own temporary file, so two processes storing the same bytes at once never
    expose a half-written file under the final name (a shared ``.tmp`` name could be truncated by the
    second writer while the first renames it)."""
    digest = sha256_hex(data)
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / file_name(digest)
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
