"""CP (canonical polyadic) rewrite of Conv (Lebedev et al., ICLR 2015); Gemm/MatMul use the rank-R
two-factor (svd) form, which is the best CP of a matrix (Eckart-Young).

Conv, kernel ``(O, C, k_1, ..., k_nd)``: ``W[o, c, i_1, .., i_nd] = sum_r A[o, r] B[c, r] F_1[i_1, r]
.. F_nd[i_nd, r]``; cores ``[A (O, R), B (C, R), F_1 (k_1, R), ..., F_nd (k_nd, R)]`` with every
rank-one term's weight spread evenly over its factors (equal column norms across cores).
``ranks = [R]``. CP has no exact "full rank"; R is capped at ``prod(dims) / max(dims)`` (a generic
bound on the rank of a tensor of those dims), and a kernel of CP rank R is recovered at R up to
the ALS tolerance.

Decomposition: CP-ALS (``cp_als``), SVD initialisation (seeded random columns where a mode is
shorter than R), a small relative ridge in every normal equation so that collinear or surplus
components stay bounded, Bro's line search after every sweep, at most ``als_sweeps`` sweeps (a
work budget: more sweeps for small kernels and ranks), stopping when the relative error changes by
less than ``ALS_TOL``.

Rewrite (standard ONNX ops only): 1x1 ``Conv`` C -> R (``B^T``); one depthwise ``Conv``
(``group=R``) per spatial axis, kernel ``k_a`` along that axis and 1 along the others, carrying
that axis's stride, dilation and pads (``auto_pad`` is kept as is: SAME/VALID padding is computed
per axis, and an axis with kernel 1 and stride 1 gets none); 1x1 ``Conv`` R -> O (``A``); bias on
the last node. A 2-D kernel gives 1x1 -> k_h x 1 -> 1 x k_w -> 1x1, a 1-D kernel a single depthwise
conv. An axis with kernel 1, stride 1 and no padding needs no conv: its factor (a scale per
component) is folded into A.
"""

from __future__ import annotations

from functools import reduce
from math import prod

import numpy as np
import tensorly as tl

from ttcompile.layers import Layer
from ttcompile.passes.base import ChainBuilder, Cost, finish_cost, register, spatial, spatial_conv_attrs
from ttcompile.passes.svd import SVDFormat, leading_vectors

# Sweeps: ALS_WORK / (kernel size * R), clipped to ALS_SWEEPS; a 256x256x3x3 kernel gets 26 sweeps
# at R = 256 and 105 at R = 64 (each sweep costs about N + 1 GEMM-sized MTTKRPs).
ALS_WORK = 4e9
ALS_SWEEPS = (20, 500)
ALS_TOL = 1e-8  # stop when the relative error changes by less than this between sweeps
ALS_RIDGE = 1e-8  # ridge, relative to the mean diagonal of each normal-equation matrix
# float16 layers: a larger ridge keeps the components from cancelling (at the rank cap, the 1e-8 ridge gives
# factors whose float16 rounding costs 9-26x the rounding of the dense kernel; 1e-5 costs 4x, measured on
# LeNet-5's convs, for a decomposition error (1e-4) still below float16's precision)
ALS_RIDGE_FP16 = 1e-5
ALS_SEED = 0


# ---- CP-ALS -----------------------------------------------------------------------------------


def cp_full(factors: list[np.ndarray]) -> np.ndarray:
    """Tensor ``(I_1, ..., I_N)`` of CP factors ``(I_n, R)``, N >= 2 (tensorly ops: also runs on torch tensors)."""
    rank = int(factors[0].shape[1])
    rest = reduce(lambda a, b: tl.reshape(a[:, None, :] * b[None, :, :], (-1, rank)), factors[2:], factors[1])
    return tl.reshape(factors[0] @ tl.transpose(rest), tuple(int(f.shape[0]) for f in factors))


def mttkrp(tensor: np.ndarray, factors: list[np.ndarray], mode: int) -> np.ndarray:
    """``M[i, r] = sum over the other indices of T[.., i, ..] * prod_{m != mode} F_m[i_m, r]``, shape (I_mode, R).

    The largest other mode is contracted first as one GEMM; the rest shrink an already small tensor.
    """
    others = sorted((m for m in range(tensor.ndim) if m != mode), key=lambda m: -tensor.shape[m])
    z = np.tensordot(tensor, factors[others[0]], axes=([others[0]], [0]))  # remaining axes..., R
    axes = [m for m in range(tensor.ndim) if m != others[0]]
    for m in others[1:]:
        i = axes.index(m)
        z = np.einsum("...ir,ir->...r", np.moveaxis(z, i, -2), factors[m])
        axes.pop(i)
    return z


def _svd_init(tensor: np.ndarray, rank: int, rng: np.random.Generator) -> list[np.ndarray]:
    """Leading left singular vectors of every unfolding, random unit-scale columns beyond a mode's size."""
    factors = []
    for mode, size in enumerate(tensor.shape):
        u = leading_vectors(np.moveaxis(tensor, mode, 0).reshape(size, -1), min(rank, size))
        extra = rng.standard_normal((size, rank - u.shape[1])) / np.sqrt(size)
        factors.append(np.hstack([u, extra]))
    return factors


def balance(factors: list[np.ndarray]) -> list[np.ndarray]:
    """Give every factor of a component the same column norm (the N-th root of the component's weight)."""
    norms = np.stack([np.linalg.norm(f, axis=0) for f in factors])  # (N, R)
    weight = np.prod(norms, axis=0) ** (1.0 / len(factors))
    scale = np.divide(weight, norms, out=np.zeros_like(norms), where=norms > 0)
    return [f * s for f, s in zip(factors, scale)]


def cp_als(tensor: np.ndarray, rank: int, ridge: float = ALS_RIDGE) -> list[np.ndarray]:
    """Rank-``rank`` CP factors ``(I_n, R)`` of ``tensor`` by ridge-regularised ALS, balanced.

    Modes of size 1 (e.g. C = 1) are left out of the ALS, which they would only slow down, and get
    a factor of ones before balancing.
    """
    tensor = np.asarray(tensor, dtype=np.float64)
    if np.sum(tensor**2) == 0:
        return [np.zeros((size, rank)) for size in tensor.shape]
    factors = iter(_als(tensor.reshape([n for n in tensor.shape if n > 1]), rank, ridge))
    return balance([next(factors) if n > 1 else np.ones((1, rank)) for n in tensor.shape])


def _relative_error(tensor: np.ndarray, norm2: float, factors: list[np.ndarray], m_last: np.ndarray) -> float:
    """``||T - X|| / ||T||`` as ``||T||^2 - 2 <T, X> + ||X||^2``, given the last mode's MTTKRP."""
    squared = np.sum(reduce(np.multiply, [f.T @ f for f in factors]))
    return float(np.sqrt(max(norm2 - 2 * np.sum(m_last * factors[-1]) + squared, 0.0) / norm2))


def _sweep(tensor: np.ndarray, norm2: float, factors: list[np.ndarray], ridge: float = ALS_RIDGE
           ) -> tuple[list[np.ndarray], float]:
    """One ALS sweep (each factor solves its ridge-regularised normal equations); new factors, error."""
    factors = list(factors)
    rank = factors[0].shape[1]
    grams = [f.T @ f for f in factors]
    for n in range(tensor.ndim):
        gram = reduce(np.multiply, [g for m, g in enumerate(grams) if m != n])
        m_n = mttkrp(tensor, factors, n)
        factors[n] = np.linalg.solve(gram + ridge * max(np.trace(gram) / rank, 1e-300) * np.eye(rank), m_n.T).T
        grams[n] = factors[n].T @ factors[n]
    return factors, _relative_error(tensor, norm2, factors, m_n)


def als_sweeps(shape: tuple[int, ...], rank: int) -> int:
    """Sweep cap: ``ALS_WORK`` MTTKRP multiply-adds (each ``prod(shape) * rank``), within the bounds."""
    return int(np.clip(ALS_WORK // (prod(shape) * rank), *ALS_SWEEPS))


def _als(tensor: np.ndarray, rank: int, ridge: float = ALS_RIDGE) -> list[np.ndarray]:
    """Unbalanced ALS factors of a nonzero ``tensor``; see ``cp_als``.

    Each sweep is followed by Bro's line search: the step from the previous iterate is extrapolated
    by ``sweep^(1/3)`` and kept when it lowers the error (it shortens ALS's slow "swamps").
    """
    norm2 = float(np.sum(tensor**2))
    factors, error = _sweep(tensor, norm2, _svd_init(tensor, rank, np.random.default_rng(ALS_SEED)), ridge)
    for sweep in range(2, als_sweeps(tensor.shape, rank) + 1):
        new, new_error = _sweep(tensor, norm2, factors, ridge)
        jump = [f + sweep ** (1 / 3) * (f - old) for f, old in zip(new, factors)]
        jump_error = _relative_error(tensor, norm2, jump, mttkrp(tensor, jump, tensor.ndim - 1))
        if jump_error < new_error:
            new, new_error = jump, jump_error
        factors, error, change = new, new_error, error - new_error
        if abs(change) < ALS_TOL:
            break
    return factors


# ---- convolution -------------------------------------------------------------------------------


def _conv_axes(layer: Layer) -> list[int]:
    """Spatial axes that need a depthwise conv: kernel > 1, or a stride or explicit padding to apply."""
    a, nd = layer.attrs, len(layer.kernel)
    explicit = a["auto_pad"] in ("NOTSET", "")
    return [
        i for i, k in enumerate(layer.kernel)
        if k > 1 or a["strides"][i] != 1 or (explicit and (a["pads"][i] or a["pads"][nd + i]))
    ]


def _axis_conv_attrs(layer: Layer, axis: int, rank: int) -> dict:
    """``spatial_conv_attrs`` restricted to one axis (kernel/stride/dilation 1, no pads elsewhere)."""
    attrs, nd = spatial_conv_attrs(layer), len(layer.kernel)

    def only(values: list[int], fill: int) -> list[int]:
        return [v if i == axis else fill for i, v in enumerate(values)]

    out = {key: only(attrs[key], 1) for key in ("kernel_shape", "strides", "dilations")}
    if "pads" in attrs:
        out["pads"] = only(attrs["pads"][:nd], 0) + only(attrs["pads"][nd:], 0)
    else:
        out["auto_pad"] = attrs["auto_pad"]
    return {**out, "group": rank}


def _conv_cost(layer: Layer, rank: int) -> tuple[int, int, int]:
    """(params, MACs, nodes): 1x1 at the input positions, depthwise axis by axis, 1x1 at the output."""
    axes = _conv_axes(layer)
    hw_in, hw_out = spatial(layer)
    params = rank * (layer.in_features + sum(layer.kernel[a] for a in axes) + layer.out_features)
    macs = hw_in * layer.in_features * rank + hw_out * rank * layer.out_features
    sizes = list(layer.in_spatial or [0] * len(layer.kernel))
    for a in axes:  # each depthwise conv maps its axis from the input to the output size
        sizes[a] = layer.out_spatial[a] if layer.out_spatial else 0
        macs += prod(sizes) * rank * layer.kernel[a]
    return params, macs, 2 + len(axes)


def _emit_conv(b: ChainBuilder, x, cores: list[np.ndarray], layer: Layer):
    a_out, b_in, *spatial_factors = cores
    nd, rank, axes = len(layer.kernel), a_out.shape[1], _conv_axes(layer)
    folded = [f[0] for i, f in enumerate(spatial_factors) if i not in axes]  # (1, R) factors of skipped axes
    h = b.conv1x1(x, b_in.T, nd)
    for axis in axes:
        shape = [rank, 1] + [layer.kernel[axis] if i == axis else 1 for i in range(nd)]
        w = b.weight(spatial_factors[axis].T.reshape(shape), "depthwise")
        h = b.op("Conv", [h, w], **_axis_conv_attrs(layer, axis, rank))
    return b.conv1x1(h, reduce(np.multiply, folded, a_out), nd)


@register
class CPFormat(SVDFormat):
    name = "cp"

    def max_ranks(self, layer: Layer, modes: dict) -> list[int]:
        if layer.kind != "conv":
            return super().max_ranks(layer, modes)
        return [prod(layer.dense_shape) // max(layer.dense_shape)]

    def cost(self, layer: Layer, modes: dict, ranks: list[int], options: dict | None = None) -> Cost:
        if layer.kind != "conv":
            return super().cost(layer, modes, ranks, options)
        return finish_cost(layer, *_conv_cost(layer, ranks[0]))

    def decompose(self, weight: np.ndarray, layer: Layer, modes: dict, ranks: list[int]) -> list[np.ndarray]:
        if layer.kind != "conv":
            return super().decompose(weight, layer, modes, ranks)
        self.validate_ranks(layer, modes, ranks)
        fp16 = layer.attrs.get("precision") == "float16"
        return cp_als(weight, ranks[0], ALS_RIDGE_FP16 if fp16 else ALS_RIDGE)

    def reconstruct(self, cores: list[np.ndarray], layer: Layer, modes: dict) -> np.ndarray:
        if layer.kind != "conv":
            return super().reconstruct(cores, layer, modes)
        return cp_full(cores)

    def emit(self, b, x, cores, layer, modes, options):
        if layer.kind != "conv":
            return super().emit(b, x, cores, layer, modes, options)
        return _emit_conv(b, x, cores, layer)
