"""Distributed DP under secure aggregation: each site clips its change and adds its share of the noise, scaled so
that any sum of at least `min_sites` inputs carries at least the noise central DP-FedAvg would add; the site
refuses a round whose setup would clip its noise away or unmask fewer inputs than its noise was scaled for."""

import math

import numpy as np
import pytest

from consortium.federated.secagg import RoundConfig, SecAggError, UnmaskRequest
from consortium.federated.secagg.distributed_dp import privatize, ring_clip, site_noise_std
from sites.agent.secure import DistributedPrivacy


def test_a_large_change_is_clipped_to_the_norm_and_a_small_one_is_kept():
    big, small = np.full(100, 1.0, np.float32), np.full(100, 0.01, np.float32)
    clipped = privatize(big, noise_multiplier=0.0, clip_norm=2.0, min_sites=3)
    assert math.isclose(float(np.linalg.norm(clipped)), 2.0, rel_tol=1e-5)
    assert np.allclose(privatize(small, noise_multiplier=0.0, clip_norm=2.0, min_sites=3), small)


def test_the_sum_of_t_sites_noise_has_the_central_standard_deviation():
    z, clip, t = 1.5, 0.5, 4
    draws = sum(privatize(np.zeros(200_000, np.float32), noise_multiplier=z, clip_norm=clip, min_sites=t)
                .astype(np.float64) for _ in range(t))
    # The sample variance of 200,000 normal draws is within 1.5 % of the true one (about 5 standard errors).
    assert abs(draws.var() / (z * clip) ** 2 - 1) < 0.015
    assert math.isclose(site_noise_std(noise_multiplier=z, clip_norm=clip, min_sites=t), z * clip / 2)


def test_the_noise_differs_every_time():
    first, second = (privatize(np.zeros(1000, np.float32), noise_multiplier=1.0, clip_norm=1.0, min_sites=3)
                     for _ in range(2))
    assert not np.array_equal(first, second)


def test_a_site_refuses_a_round_that_would_clip_its_noise_or_weight_its_input():
    privacy = DistributedPrivacy(noise_multiplier=1.0, clip_norm=1.0, min_sites=3)
    needed = ring_clip(noise_multiplier=1.0, clip_norm=1.0, min_sites=3)
    privacy.check(RoundConfig(context=b"r", vector_length=4, clip=needed, max_weight=1))
    with pytest.raises(SecAggError, match="would clip this site's DP noise"):
        privacy.check(RoundConfig(context=b"r", vector_length=4, clip=1.0, max_weight=1))
    with pytest.raises(SecAggError, match="largest weight 1000"):
        privacy.check(RoundConfig(context=b"r", vector_length=4, clip=needed, max_weight=1000))


def test_a_site_refuses_to_unmask_fewer_inputs_than_its_noise_was_scaled_for():
    privacy = DistributedPrivacy(noise_multiplier=1.0, clip_norm=1.0, min_sites=3)
    privacy.check_survivors(UnmaskRequest(("a", "b", "c"), ()))
    with pytest.raises(SecAggError, match="names 2 survivors"):
        privacy.check_survivors(UnmaskRequest(("a", "b"), ("c",)))
