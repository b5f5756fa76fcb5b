"""Tensor-ring (TR) rewrite of Gemm/MatMul and Conv (Wang et al., CVPR 2018; TR-SVD of Zhao et al., 2016).

Ring convention (as in Cao et al.'s code): ``d`` cores ``Z_k`` of shape ``(ranks[k-1], n_k, ranks[k])``
(``ranks[-1]`` for ``k = 0``), so ``ranks[k]`` is the bond between core k and core k+1 and
``ranks[d-1]`` closes the ring (last core -> core 0); ``len(ranks) == d``.
``T[i_0, ..., i_{d-1}] = Tr(Z_0[:, i_0, :] @ ... @ Z_{d-1}[:, i_{d-1}, :])``.
tensorly's ``validate_tr_rank`` lists ``d + 1`` ranks with ``rank[0] == rank[d]``: ours are its
``rank[1:]``, and its list is ``[ranks[-1], *ranks]``.

Ring order of the modes (factors row-major, first slowest):

* FC, ``W (out, in)`` with ``in = n_1..n_p``, ``out = m_1..m_q`` (``p != q`` allowed):
  ring ``[n_1, ..., n_p, m_q, ..., m_1]``. Bond ``c = ranks[p-1]`` joins the fast in/out factors,
  ``a = ranks[-1]`` the slow ones.
* Conv, kernel ``(O, C, *k)`` with ``C = c_1..c_q``, ``O = o_1..o_p``, ``K = prod(k)``:
  ring ``[c_1, ..., c_q, K, o_p, ..., o_1]`` (spatial core in the middle); ``s = ranks[q-1]`` and
  ``t = ranks[q]`` are the spatial core's bonds, ``a = ranks[-1]`` closes the ring.

Rewrite (standard ONNX ops only: Reshape, MatMul, Conv, Squeeze/Unsqueeze; no Einsum, no Transpose).
Each side of the ring is an open chain whose two end bonds become extra modes (``_open_core``): the
input cores form a TT-matrix ``(a c) x N`` with out-modes ``(a, 1, .., 1, c)``, the output cores
(taken from ``m_1`` to ``m_q``) a TT-matrix ``M x (a c)`` with in-modes ``(a, 1, .., 1, c)``.

* FC: ``x -> input chain -> (rows, a, c) -> output chain -> (rows, m_1..m_q)``, both sides with TT's
  transpose-free Reshape + MatMul chain (``tt._emit_fc``); per side the direction and merged
  super-cores are chosen by the cost model. The ring rank ``a`` rides in the rows (left to right) or
  in the trailing width (right to left) and is contracted by the output chain.
* Conv: the same chains as Reshape + 1x1 Conv on a depth view ``(rows, channels, D, *spatial)``
  (``Unsqueeze`` at axis 2; ``D`` holds the factors a step carries: the channel factors not
  contracted yet left to right, the out-modes produced so far right to left), so batch and spatial
  dims stay dynamic. Input chain -> ``(N a, s, *sp)`` (``Squeeze``) -> ONE spatial ``Conv`` with the
  ring rank folded into the batch, ``(N a, s, *sp) -> (N a, t, *sp')``, carrying the original
  kernel/strides/pads/dilations/auto_pad -> output chain (``a`` rides in the rows right to left and
  is contracted with ``u_1`` last, or is contracted first with ``t`` carried in the depth) ->
  ``Reshape [-1, O, 1, 0..]`` + ``Squeeze``. A side of one (or merged) core needs no depth view:
  input ``Conv1x1 C -> a s`` + ``Reshape [-1, s, 0..]``, output ``Reshape [-1, a t, 0..]`` +
  ``Conv1x1 a t -> O``. The input side may also be absorbed into the spatial Conv (``C -> a t``).
* The bias is added by the last node (see ``ttcompile.rewrite.compress``).

Initialisation, TR-SVD: start at core ``s0 = tr_start(dims)`` (core 0 or d-1, both next to the
closing bond; the one with the larger ``min(n_k, N / n_k)``); SVD of the ``(n_s0, rest)`` unfolding
truncated to ``ranks[s0-1] * ranks[s0]`` columns, split (left bond slow) into the two bonds of core
``s0``; then TT-SVD of the remainder ``(ranks[s0] n_{s0+1}, ..., n_{s0-1} ranks[s0-1])``.
Rank caps (``tr_caps``): the first split is ``p = ceil(sqrt(m))``, ``q = ceil(m / p)`` with
``m = min(n_s0, N / n_s0)``: near the square root, the smallest product ``>= m``, so the caps are
exact even for a prime m (an SVD with fewer columns than a requested rank is zero-padded, which keeps
exactness); the other bonds get the TT caps of the remainder. At the caps TR-SVD is exact.
"""

from __future__ import annotations

from collections.abc import Callable
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
from ttcompile.passes.tr_svd import merge_segment, tr_caps, tr_full, tr_svd
from ttcompile.passes.tt import _emit_fc, _fc_chain_macs, _fc_groups
from ttcompile.rewrite.factorize import default_order, factorize

Shape = tuple[int, ...]

# ---- the two sides of the ring as TT-matrix chains -------------------------------------------------


def ring_dims(layer: Layer, modes: dict) -> list[int]:
    """Mode sizes in ring order (see the module docstring)."""
    mid = [prod(layer.kernel)] if layer.kind == "conv" else []
    return [*modes["in"], *mid, *reversed(modes["out"])]


def _ring_perm(layer: Layer, modes: dict) -> list[int]:
    """Axes of the weight reshaped to ``(o_1.., c_1..[, K])`` in ring order."""
    p, q = len(modes["out"]), len(modes["in"])
    mid = [p + q] if layer.kind == "conv" else []
    return [*range(p, p + q), *mid, *range(p - 1, -1, -1)]


def _sides(items: list, q: int, conv: bool, flip: Callable) -> tuple[list, object, list]:
    """(input cores, spatial core or None, output cores from m_1 / o_1 on, each flipped to (toward a, n, ..))."""
    mid = 1 if conv else 0
    return items[:q], items[q] if conv else None, [flip(c) for c in reversed(items[q + mid :])]


def _flip_shape(shape: Shape) -> Shape:
    return shape[::-1]


def _flip_core(core: np.ndarray) -> np.ndarray:
    return core.transpose(2, 1, 0)


def _ring_shapes(dims: list[int], ranks: list[int]) -> list[Shape]:
    return [(ranks[k - 1], n, ranks[k]) for k, n in enumerate(dims)]


def _open_shape(k: int, count: int, shape: Shape, produce: bool) -> Shape:
    """TT-matrix shape ``(r, m, n, r')`` of core ``k`` of an open chain of ``count`` cores ``(l, x, r)``.

    The chain's end bonds become modes: the first core's left bond and the last core's right bond
    (left slow). ``produce=False``: ``x`` is an in-mode (contracted), the end bonds out-modes;
    ``produce=True`` swaps the two roles.
    """
    l, x, r = shape
    lead, tail = k == 0, k == count - 1
    s = (1 if lead else l, (l if lead else 1) * (r if tail else 1), x, 1 if tail else r)
    return (s[0], s[2], s[1], s[3]) if produce else s


def _open_core(k: int, count: int, core: np.ndarray, produce: bool) -> np.ndarray:
    g = (core.transpose(0, 2, 1) if k == count - 1 else core).reshape(_open_shape(k, count, core.shape, False))
    return g.transpose(0, 2, 1, 3) if produce else g


def _groups(count: int, split: int | None) -> list[slice]:
    """One group per core, two super-cores split before ``split``, or one when ``split == count``."""
    return [slice(0, count)] if split == count else _fc_groups(count, split)


def _open_shapes(seg: list[Shape], groups: list[slice], produce: bool) -> list[Shape]:
    merged = [(seg[g][0][0], prod(s[1] for s in seg[g]), seg[g][-1][2]) for g in groups]
    return [_open_shape(k, len(merged), s, produce) for k, s in enumerate(merged)]


def _open_cores(seg: list[np.ndarray], groups: list[slice], produce: bool) -> list[np.ndarray]:
    merged = [merge_segment(seg[g]) for g in groups]
    return [_open_core(k, len(merged), c, produce) for k, c in enumerate(merged)]


def _cmat(core: np.ndarray) -> np.ndarray:
    """TT-matrix core ``(r, m, n, r')`` as the ``(m r', r n)`` matrix of a left-to-right step."""
    r, m, n, r2 = core.shape
    return core.transpose(1, 3, 0, 2).reshape(m * r2, r * n)


# ---- fully connected ---------------------------------------------------------------------------


def _side_options(count: int) -> list[dict]:
    splits = [None] + (list(range(1, count)) if count >= 3 else []) + ([count] if count >= 2 else [])
    return [
        {"direction": d, "split": s}
        for s in splits
        for d in (("lr", "rl") if len(_groups(count, s)) > 1 else ("lr",))
    ]


def _fc_shapes(layer: Layer, modes: dict, ranks: list[int], options: dict) -> tuple[list[Shape], list[Shape]]:
    ins, _, outs = _sides(_ring_shapes(ring_dims(layer, modes), ranks), len(modes["in"]), False, _flip_shape)
    return (
        _open_shapes(ins, _groups(len(ins), options["input"]["split"]), False),
        _open_shapes(outs, _groups(len(outs), options["output"]["split"]), True),
    )


def _fc_cost(layer: Layer, modes: dict, ranks: list[int], options: dict) -> tuple[int, int, int]:
    ins, outs = _fc_shapes(layer, modes, ranks, options)
    params = sum(prod(s) for s in ins + outs)
    macs = _fc_chain_macs(ins, options["input"]["direction"]) + _fc_chain_macs(outs, options["output"]["direction"])
    return params, layer.rows * macs, 2 * (len(ins) + len(outs))


def _emit_fc_ring(b: ChainBuilder, x: ir.Value, cores: list[np.ndarray], q: int, options: dict) -> ir.Value:
    ins, _, outs = _sides(cores, q, False, _flip_core)
    h = _emit_fc(b, x, _open_cores(ins, _groups(len(ins), options["input"]["split"]), False),
                 options["input"]["direction"])
    return _emit_fc(b, h, _open_cores(outs, _groups(len(outs), options["output"]["split"]), True),
                    options["output"]["direction"])


# ---- convolution -------------------------------------------------------------------------------


def _conv_groups(count: int, how: str) -> list[slice]:
    return _groups(count, count if how == "merged" else None)


def _conv_shapes(layer: Layer, modes: dict, ranks: list[int], options: dict):
    """(input chain shapes, spatial conv ``(batch fold, in channels, K, out channels)``, output chain shapes)."""
    shapes = _ring_shapes(ring_dims(layer, modes), ranks)
    ins, (s, kk, t), outs = _sides(shapes, len(modes["in"]), True, _flip_shape)
    outs = _open_shapes(outs, _conv_groups(len(outs), options["output"]), True)
    if options["input"] == "absorbed":
        return [], (1, layer.in_features, kk, ranks[-1] * t), outs
    return _open_shapes(ins, _conv_groups(len(ins), options["input"]), False), (ranks[-1], s, kk, t), outs


def _conv_parts(cores: list[np.ndarray], layer: Layer, modes: dict, options: dict):
    """Numeric twin of ``_conv_shapes``: (input chain cores, spatial Conv weight, output chain cores)."""
    ins, kern, outs = _sides(cores, len(modes["in"]), True, _flip_core)
    outs = _open_cores(outs, _conv_groups(len(outs), options["output"]), True)
    s, _, t = kern.shape
    if options["input"] == "absorbed":
        merged = merge_segment(ins)  # (a, C, s)
        w = np.einsum("acs,skt->atck", merged, kern)
        return [], w.reshape(merged.shape[0] * t, layer.in_features, *layer.kernel), outs
    w = kern.transpose(2, 0, 1).reshape(t, s, *layer.kernel)
    return _open_cores(ins, _conv_groups(len(ins), options["input"]), False), w, outs


def _chain_direction(how: str) -> str:
    return "rl" if how == "rl" else "lr"


def _conv_nodes(n_in: int, n_out: int, options: dict) -> int:
    """Nodes of ``_emit_conv``: a depth-view chain adds Unsqueeze, Squeeze and (but for a left-to-right
    input chain) a Reshape; a single input core a Reshape, a single output core one unless absorbed."""
    nodes = 1 + (0 if n_in == 0 else 2 if n_in == 1 else 2 * n_in + 2 + (options["input"] == "rl"))
    return nodes + (1 + (n_in > 0) if n_out == 1 else 2 * n_out + 3)


def _conv_cost(layer: Layer, modes: dict, ranks: list[int], options: dict) -> tuple[int, int, int]:
    hw_in, hw_out = spatial(layer)
    ins, (fold, cin, kk, cout), outs = _conv_shapes(layer, modes, ranks, options)
    params = sum(prod(s) for s in ins + outs) + cin * kk * cout
    macs = hw_in * _fc_chain_macs(ins, _chain_direction(options["input"]))
    macs += hw_out * (fold * cin * kk * cout + _fc_chain_macs(outs, _chain_direction(options["output"])))
    return params, macs, _conv_nodes(len(ins), len(outs), options)


def _axis_op(b: ChainBuilder, op_type: str, x: ir.Value) -> ir.Value:
    """Squeeze/Unsqueeze of axis 2 (axes as an input from opset 13, as an attribute before)."""
    if b.graph.opset_imports.get("", 13) >= 13:
        return b.op(op_type, [x, b.ints([2])])
    return b.op(op_type, [x], axes=[2])


def _emit_pointwise(b: ChainBuilder, x: ir.Value, cores: list[np.ndarray], direction: str, nd: int) -> ir.Value:
    """TT-matrix chain on channels, as tt's FC chain but with 1x1 Convs on a depth view.

    ``x (N, channels, *sp)`` becomes ``(rows, K, D, *sp)`` (``Unsqueeze`` + per step ``Reshape
    [-1, K, D, 0..]``): each step contracts the channel axis ``K`` and carries the depth axis ``D``, the
    later cores' in-modes (left to right) or the out-modes produced so far (right to left). Output:
    ``(N m_1..m_{d-1}, m_d, 1, *sp)`` (lr) or ``(N, m_1, m_2..m_d, *sp)`` (rl).
    """
    h, ms, ns = _axis_op(b, "Unsqueeze", x), [c.shape[1] for c in cores], [c.shape[2] for c in cores]
    order = range(len(cores)) if direction == "lr" else range(len(cores) - 1, -1, -1)
    for k in order:
        r, m, n, r2 = cores[k].shape
        if direction == "lr":
            h = b.reshape(h, [-1, r * n, prod(ns[k + 1 :])] + [0] * nd)
            w = _cmat(cores[k])
        else:
            h = b.reshape(h, [-1, n * r2, prod(ms[k + 1 :])] + [0] * nd)
            w = cores[k].reshape(r * m, n * r2)
        h = b.conv1x1(h, w, nd + 1)
    return h


def _leave_depth(b: ChainBuilder, h: ir.Value, channels: int, nd: int, reshape: bool) -> ir.Value:
    """``(rows, K, D, *sp)`` -> ``(rows K D / channels, channels, *sp)``: Reshape ``[-1, channels, 1, 0..]``
    (skipped when ``reshape`` is False: already so) + ``Squeeze``."""
    if reshape:
        h = b.reshape(h, [-1, channels, 1] + [0] * nd)
    return _axis_op(b, "Squeeze", h)


def _emit_conv(b: ChainBuilder, x: ir.Value, cores: list[np.ndarray], layer: Layer, modes: dict, options: dict):
    nd = len(layer.kernel)
    ins, w, outs = _conv_parts(cores, layer, modes, options)
    h, s = x, w.shape[1]
    if len(ins) == 1:
        h = b.reshape(b.conv1x1(h, _cmat(ins[0]), nd), [-1, s] + [0] * nd)
    elif ins:
        h = _emit_pointwise(b, h, ins, options["input"], nd)
        h = _leave_depth(b, h, s, nd, options["input"] == "rl")
    h = b.op("Conv", [h, b.weight(w, "spatial")], **spatial_conv_attrs(layer))
    if len(outs) == 1:
        if ins:
            h = b.reshape(h, [-1, outs[0].shape[2]] + [0] * nd)
        return b.conv1x1(h, _cmat(outs[0]), nd)
    h = _emit_pointwise(b, h, outs, options["output"], nd)
    return _leave_depth(b, h, layer.out_features, nd, True)


# ---- the format --------------------------------------------------------------------------------


def _tr_factors(n: int) -> list[int]:
    """Balanced factors near 6 (LeNet-5: 1250 -> 5x5x5x10, 320 -> 5x8x8, 20 -> 4x5, 10 -> 10)."""
    return factorize(n, default_order(n, base=6.0, lo=1, hi=4))


@register
class TRFormat(Format):
    name = "tr"

    def default_modes(self, layer: Layer) -> dict:
        return {"in": _tr_factors(layer.in_features), "out": _tr_factors(layer.out_features)}

    def check_modes(self, layer: Layer, modes: dict) -> None:
        if prod(modes["in"]) != layer.in_features or prod(modes["out"]) != layer.out_features:
            raise ValueError(
                f"modes {modes} of {layer.name} do not multiply to in={layer.in_features}, out={layer.out_features}"
            )

    def max_ranks(self, layer: Layer, modes: dict) -> list[int]:
        self.check_modes(layer, modes)
        return tr_caps(ring_dims(layer, modes))

    def options(self, layer: Layer, modes: dict) -> list[dict]:
        if layer.kind == "conv":
            ins = (["lr", "rl", "merged"] if len(modes["in"]) > 1 else ["lr"]) + ["absorbed"]
            outs = ["lr", "rl", "merged"] if len(modes["out"]) > 1 else ["lr"]
            return [{"input": i, "output": o} for i, o in product(ins, outs)]
        return [
            {"input": i, "output": o}
            for i, o in product(_side_options(len(modes["in"])), _side_options(len(modes["out"])))
        ]

    def realize(self, layer: Layer, modes: dict, ranks: list[int]) -> dict:
        return cheapest_option(self, layer, modes, ranks, self.options(layer, modes))

    def cost(self, layer: Layer, modes: dict, ranks: list[int], options: dict | None = None) -> Cost:
        options = options if options is not None else self.realize(layer, modes, ranks)
        fn = _conv_cost if layer.kind == "conv" else _fc_cost
        return finish_cost(layer, *fn(layer, modes, ranks, options))

    def tensor(self, weight: np.ndarray, layer: Layer, modes: dict) -> np.ndarray:
        """The canonical weight as the d-way tensor in ring order, shape ``ring_dims``."""
        tail = [-1] if layer.kind == "conv" else []
        return weight.reshape(*modes["out"], *modes["in"], *tail).transpose(_ring_perm(layer, modes))

    def decompose(self, weight: np.ndarray, layer: Layer, modes: dict, ranks: list[int]) -> list[np.ndarray]:
        self.validate_ranks(layer, modes, ranks)
        return tr_svd(self.tensor(weight, layer, modes), ranks)

    def reconstruct(self, cores: list[np.ndarray], layer: Layer, modes: dict) -> np.ndarray:
        full = tl.transpose(tr_full(cores), tuple(int(i) for i in np.argsort(_ring_perm(layer, modes))))
        return tl.reshape(full, layer.dense_shape)

    def emit(self, b, x, cores, layer, modes, options):
        if layer.kind == "conv":
            return _emit_conv(b, x, cores, layer, modes, options)
        return _emit_fc_ring(b, x, cores, len(modes["in"]), options)
