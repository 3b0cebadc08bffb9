"""Malformed updates, generated: mutations of a valid safetensors update as a hostile or broken site
agent might send them. `corpus` yields (label, body, extra headers) for the upload endpoint; the labels
say which mutation made each case so a failure names it."""

import json
import pickle
import random
import struct
from collections.abc import Iterator
from typing import Any

Case = tuple[str, bytes, dict[str, str]]


def split(body: bytes) -> tuple[dict[str, Any], bytes]:
    """A safetensors body's header (parsed) and its data."""
    length = int.from_bytes(body[:8], "little")
    return json.loads(body[8:8 + length]), body[8 + length:]


def join(header: dict[str, Any] | str | bytes, data: bytes, *, length: int | None = None) -> bytes:
    """A safetensors body written by hand: the 8-byte length prefix, the header, the data."""
    if isinstance(header, dict):
        header = json.dumps(header, separators=(",", ":"))
    text = header.encode() if isinstance(header, str) else header
    return (len(text) if length is None else length).to_bytes(8, "little") + text + data


def zero_size_tensors(body: bytes, count: int) -> bytes:
    """The valid update plus `count` extra tensors of shape [0] (the issue's million-tensor body)."""
    header, data = split(body)
    end = len(data)
    extra = {f"z{i}": {"dtype": "F32", "shape": [0], "data_offsets": [end, end]} for i in range(count)}
    return join({**header, **extra}, data)


def _tensor_names(header: dict[str, Any]) -> list[str]:
    return sorted(name for name in header if name != "__metadata__")


def _with_value(body: bytes, rng: random.Random, value: float) -> bytes:
    header, data = split(body)
    name = rng.choice(_tensor_names(header))
    begin, end = header[name]["data_offsets"]
    at = begin + 4 * rng.randrange((end - begin) // 4)
    return join(header, data[:at] + struct.pack("<f", value) + data[at + 4:])


def _structure(body: bytes, rng: random.Random) -> Iterator[Case]:
    header, data = split(body)
    names = _tensor_names(header)
    for name in names:
        yield f"duplicate {name}", join(json.dumps(header)[:-1] + f', "{name}": {json.dumps(header[name])}}}', data), {}
        for dtype in ("F64", "F16", "BF16", "I32", "I64", "U8", "BOOL", "F8", "float32", 7):
            yield f"dtype {dtype} of {name}", join({**header, name: {**header[name], "dtype": dtype}}, data), {}
        shape = header[name]["shape"]
        for wrong in ([*shape, 1], shape[::-1] + [2], [0], [], [-1], [10**30], [1.5], "3", [True]):
            yield f"shape {wrong} of {name}", join({**header, name: {**header[name], "shape": wrong}}, data), {}
        begin, end = header[name]["data_offsets"]
        for offsets in ([begin + 4, end + 4], [begin, end - 4], [end, begin], [0, 10**20], [-4, end], [begin],
                        [begin, end, end], None, [str(begin), end]):
            yield f"offsets {offsets} of {name}", join({**header, name: {**header[name], "data_offsets": offsets}},
                                                       data), {}
        others = {key: value for key, value in header.items() if key != name}
        yield f"missing {name}", join(others, data), {}
        yield f"renamed {name}", join({**others, name + ".x": header[name]}, data), {}
        yield f"extra key in {name}", join({**header, name: {**header[name], "extra": 1}}, data), {}
        yield f"entry of {name} not an object", join({**header, name: [1, 2]}, data), {}
    pool = [None, True, -1, 0, 2**70, 1.5, "", "F32", [], [0], [[1]], {}, {"a": 1}, "x" * 300]
    for _ in range(40):  # one field of one entry set to a random JSON value of the wrong kind or size
        name, field = rng.choice(names), rng.choice(["dtype", "shape", "data_offsets"])
        value = rng.choice(pool)
        yield f"{field} of {name} = {str(value)[:20]}", join({**header, name: {**header[name], field: value}}, data), {}
    for count in (1, 2, 10, rng.randrange(3, 100)):
        end = len(data)
        extra = {f"extra.{i}": {"dtype": "F32", "shape": [1], "data_offsets": [end + 4 * i, end + 4 * i + 4]}
                 for i in range(count)}
        yield f"{count} extra tensors", join({**header, **extra}, data + b"\x00" * 4 * count), {}


def _framing(body: bytes, rng: random.Random) -> Iterator[Case]:
    header, data = split(body)
    length = int.from_bytes(body[:8], "little")
    for cut in sorted({0, 1, 7, 8, 9, length // 2, length + 7, len(body) - 1, *rng.sample(range(1, len(body)), 30)}):
        yield f"truncated at {cut}", body[:cut], {}
    for claimed in (0, 1, 2, length - 1, length + 1, length + 8, len(body), len(body) - 8, 2**31, 2**63, 2**64 - 1,
                    *(rng.randrange(2**64) for _ in range(16))):
        yield f"length prefix {claimed}", claimed.to_bytes(8, "little") + body[8:], {}
    for extra in (1, 3, 4, 8, 1000, rng.randrange(2, 5000)):
        yield f"{extra} trailing bytes", body + rng.randbytes(extra), {}
    for _ in range(40):
        at = 8 + rng.randrange(length)
        # Not JSON whitespace, and not the byte that was there: either would leave a valid update.
        byte = rng.choice([b for b in range(256) if b not in b" \t\r\n" and b != body[at]])
        yield f"header byte {at} garbled", body[:at] + bytes([byte]) + body[at + 1:], {}
    for _ in range(8):
        junk = rng.randbytes(rng.randrange(1, length))
        yield "header of random bytes", join(junk + b" " * (length - len(junk)), data), {}
    for bad in (b"\xff", b"\xc3\x28", b"\xed\xa0\x80", b"\xf8\x88\x80\x80\x80"):
        text = json.dumps(header).encode()
        yield f"non-UTF-8 {bad!r}", join(text[:2] + bad + text[2:], data), {}
    yield "UTF-16 header", join(json.dumps(header).encode("utf-16"), data), {}
    for depth in (100, 1000, 5000, 20000):
        yield f"nested {depth} deep", join("[" * depth + "]" * depth, data), {}
        yield f"nested objects {depth} deep", join('{"a":' * depth + "1" + "}" * depth, data), {}
    for text in ("", "null", "[]", "1", '"x"', "{", '{"__metadata__": 1}', '{"a": NaN}', '{"a": Infinity}'):
        yield f"header {text!r}", join(text, data), {}


def _values(body: bytes, rng: random.Random) -> Iterator[Case]:
    for value in (float("nan"), float("inf"), float("-inf")):
        for _ in range(10):
            yield f"value {value}", _with_value(body, rng, value), {}
    header, data = split(body)
    huge = b"".join(struct.pack("<f", 3.4e38) for _ in range(len(data) // 4))
    yield "every value 3.4e38", join(header, huge), {}
    yield "every value -3.4e38", join(header, huge.replace(struct.pack("<f", 3.4e38), struct.pack("<f", -3.4e38))), {}


def _sizes(body: bytes, rng: random.Random) -> Iterator[Case]:
    header, data = split(body)
    for size in (4097, 100_000, 2_000_000):
        yield f"metadata of {size:,} bytes", join({"__metadata__": {"pad": "x" * size}, **header}, data), {}
    yield "metadata of many keys", join({"__metadata__": {f"k{i}": "v" * 40 for i in range(500)}, **header}, data), {}
    yield "metadata not strings", join({"__metadata__": {"k": 1}, **header}, data), {}
    yield "metadata nested", join({"__metadata__": {"k": {"a": "b"}}, **header}, data), {}
    for count in (1000, 5000, 20_000, rng.randrange(1000, 10_000)):
        yield f"{count:,} zero-size tensors", zero_size_tensors(body, count), {}
    yield "a header padded past its cap", join(json.dumps(header) + " " * 200_000, data), {}


def _other(body: bytes, rng: random.Random, tensors: dict[str, Any]) -> Iterator[Case]:
    yield "pickle", pickle.dumps(tensors), {}
    yield "empty", b"", {}
    yield "eight zero bytes", b"\x00" * 8, {}
    for size in (1, 16, 1000, 100_000):
        yield f"{size} random bytes", rng.randbytes(size), {}
    for encoding in ("gzip", "deflate", "br", "x-gzip, identity", "compress"):
        yield f"Content-Encoding {encoding}", body, {"HTTP_CONTENT_ENCODING": encoding}
    for count in (str(2**64), "99999999999999999999", "0", "-5", "1e3", "12" * 30, "", "٣"):
        yield f"X-Num-Examples {count[:30]!r}", body, {"HTTP_X_NUM_EXAMPLES": count}
    for metrics in ('{"train_loss": NaN}', '{"x": Infinity}', '{"val_auc": 1e999}', "[" * 5000 + "]" * 5000,
                    json.dumps({"pad": "x" * 5000}), '{"val_examples": ' + "9" * 40 + "}", "not json", "[]"):
        yield f"X-Metrics {metrics[:30]!r}", body, {"HTTP_X_METRICS": metrics}
    yield "Idempotency-Key of 101 characters", body, {"HTTP_IDEMPOTENCY_KEY": "k" * 101}
    yield "X-Round of 10,000 digits", body, {"HTTP_X_ROUND": "9" * 10_000}


def corpus(body: bytes, tensors: dict[str, Any], *, seed: int = 0) -> list[Case]:
    """Every malformed variant of `body` (a valid update of `tensors`), deterministic for a given seed."""
    rng = random.Random(seed)  # a fixed corpus: a failure is reproducible, never a flake
    cases = [*_structure(body, rng), *_framing(body, rng), *_values(body, rng), *_sizes(body, rng),
             *_other(body, rng, tensors)]
    return [case for case in cases if case[1] != body or case[2]]  # a mutation that changed nothing is no case
