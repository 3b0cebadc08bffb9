"""Central DP: clipping bounds every site's influence, the noise has the stated scale."""

import math

import pytest
import torch

from aggregation import privacy


def test_it_clips_each_delta_to_the_norm():
    current = {"a": torch.zeros(3, 4), "b": torch.zeros(5)}
    big = {"a": torch.full((3, 4), 10.0), "b": torch.full((5,), -10.0)}
    assert privacy.delta_norm(current, big) == pytest.approx(10 * math.sqrt(17))
    result = privacy.dp_fedavg(current, [(big, 1.0)], clip_norm=2.0, noise_multiplier=0.0)
    assert privacy.delta_norm(current, result) == pytest.approx(2.0, rel=1e-6)


def test_it_leaves_small_deltas_alone_and_ignores_weights():
    current = {"w": torch.ones(4)}
    updates = [({"w": torch.ones(4) + 0.1}, 1.0), ({"w": torch.ones(4) - 0.3}, 1000.0)]
    result = privacy.dp_fedavg(current, updates, clip_norm=5.0, noise_multiplier=0.0)
    torch.testing.assert_close(result["w"], torch.full((4,), 0.9))


def test_it_adds_noise_with_std_z_c_over_n():
    current = {"w": torch.zeros(200_000)}
    updates = [({"w": torch.zeros(200_000)}, 1.0) for _ in range(4)]
    result = privacy.dp_fedavg(current, updates, clip_norm=2.0, noise_multiplier=1.5)
    expected_std = 1.5 * 2.0 / 4
    assert float(result["w"].std()) == pytest.approx(expected_std, rel=0.01)  # 200k samples: ~0.16% std error
    assert abs(float(result["w"].mean())) < 5 * expected_std / math.sqrt(200_000)


def test_it_draws_fresh_noise_for_the_same_inputs_every_time():
    current = {"w": torch.zeros(1000)}
    updates = [({"w": torch.full((1000,), 0.01)}, 1.0) for _ in range(4)]
    first, second = (privacy.dp_fedavg(current, updates, clip_norm=1.0, noise_multiplier=1.0) for _ in range(2))
    assert not torch.equal(first["w"], second["w"])


def test_it_takes_no_seed_for_the_noise():
    # Whoever knows a seed can regenerate the noise and subtract it from the published model.
    with pytest.raises(TypeError):
        privacy.dp_fedavg({"w": torch.zeros(2)}, [({"w": torch.ones(2)}, 1.0)], clip_norm=1.0, noise_multiplier=1.0,
                          generator=torch.Generator().manual_seed(0))


def test_it_draws_standard_normal_noise_from_the_os():
    scipy_stats = pytest.importorskip("scipy.stats")
    noise = privacy.gaussian_noise((100, 1001))  # an odd count exercises the unpaired last value
    assert noise.shape == (100, 1001) and noise.dtype == torch.float32
    flat = noise.double().reshape(-1)
    assert abs(float(flat.mean())) < 5 / math.sqrt(flat.numel())
    assert float(flat.std()) == pytest.approx(1.0, rel=0.01)
    # Kolmogorov-Smirnov against N(0, 1): a wrong transform is rejected at any sample size this big.
    assert scipy_stats.kstest(flat.numpy(), "norm").pvalue > 1e-6
    assert not torch.equal(privacy.gaussian_noise((64,)), privacy.gaussian_noise((64,)))
