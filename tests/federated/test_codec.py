"""The codec refuses every malformed update before anything is stored, and round-trips good ones."""

import json
import pickle

import pytest
import torch

from consortium.federated import codec

GLOBAL = {"linear.weight": torch.randn(1, 30), "linear.bias": torch.randn(1)}
SPEC = codec.spec_of(GLOBAL)
LIMIT = 10_000


def refused(data: bytes, code: str, status: int = 400) -> None:
    with pytest.raises(codec.UpdateRejected) as caught:
        codec.decode(data, expected=SPEC, max_bytes=LIMIT)
    assert (caught.value.code, caught.value.status) == (code, status)


def test_it_round_trips_an_update():
    decoded = codec.decode(codec.encode(GLOBAL), expected=SPEC, max_bytes=LIMIT)
    assert all(torch.equal(decoded[name], GLOBAL[name]) for name in GLOBAL)


def test_it_refuses_pickle_bytes():
    refused(pickle.dumps(GLOBAL), "not_safetensors")


def test_it_refuses_truncated_bytes():
    refused(codec.encode(GLOBAL)[:-5], "not_safetensors")
    refused(b"\x01\x00", "not_safetensors")


def test_it_refuses_a_header_claiming_huge_tensors_without_allocating_them():
    header = json.dumps({"linear.weight": {"dtype": "F32", "shape": [1 << 20, 1 << 20], "data_offsets": [0, 1 << 42]},
                         "linear.bias": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}).encode()
    refused(len(header).to_bytes(8, "little") + header + b"\x00" * 8, "not_safetensors")
    refused((1 << 60).to_bytes(8, "little") + b"{}", "not_safetensors")


def test_it_refuses_wrong_names():
    refused(codec.encode({"linear.weight": GLOBAL["linear.weight"], "other": GLOBAL["linear.bias"]}), "tensor_names")
    refused(codec.encode({"linear.weight": GLOBAL["linear.weight"]}), "tensor_names")


def test_it_refuses_a_wrong_shape():
    refused(codec.encode({**GLOBAL, "linear.weight": torch.randn(30, 1)}), "shape")


def test_it_refuses_a_wrong_dtype():
    refused(codec.encode({**GLOBAL, "linear.bias": torch.randn(1, dtype=torch.float64)}), "dtype")
    refused(codec.encode({**GLOBAL, "linear.bias": torch.ones(1, dtype=torch.int32)}), "dtype")


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_it_refuses_non_finite_values(bad):
    weight = GLOBAL["linear.weight"].clone()
    weight[0, 3] = bad
    refused(codec.encode({**GLOBAL, "linear.weight": weight}), "not_finite")


def test_it_refuses_an_update_over_the_size_limit():
    refused(b"\x00" * (LIMIT + 1), "too_large", 413)


def test_it_stores_content_addressed_files_and_reads_them_lazily(tmp_path):
    data = codec.encode(GLOBAL)
    path, digest = codec.write_file(data, tmp_path)
    assert codec.write_file(data, tmp_path) == (path, digest) and digest == codec.sha256_hex(data)
    assert [p.name for p in tmp_path.iterdir()] == [f"{digest}.safetensors"]
    lazy = codec.LazyTensors(path)
    assert sorted(lazy) == sorted(GLOBAL) and len(lazy) == 2
    for name, tensor in codec.read_file(path).items():
        assert torch.equal(lazy[name], tensor) and torch.equal(tensor, GLOBAL[name])
    lazy.release("linear.weight")
    assert torch.equal(lazy["linear.weight"], GLOBAL["linear.weight"])  # re-read from the page cache
    with pytest.raises(KeyError):
        lazy["missing"]


def test_it_refuses_to_open_a_corrupt_file_lazily(tmp_path):
    path = tmp_path / "bad.safetensors"
    path.write_bytes(codec.encode(GLOBAL)[:-3])
    with pytest.raises(Exception, match="(?i)invalid|incomplete|metadata|buffer"):
        codec.LazyTensors(path)


def raw(header: dict | str | bytes, data: bytes, *, length: int | None = None) -> bytes:
    """A safetensors body written by hand: the 8-byte length prefix, the header, the data."""
    text = header if isinstance(header, bytes) else (header if isinstance(header, str) else json.dumps(header)).encode()
    return (len(text) if length is None else length).to_bytes(8, "little") + text + data


def valid_header() -> tuple[dict, bytes]:
    """The header and data of a valid update of GLOBAL, as `encode` lays them out."""
    data = codec.encode(GLOBAL)
    length = int.from_bytes(data[:8], "little")
    return json.loads(data[8:8 + length]), data[8 + length:]


def refusal(data: bytes) -> codec.UpdateRejected:
    with pytest.raises(codec.UpdateRejected) as caught:
        codec.decode(data, expected=SPEC, max_bytes=1 << 30)
    return caught.value


def test_it_refuses_a_tensor_named_twice_instead_of_keeping_the_last():
    header, data = valid_header()
    entry = json.dumps(header["linear.bias"])
    text = json.dumps(header)[:-1] + f', "linear.bias": {entry}}}'
    error = refusal(raw(text, data))
    assert (error.code, error.status) == ("duplicate_names", 400)
    assert "'linear.bias' more than once" in error.message


def test_it_refuses_metadata_over_its_cap():
    header, data = valid_header()
    small = codec.encode(GLOBAL, metadata={"format": "pt"})
    assert torch.equal(codec.decode(small, expected=SPEC, max_bytes=LIMIT)["linear.bias"], GLOBAL["linear.bias"])
    error = refusal(raw({"__metadata__": {"pad": "x" * (codec.MAX_METADATA_BYTES + 1)}, **header}, data))
    assert (error.code, error.status) == ("metadata_too_large", 400)
    assert refusal(raw({"__metadata__": {"nested": {"a": "b"}}, **header}, data)).code == "not_safetensors"


def test_it_refuses_a_header_over_its_cap_without_parsing_it():
    """A million zero-size tensors: the header alone is ~50 MB. The length prefix is enough to refuse it."""
    header, data = valid_header()
    limit = codec.header_limit(SPEC)
    padded = json.dumps(header).encode() + b" " * limit  # valid JSON, but longer than any honest header
    error = refusal(raw(padded, data))
    assert (error.code, error.status) == ("header_too_large", 400)
    assert f"{len(padded):,} bytes" in error.message and f"at most {limit:,}" in error.message


def test_it_refuses_trailing_bytes_gaps_and_overlaps():
    header, data = valid_header()
    assert "4 bytes follow the last tensor" in refusal(raw(header, data + b"\x00" * 4)).message
    shifted = {name: {**entry, "data_offsets": [entry["data_offsets"][0] + 4, entry["data_offsets"][1] + 4]}
               for name, entry in header.items()}
    assert "leave a gap" in refusal(raw(shifted, b"\x00" * 4 + data)).message
    overlap = {"linear.weight": {**header["linear.weight"], "data_offsets": [0, 120]},
               "linear.bias": {**header["linear.bias"], "data_offsets": [116, 120]}}
    assert "overlap" in refusal(raw(overlap, data[:120])).message
    assert refusal(raw(header, data[:-1])).code == "not_safetensors"


@pytest.mark.parametrize("header", [
    b"\xff\xfe{}",  # not UTF-8
    "{" * 5000 + "}" * 5000,  # nested past the parser's stack
    '{"linear.weight": NaN}',
    "[1, 2]",
    '{"linear.weight": {"dtype": "F32", "shape": [1, 30], "data_offsets": [0, 120], "extra": 1}, '
    '"linear.bias": {"dtype": "F32", "shape": [1], "data_offsets": [120, 124]}}',
    '{"linear.weight": {"dtype": "X9", "shape": [1, 30], "data_offsets": [0, 120]}, '
    '"linear.bias": {"dtype": "F32", "shape": [1], "data_offsets": [120, 124]}}',
    '{"linear.weight": {"dtype": "F32", "shape": [1, 30.0], "data_offsets": [0, 120]}, '
    '"linear.bias": {"dtype": "F32", "shape": [1], "data_offsets": [120, 124]}}',
    '{"linear.weight": {"dtype": "F32", "shape": [1, 30], "data_offsets": [0, 100]}, '
    '"linear.bias": {"dtype": "F32", "shape": [1], "data_offsets": [100, 104]}}',
], ids=["not-utf8", "deep", "nan", "array", "extra-key", "unknown-dtype", "float-shape", "short-offsets"])
def test_it_refuses_a_malformed_header_as_not_safetensors(header):
    if isinstance(header, str) and header.startswith("{{{"):
        header = header.encode()
    error = refusal(raw(header, b"\x00" * 124))
    assert (error.code, error.status) == ("not_safetensors", 400), error.message


def test_it_refuses_thousands_of_extra_tensors_with_a_short_reason():
    header, data = valid_header()
    extra = {f"extra.{i}": {"dtype": "F32", "shape": [0], "data_offsets": [124, 124]} for i in range(5000)}
    error = refusal(raw({**header, **extra}, data))
    assert error.code == "header_too_large"
    spec = {**SPEC, **{f"layer.{i}": ((0,), "float32") for i in range(150)}}  # a cap big enough to let them in
    few = {f"extra.{i}": {"dtype": "F32", "shape": [0], "data_offsets": [124, 124]} for i in range(400)}
    with pytest.raises(codec.UpdateRejected) as caught:
        codec.decode(raw({**header, **few}, data), expected=spec, max_bytes=1 << 30)
    assert caught.value.code == "tensor_names"
    assert "and 395 more" in caught.value.message and "and 145 more" in caught.value.message
    assert len(caught.value.message) < 500


def test_it_cuts_a_long_tensor_name_short_in_its_reason():
    header, data = valid_header()
    long_name = "x" * 3000
    error = refusal(raw({"linear.weight": header["linear.weight"], long_name: header["linear.bias"]}, data))
    assert error.code == "tensor_names" and len(error.message) < 300
