"""Shamir secret sharing (Shamir 1979) of 32-byte secrets over the prime field GF(2^521 - 1).

The field is larger than any 32-byte secret, so a secret is one field element and a share is one point
(x, y) of a random polynomial of degree t - 1 whose constant term is the secret. Any t points give the
secret back by Lagrange interpolation at 0; t - 1 points are consistent with every secret (perfect
secrecy). Coefficients come from the OS (`secrets`), never from a seeded generator.
"""

import secrets
from collections.abc import Mapping, Sequence
from functools import lru_cache

from consortium.federated.secagg.errors import SecAggError

PRIME = (1 << 521) - 1  # a Mersenne prime; far above 2^256
SECRET_BYTES = 32
SHARE_BYTES = 66  # ceil(521 / 8)


def split(secret: bytes, *, threshold: int, xs: Sequence[int]) -> dict[int, bytes]:
    """Shares of `secret` at the points `xs` (distinct, 1 <= x < PRIME); any `threshold` of them recover it."""
    if len(secret) != SECRET_BYTES:
        raise ValueError(f"A secret is {SECRET_BYTES} bytes, not {len(secret)}.")
    if len(set(xs)) != len(xs) or any(not 0 < x < PRIME for x in xs):
        raise ValueError("Share points must be distinct and non-zero.")
    if not 1 <= threshold <= len(xs):
        raise ValueError(f"The threshold must be between 1 and {len(xs)}, not {threshold}.")
    coefficients = [int.from_bytes(secret, "big")] + [secrets.randbelow(PRIME) for _ in range(threshold - 1)]
    shares = {}
    for x in xs:
        y = 0
        for coefficient in reversed(coefficients):  # Horner
            y = (y * x + coefficient) % PRIME
        shares[x] = y.to_bytes(SHARE_BYTES, "big")
    return shares


@lru_cache(maxsize=256)
def _lagrange_at_zero(xs: tuple[int, ...]) -> tuple[int, ...]:
    """The Lagrange weights at 0 for these points; a round rebuilds many secrets from the same points."""
    weights = []
    for x_i in xs:
        numerator, denominator = 1, 1
        for x_j in xs:
            if x_j != x_i:
                numerator = numerator * x_j % PRIME
                denominator = denominator * (x_j - x_i) % PRIME
        weights.append(numerator * pow(denominator, -1, PRIME) % PRIME)
    return tuple(weights)


def combine(shares: Mapping[int, bytes], *, threshold: int) -> bytes:
    """The secret from at least `threshold` shares {x: y}; with fewer it refuses rather than guess."""
    if len(shares) < threshold:
        raise SecAggError(f"Only {len(shares)} of the {threshold} shares needed were revealed.")
    points = sorted(shares.items())[:threshold]
    weights = _lagrange_at_zero(tuple(x for x, _ in points))
    secret = sum(int.from_bytes(y, "big") * w for (_, y), w in zip(points, weights, strict=True)) % PRIME
    if secret >> (8 * SECRET_BYTES):
        raise SecAggError("The revealed shares do not reconstruct a valid secret (a share was tampered with).")
    return secret.to_bytes(SECRET_BYTES, "big")
