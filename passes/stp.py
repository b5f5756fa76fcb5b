"""Semi-tensor-product (STP) decompositions (Zhao et al., arXiv 2109.15200): semi-tensor Tucker ``sttu``,
semi-tensor train ``stt`` and semi-tensor ring ``str``, with factor ``t = modes["t"]``.

Definition implemented (methods.md 5.1-5.2): Cheng's LEFT semi-tensor product, for ``A (m x n)`` and
``B (p x q)`` with ``l = lcm(n, p)``: ``A ⋉ B = (A ⊗ I_{l/n}) (B ⊗ I_{l/p})``. In all three formats a
factor meets a dimension ``t`` times its own, so every ⋉ acts as ``(G ⊗ I_t)``, identity on the RIGHT:
an index of size ``R`` splits row-major as ``r = b t + s`` with ``s`` (size t) the FAST sub-index, and
``(G ⊗ I_t)[(b, s), (b', s')] = G[b, b'] δ(s, s')``: ``G`` acts on the slow part, ``s`` passes through.
``t`` must divide every rank and mode it splits; nominal ranks are the STP ranks ``R`` (multiples of t).

* ``sttu``, Tucker-2 over output and input channels, ``W (O, C, *k)`` (FC: ``W (out, in)``, no k)::

      W = G ×_out (U_out ⊗ I_t) ×_in (U_in ⊗ I_t)
      W[(a_o, s_o), (a_i, s_i), k] = sum_{b_o, b_i} U_out[a_o, b_o] U_in[a_i, b_i] G[(b_o, s_o), (b_i, s_i), k]

  cores ``[G (R_out, R_in, *k), U_out (O/t, R_out/t), U_in (C/t, R_in/t)]``, ranks ``[R_out, R_in]``,
  params ``R_out R_in K + (O R_out + C R_in) / t^2``. Initialised by a semi-tensor HOSVD: ``U_out`` holds
  the leading ``R_out/t`` left singular vectors of W unfolded as ``(a_o, (s_o, c, k))``: the fast
  sub-index moves to the columns, so the t copies share one basis; ``U_in`` likewise;
  ``G = W ×_out (U_out ⊗ I_t)^T ×_in (U_in ⊗ I_t)^T``. Exact at the caps
  ``R/t = min(I/t, t * rest)``, and whenever W has these semi-tensor multilinear ranks.
  Forward: ``(U_in ⊗ I_t)^T`` on the features is ``Reshape (.., C/t, t)`` + MatMul with
  ``U_in^T`` on the left (FC), or ``Reshape [0, C/t, -1, 0]`` + 1x1 Conv + ``Reshape [0, R_in, -1, 0]``
  (conv: ``s`` folded into the first spatial axis, so batch and spatial dims stay dynamic); then G
  (MatMul, or the one spatial Conv with the original stride/pads/dilations/auto_pad); then ``U_out``
  the same way. No Kronecker product is built; with ``t = 1`` the reshapes vanish (plain Tucker-2).

* ``stt``, on TT's tensorisation (``passes.tt``: TT-matrix pairs for FC, ``[c_q..c_1, K, o_1..o_p]``
  for conv), physical modes ``I_1..I_N`` with ``t | I_1``, nominal ranks ``[1, R_1, .., R_{N-1}, 1]``::

      X(i'_1, s, i_2, .., i_N) = [G_1(i'_1) ⋉ G_2(i_2) ⋉ .. ⋉ G_N(i_N)][0, s],   i_1 = i'_1 t + s

  with ``G_1(i'_1)`` of size ``1 x R_1``, ``G_k(i_k)`` of size ``(R_{k-1}/t) x (R_k/t)`` and the last
  ``(R_{N-1}/t) x 1``: the chain is a ``1 x t`` row whose fast index ``s`` completes the first mode. Cores:
  ``G_1 (1, I_1/t, R_1)`` and ``G_k (R_{k-1}/t, I_k, R_k/t)`` (TT-matrix FC: ``(.., m_k, n_k, ..)``).
* ``str``, on TR's ring (``passes.tr``), nominal ranks ``R_k`` (TR convention), the t-index on core j,
  the first ring core with ``t | I_j``::

      X(.., i'_j, s, ..) = sum_a [G_j(i'_j) ⋉ G_{j+1} ⋉ .. ⋉ G_{j-1}][a, a t + s]     (a semi-trace)

  ``G_j (R_{j-1}/t, I_j/t, R_j)``, every other core ``(R_{k-1}/t, I_k, R_k/t)``. With ``R_{j-1} = t``
  (the ring cut before core j) this is STT's definition.

Both are lowered (methods.md 5.2, derived and checked numerically): ``(G ⊗ I_t)`` lets ``s`` ride
along the chain untouched, so ``G_j[a, i', (b, s)] = Z_j[a, (i', s), b]`` turns an STT/STR into the TT/TR
with ranks ``R/t`` over the same physical modes, same parameter count. Initialisation: TT-SVD / TR-SVD of
the weight with ranks ``R/t`` (the regrouped first mode is just the physical one read as ``(i', s)``),
then core j regrouped into its STP shape. The cores, parameter count and ranks are the STP ones; the
emitted chain, realizations and cost are TT's / TR's at ranks ``R/t`` (with the STP core j stored in
its TT/TR layout; the numbers of weights are equal).
"""

from __future__ import annotations

from abc import abstractmethod
from math import prod

import numpy as np
import onnx_ir as ir
import tensorly as tl

from ttcompile.layers import Layer
from ttcompile.passes.base import (
    FORMATS,
    ChainBuilder,
    Cost,
    Format,
    finish_cost,
    register,
    spatial,
    spatial_conv_attrs,
)
from ttcompile.passes.tr import ring_dims


def _t(modes: dict) -> int:
    return int(modes.get("t", 1))


class _SemiTensor(Format):
    """Factor ``t`` (``modes["t"]``) and nominal ranks that are multiples of t, shared by the formats."""

    def _divided(self, layer: Layer, modes: dict) -> list[bool]:
        """Which ranks t splits (the others are fixed boundary ranks)."""
        return [True] * len(self.max_ranks(layer, modes))

    def check_t(self, layer: Layer, modes: dict) -> None:
        """Raise ValueError when t does not divide the modes it splits."""
        if _t(modes) < 1:
            raise ValueError(f"{self.name} factor t={_t(modes)} of {layer.name} must be a positive integer")

    def uniform_ranks(self, layer: Layer, modes: dict, rank: int) -> list[int]:
        """Every rank ``rank`` clipped to its cap and rounded down to a multiple of t (t at least)."""
        t, caps = _t(modes), self.max_ranks(layer, modes)
        return [max(t, min(rank, c) // t * t) if d else c for c, d in zip(caps, self._divided(layer, modes))]

    def snap_ranks(self, layer: Layer, modes: dict, ranks: list[int]) -> list[int]:
        """Nearest valid nominal ranks (multiples of t within the caps), e.g. for ranks scaled from the caps."""
        t, caps, divided = _t(modes), self.max_ranks(layer, modes), self._divided(layer, modes)
        return [min(c, max(t, (r + t // 2) // t * t)) if d else c for r, c, d in zip(ranks, caps, divided)]

    def validate_ranks(self, layer: Layer, modes: dict, ranks: list[int]) -> None:
        super().validate_ranks(layer, modes, ranks)
        t = _t(modes)
        for i, (r, d) in enumerate(zip(ranks, self._divided(layer, modes))):
            if d and r % t:
                raise ValueError(
                    f"{self.name} rank {i} of {layer.name} is {r}: nominal STP ranks must be multiples of t={t} "
                    "(see uniform_ranks / snap_ranks)"
                )


# ---- semi-tensor Tucker-2 ---------------------------------------------------------------------


def _stp_mode(x, axis: int, mat, t: int):
    """``x ×_axis (mat ⊗ I_t)`` for ``mat (P, Q)``: that axis goes from ``Q t`` to ``P t`` (tensorly ops)."""
    shape = tuple(int(d) for d in x.shape)
    p, q = int(mat.shape[0]), int(mat.shape[1])
    y = tl.reshape(x, (prod(shape[:axis]), q, -1))  # (lead, Q, t * rest): s is fast inside the axis
    y = tl.transpose(tl.tensordot(mat, y, axes=([1], [1])), (1, 0, 2))
    return tl.reshape(y, (*shape[:axis], p * t, *shape[axis + 1 :]))


def _stp_basis(x: np.ndarray, axis: int, rank: int, t: int) -> np.ndarray:
    """``(I/t, rank/t)``: leading left singular vectors of ``x`` unfolded as ``(a, (s, rest))``."""
    xm = np.moveaxis(x, axis, 0)
    u, _, _ = np.linalg.svd(xm.reshape(xm.shape[0] // t, -1), full_matrices=False)
    return u[:, : rank // t]


def _first(sizes: tuple[int, ...] | None) -> int | None:
    return int(sizes[0]) if sizes else None


def _emit_factor(b: ChainBuilder, h: ir.Value, mat: np.ndarray, t: int, nd: int | None,
                 height: int | None = None) -> ir.Value:
    """Features ``Q t -> P t`` by ``(mat ⊗ I_t)``, ``mat (P, Q)``: FC rows (``nd`` None) or conv channels.

    ``height``: the first spatial size of ``h`` when known; the reshapes then infer the batch (``-1``)
    instead of that axis, so an empty batch works too (``-1`` cannot be inferred from 0 elements)."""
    p, q = mat.shape
    if nd is None:
        if t == 1:
            return b.matmul(b.reshape(h, [-1, q]), b.weight(mat.T))
        return b.matmul(b.weight(mat), b.reshape(h, [-1, q, t]))  # (rows, P, t)
    if t == 1:
        return b.conv1x1(h, mat, nd)
    if height is None:
        h = b.conv1x1(b.reshape(h, [0, q, -1] + [0] * (nd - 1)), mat, nd)  # s folded into the first spatial axis
        return b.reshape(h, [0, p * t, -1] + [0] * (nd - 1))
    h = b.conv1x1(b.reshape(h, [-1, q, t * height] + [0] * (nd - 1)), mat, nd)
    return b.reshape(h, [-1, p * t, height] + [0] * (nd - 1))


@register
class STTuFormat(_SemiTensor):
    name = "sttu"

    def default_modes(self, layer: Layer) -> dict:
        return {"t": 2 if layer.out_features % 2 == 0 and layer.in_features % 2 == 0 else 1}

    def check_t(self, layer: Layer, modes: dict) -> None:
        super().check_t(layer, modes)
        t = _t(modes)
        if layer.out_features % t or layer.in_features % t:
            raise ValueError(
                f"sttu factor t={t} must divide out={layer.out_features} and in={layer.in_features} of {layer.name}"
            )

    def max_ranks(self, layer: Layer, modes: dict) -> list[int]:
        self.check_t(layer, modes)
        t, k = _t(modes), prod(layer.kernel)
        o, c = layer.out_features, layer.in_features
        return [t * min(o // t, t * c * k), t * min(c // t, t * o * k)]

    def options(self, layer: Layer, modes: dict) -> list[dict]:
        return [{}]  # one realization

    def cost(self, layer: Layer, modes: dict, ranks: list[int], options: dict | None = None) -> Cost:
        self.validate_ranks(layer, modes, ranks)
        t, k, (ro, ri) = _t(modes), prod(layer.kernel), ranks
        o, c = layer.out_features, layer.in_features
        params = ro * ri * k + (o * ro + c * ri) // (t * t)
        if layer.kind != "conv":
            return finish_cost(layer, params, layer.rows * (c * ri // t + ri * ro + ro * o // t), 6)
        hw_in, hw_out = spatial(layer)
        macs = hw_in * c * ri // t + hw_out * (ri * ro * k + ro * o // t)
        return finish_cost(layer, params, macs, 7 if t > 1 else 3)

    def decompose(self, weight: np.ndarray, layer: Layer, modes: dict, ranks: list[int]) -> list[np.ndarray]:
        self.validate_ranks(layer, modes, ranks)
        t, (ro, ri) = _t(modes), ranks
        w = np.asarray(weight, dtype=np.float64).reshape(layer.out_features, layer.in_features, -1)
        u_out, u_in = _stp_basis(w, 0, ro, t), _stp_basis(w, 1, ri, t)
        g = _stp_mode(_stp_mode(w, 0, u_out.T, t), 1, u_in.T, t)
        return [g.reshape(ro, ri, *layer.kernel), u_out, u_in]

    def reconstruct(self, cores: list[np.ndarray], layer: Layer, modes: dict) -> np.ndarray:
        g, u_out, u_in = cores
        t = _t(modes)
        g = tl.reshape(g, (int(g.shape[0]), int(g.shape[1]), -1))
        return tl.reshape(_stp_mode(_stp_mode(g, 0, u_out, t), 1, u_in, t), layer.dense_shape)

    def emit(self, b, x, cores, layer, modes, options):
        g, u_out, u_in = cores
        t, nd = _t(modes), len(layer.kernel) if layer.kind == "conv" else None
        h = _emit_factor(b, x, u_in.T, t, nd, _first(layer.in_spatial))
        if nd is None:
            h = b.matmul(b.reshape(h, [-1, g.shape[1]]), b.weight(g.T))
        else:
            h = b.op("Conv", [h, b.weight(g, "core")], **spatial_conv_attrs(layer))
        return _emit_factor(b, h, u_out, t, nd, _first(layer.out_spatial))


# ---- semi-tensor train / ring, lowered to TT / TR at ranks R/t -------------------------------------


def _to_stp(core: np.ndarray, t: int) -> np.ndarray:
    """TT/TR core ``(l, *phys, r)`` -> STP core ``(l, I/t, r t)``: ``G[a, i', (b, s)] = Z[a, (i', s), b]``."""
    l, r = core.shape[0], core.shape[-1]
    return core.reshape(l, -1, t, r).transpose(0, 1, 3, 2).reshape(l, -1, r * t)


def _from_stp(core, t: int, phys: tuple[int, ...]):
    """Inverse of ``_to_stp`` (tensorly ops): STP ``(l, I/t, R)`` -> ``(l, *phys, R/t)``."""
    l, i, r = (int(d) for d in core.shape)
    g = tl.transpose(tl.reshape(core, (l, i, r // t, t)), (0, 1, 3, 2))
    return tl.reshape(g, (l, *phys, r // t))


class _Lowered(_SemiTensor):
    """STT/STR: STP cores and nominal ranks over the TT/TR format ``base_name`` at ranks R/t."""

    base_name = ""

    @property
    def base(self) -> Format:
        return FORMATS[self.base_name]

    @abstractmethod
    def _dims(self, layer: Layer, modes: dict) -> list[int]:
        """Physical mode sizes of the base chain, in core order."""

    @abstractmethod
    def _core(self, layer: Layer, modes: dict) -> int:
        """Index of the core carrying the t-index (ValueError when t fits none)."""

    def _phys(self, layer: Layer, modes: dict) -> tuple[int, ...]:
        """Mode axes of that core in the base layout."""
        return (self._dims(layer, modes)[self._core(layer, modes)],)

    @staticmethod
    def _base_modes(modes: dict) -> dict:
        return {k: v for k, v in modes.items() if k != "t"}

    def check_t(self, layer: Layer, modes: dict) -> None:
        super().check_t(layer, modes)
        self._core(layer, modes)

    def max_ranks(self, layer: Layer, modes: dict) -> list[int]:
        caps = self.base.max_ranks(layer, self._base_modes(modes))
        self.check_t(layer, modes)
        return [c * _t(modes) if d else c for c, d in zip(caps, self._divided_caps(caps))]

    def _divided_caps(self, caps: list[int]) -> list[bool]:
        return [True] * len(caps)

    def _divided(self, layer: Layer, modes: dict) -> list[bool]:
        return self._divided_caps(self.base.max_ranks(layer, self._base_modes(modes)))

    def _base_ranks(self, layer: Layer, modes: dict, ranks: list[int]) -> list[int]:
        self.validate_ranks(layer, modes, ranks)
        return [r // _t(modes) if d else r for r, d in zip(ranks, self._divided(layer, modes))]

    def _base_cores(self, cores: list, layer: Layer, modes: dict) -> list:
        j = self._core(layer, modes)
        return [*cores[:j], _from_stp(cores[j], _t(modes), self._phys(layer, modes)), *cores[j + 1 :]]

    def options(self, layer: Layer, modes: dict) -> list[dict]:
        return self.base.options(layer, self._base_modes(modes))

    def realize(self, layer: Layer, modes: dict, ranks: list[int]) -> dict:
        return self.base.realize(layer, self._base_modes(modes), self._base_ranks(layer, modes, ranks))

    def cost(self, layer: Layer, modes: dict, ranks: list[int], options: dict | None = None) -> Cost:
        return self.base.cost(layer, self._base_modes(modes), self._base_ranks(layer, modes, ranks), options)

    def decompose(self, weight: np.ndarray, layer: Layer, modes: dict, ranks: list[int]) -> list[np.ndarray]:
        cores = self.base.decompose(weight, layer, self._base_modes(modes), self._base_ranks(layer, modes, ranks))
        j = self._core(layer, modes)
        return [*cores[:j], _to_stp(cores[j], _t(modes)), *cores[j + 1 :]]

    def reconstruct(self, cores: list[np.ndarray], layer: Layer, modes: dict) -> np.ndarray:
        return self.base.reconstruct(self._base_cores(cores, layer, modes), layer, self._base_modes(modes))

    def emit(self, b, x, cores, layer, modes, options):
        return self.base.emit(b, x, self._base_cores(cores, layer, modes), layer, self._base_modes(modes), options)


@register
class STTFormat(_Lowered):
    name = "stt"
    base_name = "tt"

    def default_modes(self, layer: Layer) -> dict:
        modes = self.base.default_modes(layer)
        return {**modes, "t": 2 if self._dims(layer, modes)[0] % 2 == 0 else 1}

    def _dims(self, layer: Layer, modes: dict) -> list[int]:
        return self.base.tt_dims(layer, self._base_modes(modes))

    def _core(self, layer: Layer, modes: dict) -> int:
        first, t = self._dims(layer, modes)[0], _t(modes)
        if first % t:
            raise ValueError(f"stt factor t={t} must divide the first TT mode ({first}) of {layer.name}")
        return 0

    def _phys(self, layer: Layer, modes: dict) -> tuple[int, ...]:
        if layer.kind == "conv":
            return super()._phys(layer, modes)
        return modes["out"][0], modes["in"][0]

    def _divided_caps(self, caps: list[int]) -> list[bool]:
        return [0 < k < len(caps) - 1 for k in range(len(caps))]  # TT boundary ranks stay 1


@register
class STRFormat(_Lowered):
    name = "str"
    base_name = "tr"

    def default_modes(self, layer: Layer) -> dict:
        modes = self.base.default_modes(layer)
        return {**modes, "t": 2 if any(n % 2 == 0 for n in self._dims(layer, modes)) else 1}

    def _dims(self, layer: Layer, modes: dict) -> list[int]:
        return ring_dims(layer, modes)

    def _core(self, layer: Layer, modes: dict) -> int:
        dims, t = self._dims(layer, modes), _t(modes)
        for j, n in enumerate(dims):
            if n % t == 0:
                return j
        raise ValueError(f"str factor t={t} divides no ring mode {dims} of {layer.name}")
