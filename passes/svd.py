"""Rank-r matrix factorisation (truncated SVD) of Gemm/MatMul weights and Conv kernels.

The canonical weight is unfolded as a matrix ``W (out, in*K)``: ``(out, in)`` for fully connected
layers, ``(O, C*kh*kw)`` (row-major over ``(C, *k)``) for a conv. With ``W = P S Q^T`` truncated to
rank r, the cores are ``U = P_r sqrt(S_r)`` of shape ``(out, r)`` and ``V = sqrt(S_r) Q_r^T``
reshaped to ``(r, in, *k)``, so ``W ~= U @ V.reshape(r, -1)`` with both factors equally scaled.
``ranks = [r]``, capped at ``min(out, in*K)`` (exact there).

Rewrite (standard ONNX ops only):

* FC: ``MatMul(x, V^T) -> MatMul(., U^T)``; MatMul broadcasts over any leading dims of x, so no
  Reshape is needed (a 2-D GEMM per step in ONNX Runtime).
* Conv: ``Conv(x, V)`` with the original kernel/stride/pads/dilations/auto_pad (C -> r), then a
  1x1 ``Conv(., U)`` (r -> O).
* The bias is added by the last node (see ``ttcompile.rewrite.compress``).
"""

from __future__ import annotations

from math import prod

import numpy as np
import onnx_ir as ir

from ttcompile.layers import Layer
from ttcompile.passes.base import ChainBuilder, Cost, Format, finish_cost, register, spatial, spatial_conv_attrs


def truncated_svd(matrix: np.ndarray, rank: int) -> tuple[np.ndarray, np.ndarray]:
    """``(U (m, r), V (r, n))`` with ``U @ V`` the best rank-r approximation, sqrt(S) on both sides."""
    p, s, qt = np.linalg.svd(np.asarray(matrix, dtype=np.float64), full_matrices=False)
    root = np.sqrt(s[:rank])
    return p[:, :rank] * root, root[:, None] * qt[:rank]


def leading_vectors(matrix: np.ndarray, rank: int) -> np.ndarray:
    """Orthonormal ``(m, rank)`` basis of the dominant column space of ``matrix (m, n)``, via ``eigh``
    of the ``m x m`` Gram matrix (much faster than an SVD when ``n >> m``)."""
    evals, evecs = np.linalg.eigh(matrix @ matrix.T)
    return evecs[:, np.argsort(evals)[::-1][:rank]]


def two_factor_cost(layer: Layer, rank: int) -> Cost:
    """Cost of ``in*K -> r -> out``: both steps at the output positions (stride applies in step 1)."""
    params = rank * (layer.in_features * prod(layer.kernel) + layer.out_features)
    return finish_cost(layer, params, spatial(layer)[1] * params, 2)


def emit_two_factor(b: ChainBuilder, x: ir.Value, u: np.ndarray, v: np.ndarray, layer: Layer) -> ir.Value:
    """``x -> V -> U`` as two MatMuls (FC) or a spatial Conv then a 1x1 Conv (conv)."""
    if layer.kind != "conv":
        return b.matmul(b.matmul(x, b.weight(v.T)), b.weight(u.T))
    h = b.op("Conv", [x, b.weight(v, "spatial")], **spatial_conv_attrs(layer))
    return b.conv1x1(h, u, len(layer.kernel))


@register
class SVDFormat(Format):
    """Two-factor low rank ``W ~= U V``; the fastest form per parameter (performance.md, finding 5)."""

    name = "svd"

    def default_modes(self, layer: Layer) -> dict:
        return {}

    def max_ranks(self, layer: Layer, modes: dict) -> list[int]:
        return [min(layer.out_features, layer.in_features * prod(layer.kernel))]

    def cost(self, layer: Layer, modes: dict, ranks: list[int], options: dict | None = None) -> Cost:
        return two_factor_cost(layer, ranks[0])

    def decompose(self, weight: np.ndarray, layer: Layer, modes: dict, ranks: list[int]) -> list[np.ndarray]:
        self.validate_ranks(layer, modes, ranks)
        u, v = truncated_svd(weight.reshape(layer.out_features, -1), ranks[0])
        return [u, v.reshape(ranks[0], layer.in_features, *layer.kernel)]

    def reconstruct(self, cores: list[np.ndarray], layer: Layer, modes: dict) -> np.ndarray:
        u, v = cores
        return (u @ v.reshape(v.shape[0], -1)).reshape(layer.dense_shape)

    def emit(self, b, x, cores, layer, modes, options):
        return emit_two_factor(b, x, *cores, layer)
