"""The ring arithmetic (`consortium.federated.secagg.masks`): blockwise masking equals whole-vector masking,
masks cancel, and quantisation round-trips within its bound."""

import os

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from consortium.federated.secagg import masks


@settings(max_examples=25, deadline=None)
@given(length=st.integers(1, 3 * masks.BLOCK + 7))
def test_blockwise_masks_equal_the_whole_keystream(length):
    seed = os.urandom(32)
    vector = np.arange(length, dtype=np.uint32)
    masks.apply(vector, [(seed, 1)])
    assert np.array_equal(vector, np.arange(length, dtype=np.uint32) + masks.mask(seed, length))


def test_a_mask_added_by_one_side_and_subtracted_by_the_other_cancels():
    seed, length = os.urandom(32), masks.BLOCK + 5
    left, right = np.full(length, 7, np.uint32), np.full(length, 9, np.uint32)
    masks.apply(left, [(seed, 1)])
    masks.apply(right, [(seed, -1)])
    total = np.zeros(length, np.uint32)
    masks.add_and_mask(total, [left, right], [])
    assert np.all(total == 16)


def test_quantisation_round_trips_within_the_bound():
    rng = np.random.default_rng(5)
    update = rng.normal(0, 0.5, 10_000).astype(np.float32)
    levels = masks.levels(3)
    quantized = masks.quantize(update, 40, clip=1.0, max_weight=100, levels=levels)
    mean, weight = masks.dequantize(quantized, clip=1.0, max_weight=100, levels=levels)
    bound = masks.quantization_error(sites=1, clip=1.0, max_weight=100, levels=levels, total_weight=40)
    assert weight == 40
    assert np.abs(mean - np.clip(update, -1, 1)).max() <= bound
