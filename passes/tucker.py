"""Tucker-2 rewrite of Conv (Kim et al., ICLR 2016); Gemm/MatMul use the two-factor (svd) form.

Conv, kernel ``(O, C, *k)`` with ``K = prod(k)``: Tucker-2 over the two channel modes,
``W[o, c, :] = sum_{a, b} U_out[o, a] G[a, b, :] U_in[c, b]``, with ``U_out (O, R_out)`` and
``U_in (C, R_in)`` orthonormal and the core ``G (R_out, R_in, *k)`` carrying the scale.
``ranks = [R_out, R_in]`` (the kernel's axis order), capped at ``[min(O, C*K), min(C, O*K)]``
(exact there). Initialised by HOSVD (``U_in``: leading left singular vectors of the mode-C
unfolding), refined by HOOI sweeps (``U_out`` from ``W x_C U_in^T``, then ``U_in`` from
``W x_O U_out^T``) until the captured energy ``||G||^2`` stops growing.

Rewrite (standard ONNX ops only): 1x1 ``Conv`` C -> R_in (weight ``U_in^T``), one ``Conv`` with the
original kernel/stride/pads/dilations/auto_pad R_in -> R_out (weight G), 1x1 ``Conv`` R_out -> O
(weight ``U_out``); bias on the last node. Either 1x1 side may be absorbed into the spatial Conv
(e.g. when R_in = C, as for a 3-channel input layer); ``realize`` picks the fastest realization
within ``MERGE_PARAM_SLACK`` of the plain chain's params (as for TT).

Fully connected: Tucker-2 of a matrix is its truncated SVD (the core ``G (R_out, R_in)``
diagonalises into the factors), so Gemm/MatMul are rewritten exactly as the ``svd`` format does,
``W ~= U V`` with ``ranks = [r]``. A Tucker over a tensorised matrix ``(m_1..) x (n_1..)`` would
store a core of ``prod`` of all ranks and run as a chain of small GEMMs; TT-matrix covers that space.
"""

from __future__ import annotations

from math import prod

import numpy as np
import tensorly as tl

from ttcompile.layers import Layer
from ttcompile.passes.base import (
    ChainBuilder,
    Cost,
    cheapest_option,
    finish_cost,
    register,
    spatial,
    spatial_conv_attrs,
)
from ttcompile.passes.svd import SVDFormat, leading_vectors

HOOI_SWEEPS = 10  # HOOI usually converges in 2-5 sweeps; the cap bounds the time on large kernels
HOOI_TOL = 1e-9  # stop when ||G||^2 grows by less than this fraction of ||W||^2
# Conv realizations, the plain chain first: which 1x1 sides are absorbed into the spatial Conv.
CONV_OPTIONS = [{"input": "chain", "output": "chain"}, {"input": "absorbed", "output": "chain"},
                {"input": "chain", "output": "absorbed"}]


def _unfold(tensor: np.ndarray, mode: int) -> np.ndarray:
    """Mode-``mode`` unfolding ``(I_mode, rest)``, the other axes row-major in their order."""
    return np.moveaxis(tensor, mode, 0).reshape(tensor.shape[mode], -1)


def tucker2(weight: np.ndarray, r_out: int, r_in: int) -> list[np.ndarray]:
    """HOSVD + HOOI of ``weight (O, C, K)``: ``[U_out (O, R_out), G (R_out, R_in, K), U_in (C, R_in)]``."""
    norm2 = max(float(np.sum(weight**2)), 1e-300)
    u_in = leading_vectors(_unfold(weight, 1), r_in)  # HOSVD start; U_out comes from the first sweep
    energy = 0.0
    for _ in range(HOOI_SWEEPS):
        u_out = leading_vectors(_unfold(np.einsum("ock,cb->obk", weight, u_in, optimize=True), 0), r_out)
        half = np.einsum("ock,oa->ack", weight, u_out, optimize=True)  # (R_out, C, K)
        u_in = leading_vectors(_unfold(half, 1), r_in)
        core = np.einsum("ack,cb->abk", half, u_in, optimize=True)
        gain, energy = float(np.sum(core**2)) - energy, float(np.sum(core**2))
        if gain < HOOI_TOL * norm2:
            break
    return [u_out, core, u_in]


def _parts(cores: list[np.ndarray], options: dict) -> tuple[np.ndarray | None, np.ndarray, np.ndarray | None]:
    """``(U_in or None, spatial kernel (t, s, *k), U_out or None)`` after absorbing the chosen sides."""
    u_out, core, u_in = cores
    if options["input"] == "absorbed":
        core, u_in = np.einsum("ab...,cb->ac...", core, u_in, optimize=True), None
    if options["output"] == "absorbed":
        core, u_out = np.einsum("ab...,oa->ob...", core, u_out, optimize=True), None
    return u_in, core, u_out


def _conv_cost(layer: Layer, ranks: list[int], options: dict) -> tuple[int, int, int]:
    """(params, MACs, nodes) of the chain; mirrors ``_parts`` and ``_emit_conv``."""
    hw_in, hw_out = spatial(layer)
    (r_out, r_in), o, c, kk = ranks, layer.out_features, layer.in_features, prod(layer.kernel)
    s = c if options["input"] == "absorbed" else r_in
    t = o if options["output"] == "absorbed" else r_out
    params, macs, nodes = s * t * kk, hw_out * s * t * kk, 1
    if options["input"] != "absorbed":
        params, macs, nodes = params + c * r_in, macs + hw_in * c * r_in, nodes + 1
    if options["output"] != "absorbed":
        params, macs, nodes = params + r_out * o, macs + hw_out * r_out * o, nodes + 1
    return params, macs, nodes


def _emit_conv(b: ChainBuilder, x, cores: list[np.ndarray], layer: Layer, options: dict):
    nd = len(layer.kernel)
    u_in, kernel, u_out = _parts(cores, options)
    h = x if u_in is None else b.conv1x1(x, u_in.T, nd)
    h = b.op("Conv", [h, b.weight(kernel, "spatial")], **spatial_conv_attrs(layer))
    return h if u_out is None else b.conv1x1(h, u_out, nd)


@register
class TuckerFormat(SVDFormat):
    name = "tucker"

    def max_ranks(self, layer: Layer, modes: dict) -> list[int]:
        if layer.kind != "conv":
            return super().max_ranks(layer, modes)
        o, c, kk = layer.out_features, layer.in_features, prod(layer.kernel)
        return [min(o, c * kk), min(c, o * kk)]

    def options(self, layer: Layer, modes: dict) -> list[dict]:
        return list(CONV_OPTIONS) if layer.kind == "conv" else super().options(layer, modes)

    def realize(self, layer: Layer, modes: dict, ranks: list[int]) -> dict:
        if layer.kind != "conv":
            return super().realize(layer, modes, ranks)
        return cheapest_option(self, layer, modes, ranks, CONV_OPTIONS)

    def cost(self, layer: Layer, modes: dict, ranks: list[int], options: dict | None = None) -> Cost:
        if layer.kind != "conv":
            return super().cost(layer, modes, ranks, options)
        options = options if options is not None else self.realize(layer, modes, ranks)
        return finish_cost(layer, *_conv_cost(layer, ranks, options))

    def decompose(self, weight: np.ndarray, layer: Layer, modes: dict, ranks: list[int]) -> list[np.ndarray]:
        if layer.kind != "conv":
            return super().decompose(weight, layer, modes, ranks)
        self.validate_ranks(layer, modes, ranks)
        u_out, core, u_in = tucker2(weight.reshape(layer.out_features, layer.in_features, -1), *ranks)
        return [u_out, core.reshape(*core.shape[:2], *layer.kernel), u_in]

    def reconstruct(self, cores: list[np.ndarray], layer: Layer, modes: dict) -> np.ndarray:
        if layer.kind != "conv":
            return super().reconstruct(cores, layer, modes)
        u_out, core, u_in = cores  # tensorly ops: also runs on torch tensors (see train.lowrank)
        g = tl.reshape(core, (int(core.shape[0]), int(core.shape[1]), -1))
        w = tl.tensordot(tl.tensordot(u_out, g, axes=([1], [0])), u_in, axes=([1], [1]))  # (O, K, C)
        return tl.reshape(tl.transpose(w, (0, 2, 1)), layer.dense_shape)

    def emit(self, b, x, cores, layer, modes, options):
        if layer.kind != "conv":
            return super().emit(b, x, cores, layer, modes, options)
        return _emit_conv(b, x, cores, layer, options)
