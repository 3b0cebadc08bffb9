"""Central differential privacy at the server: DP-FedAvg (its budget: `consortium.federated.accountant`). No Django.

DP-FedAvg (McMahan, Ramage, Talwar, Zhang 2018, "Learning Differentially Private Recurrent Language
Models"), fixed-size variant with every site in every round: clip each site's delta (update - global)
to L2 norm <= C, average the clipped deltas uniformly over the n sites, add Gaussian noise with
std = z * C / n. Replacing one site's update moves the average by at most C / n in L2 norm for add/remove
adjacency, so this is the Gaussian mechanism with noise multiplier z.

The noise comes from the operating system's CSPRNG (`os.urandom`), fresh for every aggregation, and is
neither seeded, stored nor shown: whoever could regenerate it could subtract it from the published model
and recover the noiseless mean. (A torch generator would not do even seeded from `secrets`: its CPU
generator keeps only 32 bits of a seed, so the seed could be found by search.)

Caveat: the noise is Box-Muller over 53-bit uniforms in floating point, which has known weaknesses
(Mironov 2012: the low-order bits of a floating-point sample can reveal the value it was added to); its
tails stop at about 8.6 standard deviations. Treat the budget as the textbook guarantee of the Gaussian
mechanism, not a proof about this implementation.
"""

import math
import os
from collections.abc import Iterable, Mapping

import torch

from consortium.federated.norm import delta_norm

Tensors = Mapping[str, torch.Tensor]

# Normal values drawn per read of the OS's entropy: 8 MiB of random bytes and a few float64 buffers.
_NOISE_BLOCK = 1 << 20
_53_BITS = (1 << 53) - 1


def gaussian_noise(shape: torch.Size | tuple[int, ...]) -> torch.Tensor:
    """Independent N(0, 1) values of `shape` (float32) drawn from the operating system's CSPRNG.

    Box-Muller: two uniforms u1 in (0, 1] and u2 in [0, 1), each from 53 random bits, give
    sqrt(-2 ln u1) cos(2 pi u2) and sqrt(-2 ln u1) sin(2 pi u2), computed in float64."""
    numel = math.prod(shape)
    out = torch.empty(numel, dtype=torch.float32)
    for start in range(0, numel, _NOISE_BLOCK):
        count = min(_NOISE_BLOCK, numel - start)
        half = (count + 1) // 2
        bits = torch.frombuffer(bytearray(os.urandom(16 * half)), dtype=torch.int64).bitwise_and_(_53_BITS)
        uniform = bits.to(torch.float64).mul_(2.0**-53)
        radius = uniform[:half].add_(2.0**-53).log_().mul_(-2.0).sqrt_()
        angle = uniform[half:].mul_(2 * math.pi)
        out[start : start + count] = torch.cat((radius * torch.cos(angle), radius * torch.sin(angle)))[:count]
    return out.reshape(shape)


def clip_factor(norm: float, clip_norm: float) -> float:
    """min(1, C / ||delta||): the scale that brings a delta inside the L2 ball of radius C."""
    if clip_norm <= 0:
        raise ValueError("The clipping norm must be positive.")
    return 1.0 if norm <= clip_norm else clip_norm / norm


def dp_fedavg(current: Tensors, updates: Iterable[tuple[Tensors, float]], *, clip_norm: float,
              noise_multiplier: float) -> dict[str, torch.Tensor]:
    """current + (1/n) sum_i clip(update_i - current) + N(0, (z C / n)^2 I); weights are ignored on purpose.
    The noise is fresh from the OS every call (`gaussian_noise`): there is no seed to pass, on purpose.

    Uniform weights keep the sensitivity at C / n; weighting by num_examples would let one large site
    move the model by more than that. Streams: per site, one pass for the norm, one to accumulate."""
    sums = {name: torch.zeros(tensor.shape, dtype=torch.float32) for name, tensor in current.items()}
    sites = 0
    for tensors, _weight in updates:
        factor = clip_factor(delta_norm(current, tensors), clip_norm)
        for name, total in sums.items():
            total.add_(torch.sub(tensors[name], current[name]), alpha=factor)
        sites += 1
    if sites == 0:
        raise ValueError("There are no updates to aggregate.")
    std = noise_multiplier * clip_norm / sites
    for name, total in sums.items():
        total.div_(sites)
        if std > 0:
            total.add_(gaussian_noise(total.shape), alpha=std)
        total.add_(current[name])
    return sums
