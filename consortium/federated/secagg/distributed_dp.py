"""Distributed differential privacy under secure aggregation: each site clips its change to the model and adds
its share of the Gaussian noise before masking, so nobody, the coordinator included, ever sees a sum without
noise (the distributed Gaussian mechanism of DP-FedAvg with secure aggregation, Kairouz et al. 2021).

Every site counts equally (weight 1), so one site moves the sum by at most the clipping norm C. A site adds
N(0, (z C)^2 / t) per coordinate, where t is the fewest sites whose inputs may be unmasked together (the
protocol's quorum, which the coordinator enforces and each site checks in the unmasking request): any sum the
coordinator can unmask holds n >= t shares, so its noise has standard deviation z C sqrt(n / t) >= z C, at
least what central DP-FedAvg adds with noise multiplier z. The accountant counts the round at z: the worst case
of dropouts. The noise comes from the operating system's entropy, never from a seed."""

import math
import secrets

import numpy as np
import torch

from consortium.federated import norm
from consortium.federated.secagg.errors import SecAggError

# The ring's per-coordinate range is the clipping norm plus this many standard deviations of a site's noise.
NOISE_RANGE_SIGMAS = 6.0


def site_noise_std(*, noise_multiplier: float, clip_norm: float, min_sites: int) -> float:
    """The standard deviation of the noise one site adds, per coordinate."""
    if noise_multiplier < 0 or clip_norm <= 0 or min_sites < 1:
        raise SecAggError("Distributed DP needs a noise multiplier >= 0, a positive clipping norm and min_sites >= 1.")
    return noise_multiplier * clip_norm / math.sqrt(min_sites)


def ring_clip(*, noise_multiplier: float, clip_norm: float, min_sites: int) -> float:
    """The per-coordinate clipping range of the round: a clipped change plus its noise fits, but for tails
    beyond NOISE_RANGE_SIGMAS (clipping them afterwards only lowers what one site can move)."""
    return clip_norm + NOISE_RANGE_SIGMAS * site_noise_std(noise_multiplier=noise_multiplier, clip_norm=clip_norm,
                                                           min_sites=min_sites)


def privatize(change: np.ndarray, *, noise_multiplier: float, clip_norm: float, min_sites: int,
              rng: np.random.Generator | None = None) -> np.ndarray:
    """The site's change clipped to L2 norm `clip_norm`, plus its share of the noise (from the OS)."""
    length = float(norm.l2_norm({"change": torch.from_numpy(np.ascontiguousarray(change, dtype=np.float32))}))
    clipped = change.astype(np.float64) * min(1.0, clip_norm / length) if length > 0 else change.astype(np.float64)
    generator = rng if rng is not None else np.random.default_rng(secrets.randbits(128))
    std = site_noise_std(noise_multiplier=noise_multiplier, clip_norm=clip_norm, min_sites=min_sites)
    return (clipped + generator.normal(0.0, std, size=clipped.shape)).astype(np.float32)
