"""Exact sums of real numbers of any magnitude under secure aggregation: the encoding of the statistics round.

The training rounds quantise a model change into one ring value per coordinate with one shared range, which
suits changes of similar size. A statistics round sums counts, sums and sums of squares whose magnitudes differ
by many orders (a count of rows, a feature near 0.1, the square of one near 2,500), so each value is written in
fixed point (FRACTION_BITS after the point), offset to be non-negative, and split into LIMBS limbs of 16 bits,
each its own ring coordinate. Limbs of up to 65,535 sites sum without overflowing 32 bits, so the ring sum of
each limb is exact and the coordinator recombines the exact sum of the fixed-point values. No public scale is
needed: nothing about a site's magnitudes leaves it."""

import numpy as np

from consortium.federated.secagg.errors import SecAggError

FRACTION_BITS = 24
LIMBS = 5  # 80 bits: magnitudes below 2**(80 - 1 - FRACTION_BITS) = 3.6e16
LIMB_BITS = 16
MAX_SITES = 2**LIMB_BITS - 1
_OFFSET = 1 << (LIMBS * LIMB_BITS - 1)
_MASK = (1 << LIMB_BITS) - 1


def encode(values: np.ndarray) -> np.ndarray:
    """LIMBS uint32 limbs per value (least significant first), each below 2**16."""
    flat = np.asarray(values, dtype=np.float64).reshape(-1)
    if not np.isfinite(flat).all():
        raise SecAggError("The values hold NaN or infinite values.")
    out = np.empty(flat.size * LIMBS, dtype=np.uint32)
    for i, value in enumerate(flat):
        fixed = round(float(value) * (1 << FRACTION_BITS)) + _OFFSET
        if not 0 <= fixed < 2 * _OFFSET:
            raise SecAggError(f"The value {value:g} is too large to sum exactly.")
        for limb in range(LIMBS):
            out[i * LIMBS + limb] = (fixed >> (LIMB_BITS * limb)) & _MASK
    return out


def decode(total: np.ndarray, *, sites: int) -> np.ndarray:
    """The exact sum over `sites` inputs of the values `encode` wrote, from the ring sum of their limbs."""
    if not 1 <= sites <= MAX_SITES:
        raise SecAggError(f"Exact sums take 1 to {MAX_SITES} sites, not {sites}.")
    if total.size % LIMBS:
        raise SecAggError(f"An encoded sum has a multiple of {LIMBS} values, not {total.size}.")
    out = np.empty(total.size // LIMBS, dtype=np.float64)
    for i in range(out.size):
        fixed = sum(int(total[i * LIMBS + limb]) << (LIMB_BITS * limb) for limb in range(LIMBS))
        out[i] = (fixed - sites * _OFFSET) / (1 << FRACTION_BITS)
    return out


def length(values: int) -> int:
    """Ring coordinates that `values` encoded values take."""
    return values * LIMBS
