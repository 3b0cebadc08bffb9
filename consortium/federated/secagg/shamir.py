"""Shamir secret sharing (Shamir 1979) of 32-byte secrets over the prime field GF(2^521 - 1).

The field is larger than any 32-byte secret, so a secret is one field element and a share is one point
(x, y) of a random polynomial of degree t - 1 whose constant term is the secret. Any t points give the
secret back by Lagrange interpolation at 0; t - 1 points are consistent with every secret (perfect
secrecy). Coefficients come from the OS (`secrets`), never from a seeded generator.
"""

import secrets
from collections.abc import Mapping, Sequence

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


def combine(shares: Mapping[int, bytes], *, threshold: int) -> bytes:
    """The secret from at least `threshold` shares {x: y}; with fewer it refuses rather than guess."""
    if len(shares) < threshold:
        raise SecAggError(f"Only {len(shares)} of the {threshold} shares needed were revealed.")
    points = [(x, int.from_bytes(y, "big")) for x, y in sorted(shares.items())[:threshold]]
    secret = 0
    for i, (x_i, y_i) in enumerate(points):
        numerator, denominator = 1, 1
        for j, (x_j, _) in enumerate(points):
            if i != j:
                numerator = numerator * x_j % PRIME
                denominator = denominator * (x_j - x_i) % PRIME
        secret = (secret + y_i * numerator * pow(denominator, -1, PRIME)) % PRIME
    if secret >> (8 * SECRET_BYTES):
        raise SecAggError("The revealed shares do not reconstruct a valid secret (a share was tampered with).")
    return secret.to_bytes(SECRET_BYTES, "big")
