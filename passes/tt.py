"""Tensor-train (TT) rewrite of Gemm/MatMul (TT-matrix) and Conv (TT-conv, spatial core in the middle).

Fully connected, ``W (out, in)`` with ``out = m_1..m_d``, ``in = n_1..n_d`` (row-major, first
mode slowest): cores ``G_k (r_{k-1}, m_k, n_k, r_k)``, ``r_0 = r_d = 1``,
``W[(i_1..i_d), (j_1..j_d)] = G_1[:, i_1, j_1, :] ... G_d[:, i_d, j_d, :]``.
Initialised by TT-SVD of W permuted to ``(m_1 n_1, ..., m_d n_d)``.

Conv, kernel ``(O, C, *k)`` with ``C = c_1..c_q``, ``O = o_1..o_p``, ``K = prod(k)``: a TT over the
modes ``[c_q, ..., c_1, K, o_1, ..., o_p]`` (Yin et al.'s middle spatial core, input side
reversed so that every step of the chain is a transpose-free Reshape + 1x1 Conv).

Rewrite (standard ONNX ops only, no Einsum, no Transpose on the activations):

* FC, left-to-right: ``Reshape(x, [-1, r_{k-1} n_k, D_k]) -> MatMul(C_k, .)`` per core with
  ``C_k`` of shape ``(m_k r_k, r_{k-1} n_k)`` and ``D_k = n_{k+1}..n_d``; a step whose trailing
  width is 1 becomes a plain 2-D ``MatMul(., C_k^T)``. Right-to-left mirrors it. The direction
  with fewer MACs is used.
* Cores may be merged into two super-cores (a TT-matrix with coarser modes) when the cost model
  says the chain gets faster (see ``Format.realize``) at a bounded parameter increase.
* Conv: ``Reshape(x, [-1, c s, 0, 0]) -> Conv1x1`` per input core (C -> s_q channels), one
  ``Conv`` with the original kernel/stride/pads/dilations/auto_pad (s_q -> t_0), then
  ``Conv1x1 -> Reshape(., [-1, t_j, 0, 0])`` per output core, ``Reshape(., [-1, O, 0, 0])``.
  Either side may be merged into one 1x1 Conv or absorbed into the spatial Conv.
* The bias is added by the last node (see ``ttcompile.rewrite.compress``).
"""

from __future__ import annotations

from itertools import product
from math import prod

import numpy as np
import onnx_ir as ir
import tensorly as tl

from ttcompile.layers import Layer
from ttcompile.passes.base import (
    ChainBuilder,
    Cost,
    Format,
    cheapest_option,
    finish_cost,
    register,
    spatial,
    spatial_conv_attrs,
)
from ttcompile.rewrite.factorize import default_order, factorize


def tt_caps(dims: list[int]) -> list[int]:
    """Rank caps ``[1, min(n_1..n_k, n_{k+1}..n_d) for k, 1]`` of a TT over ``dims``."""
    return [1] + [min(prod(dims[:k]), prod(dims[k:])) for k in range(1, len(dims))] + [1]


def tt_svd(tensor: np.ndarray, ranks: list[int]) -> list[np.ndarray]:
    """Sequential truncated SVD; cores ``(r_{k-1}, n_k, r_k)``, each but the last left-orthogonal."""
    dims = tensor.shape
    cores, rest = [], np.asarray(tensor, dtype=np.float64).reshape(1, -1)
    for k, n in enumerate(dims[:-1]):
        rest = rest.reshape(ranks[k] * n, -1)
        u, s, vt = np.linalg.svd(rest, full_matrices=False)
        r = min(ranks[k + 1], len(s))
        cores.append(u[:, :r].reshape(ranks[k], n, r))
        rest = s[:r, None] * vt[:r]
        ranks = list(ranks[: k + 1]) + [r] + list(ranks[k + 2 :])
    cores.append(rest.reshape(ranks[-2], dims[-1], 1))
    return cores


def tt_full(cores: list[np.ndarray]) -> np.ndarray:
    """Contract TT cores ``(r, n, r')`` into the full tensor ``(n_1, ..., n_d)``.

    Written with tensorly ops, so it also runs (with gradients) on torch tensors under
    ``tl.backend_context("pytorch")``; the same holds for ``TTFormat.reconstruct``.
    """
    out = cores[0]
    for core in cores[1:]:
        out = tl.tensordot(out, core, axes=([out.ndim - 1], [0]))
    return tl.reshape(out, tuple(out.shape[1:-1]))


def balance_norms(cores: list[np.ndarray]) -> list[np.ndarray]:
    """Rescale cores to equal Frobenius norms (same product), so no core carries all the scale."""
    norms = [np.linalg.norm(c) for c in cores]
    if min(norms) == 0:
        return cores
    target = np.exp(np.mean(np.log(norms)))
    return [c * (target / n) for c, n in zip(cores, norms)]


# ---- fully connected: TT-matrix -------------------------------------------------------------


def _merge_matrix_cores(cores: list[np.ndarray]) -> np.ndarray:
    """Contract TT-matrix cores ``(r, m, n, r')`` into one super-core ``(r_0, prod m, prod n, r_end)``."""
    out = cores[0]
    for core in cores[1:]:
        r0, m, n, _ = out.shape
        _, m2, n2, r2 = core.shape
        out = tl.reshape(tl.einsum("amnr,rpqs->ampnqs", out, core), (r0, m * m2, n * n2, r2))
    return out


def _fc_groups(d: int, split: int | None) -> list[slice]:
    """Core index ranges: one per core, or two super-cores split before core ``split``."""
    if split:
        return [slice(0, split), slice(split, d)]
    return [slice(k, k + 1) for k in range(d)]


def _fc_chain_shapes(modes: dict, ranks: list[int], split: int | None) -> list[tuple[int, int, int, int]]:
    """Core shapes ``(r, M, N, r')`` of the (possibly merged) chain."""
    m, n = modes["out"], modes["in"]
    return [
        (ranks[g.start], prod(m[g]), prod(n[g]), ranks[g.stop]) for g in _fc_groups(len(m), split)
    ]


def _fc_chain_macs(shapes: list[tuple[int, int, int, int]], direction: str) -> int:
    if direction == "rl":  # step k sees the in-modes before it and the out-modes after it
        shapes = [(r, n, m, r2) for (r, m, n, r2) in shapes]
    ms, ns = [s[1] for s in shapes], [s[2] for s in shapes]
    return sum(prod(ms[:k]) * r * m * n * r2 * prod(ns[k + 1 :]) for k, (r, m, n, r2) in enumerate(shapes))


def _emit_fc(b: ChainBuilder, x: ir.Value, cores: list[np.ndarray], direction: str) -> ir.Value:
    """Transpose-free MatMul chain; output layout ``(rows, m_1, ..., m_d)`` flattened per row."""
    if direction == "rl":
        return _emit_fc_rl(b, x, cores)
    h, ns = x, [c.shape[2] for c in cores]
    for k, core in enumerate(cores):
        r, m, n, r2 = core.shape
        width = prod(ns[k + 1 :])
        cmat = core.transpose(1, 3, 0, 2).reshape(m * r2, r * n)
        if width == 1:
            h = b.matmul(b.reshape(h, [-1, r * n]), b.weight(cmat.T))
        else:
            h = b.matmul(b.weight(cmat), b.reshape(h, [-1, r * n, width]))
    return h


def _emit_fc_rl(b: ChainBuilder, x: ir.Value, cores: list[np.ndarray]) -> ir.Value:
    h, ms = x, [c.shape[1] for c in cores]
    for k in range(len(cores) - 1, -1, -1):
        r, m, n, r2 = cores[k].shape
        width = prod(ms[k + 1 :])
        cmat = cores[k].reshape(r * m, n * r2)
        if width == 1:
            h = b.matmul(b.reshape(h, [-1, n * r2]), b.weight(cmat.T))
        else:
            h = b.matmul(b.weight(cmat), b.reshape(h, [-1, n * r2, width]))
    return h


# ---- convolution: TT-conv with the spatial core in the middle --------------------------------


def _conv_dims(layer: Layer, modes: dict) -> list[int]:
    return [*reversed(modes["in"]), prod(layer.kernel), *modes["out"]]


def _merge_in_cores(cores: list[np.ndarray]) -> np.ndarray:
    """Input cores (TT order c_q..c_1) -> one core ``(1, C, s_q)`` with C in row-major c_1..c_q."""
    out = cores[0].reshape(cores[0].shape[1], -1)  # (c_q, s_1)
    for core in cores[1:]:
        out = np.tensordot(out, core, axes=([-1], [0]))  # (..., c, s)
    q = out.ndim - 1
    out = out.transpose(*reversed(range(q)), q)
    return out.reshape(1, -1, out.shape[-1])


def _merge_out_cores(cores: list[np.ndarray]) -> np.ndarray:
    """Output cores ``(t, o, t')`` -> one core ``(t_0, O, 1)``."""
    out = cores[0]
    for core in cores[1:]:
        out = np.tensordot(out, core, axes=([-1], [0]))
    return out.reshape(out.shape[0], -1, 1)


def _conv_parts(cores: list[np.ndarray], q: int, options: dict) -> tuple[list, np.ndarray, list]:
    """(input cores, spatial kernel ``(t, s, *k)``-ready core ``(s, K, t)``, output cores) after merging."""
    ins, kern, outs = cores[:q], cores[q], cores[q + 1 :]
    if options["input"] != "chain":
        ins = [_merge_in_cores(ins)]
    if options["output"] != "chain":
        outs = [_merge_out_cores(outs)]
    if options["input"] == "absorbed":
        kern = np.tensordot(ins[0][0], kern, axes=([1], [0]))  # (C, K, t)
        ins = []
    if options["output"] == "absorbed":
        kern = np.tensordot(kern, outs[0][:, :, 0], axes=([2], [0]))  # (s, K, O)
        outs = []
    return ins, kern, outs


def _conv_part_shapes(layer: Layer, modes: dict, ranks: list[int], options: dict):
    """Shapes mirroring ``_conv_parts`` without numbers: lists of (a, n, b) triples."""
    dims, q = _conv_dims(layer, modes), len(modes["in"])
    shapes = [(ranks[k], n, ranks[k + 1]) for k, n in enumerate(dims)]
    ins, (s, kk, t), outs = shapes[:q], shapes[q], shapes[q + 1 :]
    if options["input"] != "chain":
        ins = [(1, layer.in_features, s)]
    if options["output"] != "chain":
        outs = [(t, layer.out_features, 1)]
    if options["input"] == "absorbed":
        ins, s = [], layer.in_features
    if options["output"] == "absorbed":
        outs, t = [], layer.out_features
    return ins, (s, kk, t), outs


def _conv_cost(layer: Layer, modes: dict, ranks: list[int], options: dict) -> tuple[int, int, int]:
    hw_in, hw_out = spatial(layer)
    ins, (s, kk, t), outs = _conv_part_shapes(layer, modes, ranks, options)
    params = sum(prod(c) for c in ins) + s * kk * t + sum(prod(c) for c in outs)
    macs, nodes, rest, channels = 0, 1, layer.in_features, layer.in_features
    for a, c, b2 in ins:
        rest //= c
        macs += hw_in * rest * c * a * b2
        nodes += 1 + (c * a != channels)
        channels = b2
    macs += hw_out * s * kk * t
    done = 1
    for j, (a, o, b2) in enumerate(outs):
        macs += hw_out * done * a * o * b2
        done *= o
        nodes += 1 + (j > 0)
    nodes += len(outs) > 1
    return params, macs, nodes


def _emit_conv(b: ChainBuilder, x: ir.Value, cores: list[np.ndarray], layer: Layer, q: int, options: dict):
    nd = len(layer.kernel)
    ins, kern, outs = _conv_parts(cores, q, options)
    h, channels = x, layer.in_features
    for core in ins:  # (s, c, s') contracts channel factor c: Reshape + 1x1 Conv
        s, c, s2 = core.shape
        if c * s != channels:
            h = b.reshape(h, [-1, c * s] + [0] * nd)
        h = b.conv1x1(h, core.transpose(2, 1, 0).reshape(s2, c * s), nd)
        channels = s2
    s, _, t = kern.shape
    w = kern.transpose(2, 0, 1).reshape(t, s, *layer.kernel)
    h = b.op("Conv", [h, b.weight(w, "spatial")], **spatial_conv_attrs(layer))
    for j, core in enumerate(outs):  # (t, o, t') produces channel factor o
        t, o, t2 = core.shape
        if j > 0:
            h = b.reshape(h, [-1, t] + [0] * nd)
        h = b.conv1x1(h, core.transpose(1, 2, 0).reshape(o * t2, t), nd)
    if len(outs) > 1:
        h = b.reshape(h, [-1, layer.out_features] + [0] * nd)
    return h


# ---- the format --------------------------------------------------------------------------------


@register
class TTFormat(Format):
    name = "tt"

    def default_modes(self, layer: Layer) -> dict:
        if layer.kind == "conv":
            return {
                "in": factorize(layer.in_features, 2) if layer.in_features >= 16 else [layer.in_features],
                "out": factorize(layer.out_features, 2) if layer.out_features >= 16 else [layer.out_features],
            }
        d = default_order(layer.in_features, layer.out_features)
        return {"in": factorize(layer.in_features, d), "out": factorize(layer.out_features, d)}

    def check_modes(self, layer: Layer, modes: dict) -> None:
        if prod(modes["in"]) != layer.in_features or prod(modes["out"]) != layer.out_features:
            raise ValueError(
                f"modes {modes} of {layer.name} do not multiply to in={layer.in_features}, out={layer.out_features}"
            )
        if layer.kind != "conv" and len(modes["in"]) != len(modes["out"]):
            raise ValueError(f"TT-matrix modes of {layer.name} need as many in-modes as out-modes: {modes}")

    def tt_dims(self, layer: Layer, modes: dict) -> list[int]:
        if layer.kind == "conv":
            return _conv_dims(layer, modes)
        return [m * n for m, n in zip(modes["out"], modes["in"])]

    def max_ranks(self, layer: Layer, modes: dict) -> list[int]:
        self.check_modes(layer, modes)
        return tt_caps(self.tt_dims(layer, modes))

    def options(self, layer: Layer, modes: dict) -> list[dict]:
        if layer.kind == "conv":
            sides = ["chain", "merged", "absorbed"]
            return [{"input": i, "output": o} for i, o in product(sides, sides) if not i == o == "absorbed"]
        d = len(modes["in"])
        splits = [None] + (list(range(1, d)) if d >= 3 else [])
        return [{"direction": r, "split": s} for s in splits for r in ("lr", "rl")]

    def realize(self, layer: Layer, modes: dict, ranks: list[int]) -> dict:
        return cheapest_option(self, layer, modes, ranks, self.options(layer, modes))

    def cost(self, layer: Layer, modes: dict, ranks: list[int], options: dict | None = None) -> Cost:
        options = options if options is not None else self.realize(layer, modes, ranks)
        if layer.kind == "conv":
            return finish_cost(layer, *_conv_cost(layer, modes, ranks, options))
        shapes = _fc_chain_shapes(modes, ranks, options["split"])
        params = sum(prod(s) for s in shapes)
        macs = layer.rows * _fc_chain_macs(shapes, options["direction"])
        return finish_cost(layer, params, macs, 2 * len(shapes))

    def tensor(self, weight: np.ndarray, layer: Layer, modes: dict) -> np.ndarray:
        """The canonical weight as the d-way tensor the TT runs over, shape ``tt_dims``."""
        if layer.kind == "conv":
            o, c, q, p = modes["out"], modes["in"], len(modes["in"]), len(modes["out"])
            return weight.reshape(*o, *c, -1).transpose(*range(p + q - 1, p - 1, -1), p + q, *range(p))
        m, n, d = modes["out"], modes["in"], len(modes["in"])
        t = weight.reshape(*m, *n).transpose([i for k in range(d) for i in (k, d + k)])
        return t.reshape(self.tt_dims(layer, modes))

    def decompose(self, weight: np.ndarray, layer: Layer, modes: dict, ranks: list[int]) -> list[np.ndarray]:
        self.validate_ranks(layer, modes, ranks)
        cores = tt_svd(self.tensor(weight, layer, modes), ranks)
        if layer.kind == "conv":
            return cores
        return [cr.reshape(cr.shape[0], mk, nk, cr.shape[-1]) for cr, mk, nk in zip(cores, modes["out"], modes["in"])]

    def reconstruct(self, cores: list[np.ndarray], layer: Layer, modes: dict) -> np.ndarray:
        if layer.kind == "conv":
            q, p = len(modes["in"]), len(modes["out"])
            full = tt_full(cores)  # (c_q..c_1, K, o_1..o_p)
            full = tl.transpose(full, (*range(q + 1, q + 1 + p), *range(q - 1, -1, -1), q))
            return tl.reshape(full, layer.dense_shape)
        return tl.reshape(_merge_matrix_cores(cores), (layer.out_features, layer.in_features))

    def emit(self, b, x, cores, layer, modes, options):
        if layer.kind == "conv":
            return _emit_conv(b, x, cores, layer, len(modes["in"]), options)
        merged = [_merge_matrix_cores(cores[g]) for g in _fc_groups(len(cores), options["split"])]
        return _emit_fc(b, x, merged, options["direction"])
