"""Exact sums under secure aggregation (`secagg.integers`, the statistics round's encoding): values of very
different magnitudes sum exactly through real masking, and an altered input fails closed."""

import numpy as np
import pytest

from consortium.federated.secagg import RoundConfig, SecAggError, integers
from consortium.federated.secagg.simulate import run_round


def values(rng, n):
    # A count, a feature near 0.1, and a square near 2,500**2: magnitudes apart by eight orders.
    return np.array([rng.integers(20, 300), rng.normal(0.1, 0.01) * n, (2500 * rng.random()) ** 2 * n])


def test_sums_of_very_different_magnitudes_come_out_exact_through_the_masks():
    rng = np.random.default_rng()
    inputs = {f"site-{i}": values(rng, 100) for i in range(5)}
    config = RoundConfig(context=b"stats", vector_length=integers.length(3), max_weight=1, encoding="integers")
    _, result = run_round(config, {site: (integers.encode(v), 1) for site, v in inputs.items()},
                          drop_before_masking=["site-4"])
    expected = sum(v for site, v in inputs.items() if site != "site-4")
    assert result.total_weight == 4 and result.dropped == ("site-4",)
    assert np.allclose(result.sums, expected, rtol=0, atol=4 * 2.0**-integers.FRACTION_BITS)


def test_negative_values_and_the_encoding_limits():
    encoded = integers.encode(np.array([-3.25, 0.0, 1e15]))
    assert np.allclose(integers.decode(encoded, sites=1), [-3.25, 0.0, 1e15])
    with pytest.raises(SecAggError, match="too large"):
        integers.encode(np.array([1e17]))
    with pytest.raises(SecAggError, match="NaN"):
        integers.encode(np.array([np.nan]))


def test_a_site_cannot_send_limbs_that_would_overflow_the_sum():
    config = RoundConfig(context=b"stats", vector_length=integers.length(1), max_weight=1, encoding="integers")
    bad = np.array([1 << 20] + [0] * (integers.LIMBS - 1), dtype=np.uint32)
    with pytest.raises(SecAggError, match="limbs below 2\\*\\*16"):
        run_round(config, {f"s{i}": (bad, 1) for i in range(3)})
