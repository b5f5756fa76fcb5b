"""Ring (TR) algebra in numpy/tensorly: TR-SVD (``tr_svd``, exact at ``tr_caps``) and contraction of a ring
back to its full tensor (``tr_full``); the rewrite's chains are in ``ttcompile.passes.tr``."""

from __future__ import annotations

from math import isqrt, prod

import numpy as np
import tensorly as tl

from ttcompile.passes.tt import tt_caps, tt_svd


def _rotate(seq, s: int) -> list:
    return [*seq[s:], *seq[:s]]


def tr_start(dims: list[int]) -> int:
    """Core at which TR-SVD starts: core 0 or core d-1, whichever first unfolding has the larger rank.

    Both touch the closing bond ``ranks[-1]``, so that bond (folded into the batch by the rewrite,
    a cost factor) is one of the two bonds whose product the first SVD bounds, and every other bond,
    the spatial core's included, keeps TT-like caps.
    """
    total = prod(dims)
    return 0 if min(dims[0], total // dims[0]) >= min(dims[-1], total // dims[-1]) else len(dims) - 1


def _first_split(m: int) -> tuple[int, int]:
    """(left, right) bond caps of the start core: ``p = ceil(sqrt(m))``, ``q = ceil(m / p)``."""
    p = isqrt(m - 1) + 1
    return p, -(-m // p)


def tr_caps(dims: list[int]) -> list[int]:
    """Largest ring ranks TR-SVD realises over ``dims`` (see the module docstring)."""
    d, s0 = len(dims), tr_start(dims)
    rot = _rotate(dims, s0)
    p, q = _first_split(min(rot[0], prod(dims) // rot[0]))
    inner = tt_caps([q * rot[1], *rot[2:-1], rot[-1] * p])[1:-1] if d > 2 else []
    return _rotate([q, *inner, p], d - s0)  # rotated bond k is bond (s0 + k) % d


def _pad_bonds(cores: list[np.ndarray], ranks: list[int]) -> list[np.ndarray]:
    """Zero-pad every core to its requested bonds (where an SVD had fewer columns)."""
    return [
        np.pad(c, [(0, ranks[k - 1] - c.shape[0]), (0, 0), (0, ranks[k] - c.shape[2])]) for k, c in enumerate(cores)
    ]


def _tr_svd_from_first(tensor: np.ndarray, ranks: list[int]) -> list[np.ndarray]:
    """TR-SVD started at core 0 of ``tensor`` (n_0, ..., n_{d-1})."""
    dims, left, right = tensor.shape, ranks[-1], ranks[0]
    u, sv, vt = np.linalg.svd(tensor.reshape(dims[0], -1), full_matrices=False)
    k, split = min(left * right, len(sv)), left * right
    first = np.pad(u[:, :k], [(0, 0), (0, split - k)]).reshape(dims[0], left, right).transpose(1, 0, 2)
    rest = np.pad(sv[:k, None] * vt[:k], [(0, split - k), (0, 0)]).reshape(left, right, -1)
    rest = np.moveaxis(rest, 0, -1)  # (right, n_1..n_{d-1}, left)
    if len(dims) == 2:
        return [first, rest.reshape(right, dims[1], left)]
    chain = tt_svd(rest.reshape(right * dims[1], *dims[2:-1], dims[-1] * left), [1, *ranks[1:-1], 1])
    chain[0] = chain[0].reshape(right, dims[1], -1)
    chain[-1] = chain[-1].reshape(-1, dims[-1], left)
    return _pad_bonds([first, *chain], ranks)


def tr_svd(tensor: np.ndarray, ranks: list[int]) -> list[np.ndarray]:
    """TR cores ``(ranks[k-1], n_k, ranks[k])`` of ``tensor`` by TR-SVD (exact at ``tr_caps``)."""
    d, s0 = tensor.ndim, tr_start(list(tensor.shape))
    rotated = np.transpose(np.asarray(tensor, dtype=np.float64), _rotate(range(d), s0))
    return _rotate(_tr_svd_from_first(rotated, _rotate(ranks, s0)), d - s0)


def merge_segment(cores: list) -> np.ndarray:
    """Open chain of cores ``(l, n, r)`` contracted into one ``(l, prod n, r)`` (tensorly ops)."""
    out = cores[0]
    for core in cores[1:]:
        out = tl.tensordot(out, core, axes=([out.ndim - 1], [0]))
    return tl.reshape(out, (out.shape[0], -1, out.shape[-1]))


def tr_full(cores: list) -> np.ndarray:
    """Full tensor ``(n_0, ..., n_{d-1})`` of a ring: two halves merged, then both bonds contracted.

    Written with tensorly ops, so it also runs (with gradients) on torch tensors.
    """
    dims = tuple(int(c.shape[1]) for c in cores)
    h = min(range(1, len(dims)), key=lambda k: max(prod(dims[:k]), prod(dims[k:])))
    left, right = merge_segment(cores[:h]), merge_segment(cores[h:])
    return tl.reshape(tl.tensordot(left, right, axes=([0, 2], [2, 0])), dims)


