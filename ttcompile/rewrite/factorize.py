"""Balanced factorisation of layer dimensions into tensor modes (row-major, first = slowest)."""

from __future__ import annotations

from math import log, prod


def prime_factors(n: int) -> list[int]:
    out, p = [], 2
    while p * p <= n:
        while n % p == 0:
            out.append(p)
            n //= p
        p += 1
    if n > 1:
        out.append(n)
    return out


def factorize(n: int, d: int) -> list[int]:
    """Split ``n`` into exactly ``d`` factors as equal as possible (1s pad when n has few primes).

    Greedy: largest prime first into the currently smallest factor; result sorted ascending,
    e.g. ``factorize(784, 3) == [7, 8, 14]``, ``factorize(10, 3) == [1, 2, 5]``.
    """
    if n < 1 or d < 1:
        raise ValueError(f"cannot factorise {n} into {d} modes")
    factors = [1] * d
    for p in sorted(prime_factors(n), reverse=True):
        factors[factors.index(min(factors))] *= p
    assert prod(factors) == n
    return sorted(factors)


def default_order(*dims: int, base: float = 8.0, lo: int = 2, hi: int = 4) -> int:
    """Number of modes so that factors come out near ``base`` (for the largest of ``dims``)."""
    return max(lo, min(hi, round(log(max(dims)) / log(base))))


def parse_modes(text: str) -> list[int]:
    """``"4x7x4x7"`` -> ``[4, 7, 4, 7]``."""
    return [int(v) for v in text.lower().split("x") if v]
