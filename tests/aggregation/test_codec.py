"""The codec refuses every malformed update before anything is stored, and round-trips good ones."""

import json
import pickle

import pytest
import torch

from aggregation import codec

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
