"""Second moments of every compressible layer's input on calibration data, accumulated batch by batch.

For a linear layer ``y = W x + b`` the rows ``x`` are: Gemm/MatMul the input rows (``in`` features, MatMul's
leading dims flattened); Conv the im2col patch vectors of length ``C * prod(k)`` (row-major over ``(C, *k)``,
the canonical weight's order) taken with the layer's stride, pads (explicit or ``auto_pad``) and dilations,
a 1-D conv as height 1. Every row is augmented with a constant 1 (last entry), so that a bias and the input
mean live in the same matrices: ``S = E[a a^T]`` with ``a = [x; 1]`` of length ``n + 1``.

Bounded cost: a conv contributes at most ``row_cap(n)`` patch rows over the whole calibration set (a fixed,
seeded subset of the output positions, the same for every sample, so the batch-by-batch sum equals the
one-shot value); a layer with ``n > DIAGONAL_ABOVE`` keeps only the diagonal of its moments.

``Moments`` also holds the cross moments of two inputs (``a_c`` of the compressed model and ``a_o`` of the
original, same samples): ``cc = E[a_c a_c^T]``, ``co = E[a_c a_o^T]``, ``oo = E[a_o a_o^T]``.
"""

from __future__ import annotations

from dataclasses import dataclass
from math import ceil, prod

import numpy as np
import onnx
import onnx_ir as ir
from tqdm import tqdm

from ttcompile.analysis.features import BatchRunner, ModelInput
from ttcompile.graph import to_proto
from ttcompile.layers import Layer, find_node

DIAGONAL_ABOVE = 8192  # input dims above this keep a diagonal second moment (a dense one would be > 512 MiB)
ROW_FLOPS = 2e9  # a conv's rows are capped at ROW_FLOPS / n^2 (cost of one moment update) ...
MIN_ROWS = 20000  # ... but never below this many
POSITION_SEED = 0


def input_value(model: ir.Model, layer: Layer) -> str:
    """Name of the layer's data input (rewrites keep it, so it names the same tensor in a compressed model)."""
    return find_node(model, layer.name).inputs[0].name


def input_dim(layer: Layer) -> int:
    """``n``: features of one row (``C * prod(k)`` for a conv)."""
    return layer.in_features * prod(layer.kernel)


def row_cap(n: int) -> int:
    return max(MIN_ROWS, int(ROW_FLOPS / max(n, 1) ** 2))


def _conv_pads(layer: Layer, spatial: tuple[int, ...]) -> list[int]:
    """Explicit ``[begin..., end...]`` pads, auto_pad resolved as ONNX does."""
    a, nd = layer.attrs, len(layer.kernel)
    mode = a["auto_pad"]
    if mode in ("NOTSET", ""):
        return list(a["pads"])
    if mode == "VALID":
        return [0] * 2 * nd
    begin, end = [], []
    for size, k, s, d in zip(spatial, layer.kernel, a["strides"], a["dilations"]):
        total = max((ceil(size / s) - 1) * s + (k - 1) * d + 1 - size, 0)
        small, big = total // 2, total - total // 2
        begin.append(big if mode == "SAME_LOWER" else small)
        end.append(small if mode == "SAME_LOWER" else big)
    return begin + end


def _windows(x: np.ndarray, layer: Layer) -> np.ndarray:
    """Conv input ``(N, C, *S)`` -> strided view ``(N, C, H', W', kh, kw)`` of its patches (a 1-D conv as H' = 1)."""
    nd = len(layer.kernel)
    if nd == 1:
        x = x[:, :, None, :]
    kernel = (1, *layer.kernel) if nd == 1 else tuple(layer.kernel)
    a = layer.attrs
    strides = (1, *a["strides"]) if nd == 1 else tuple(a["strides"])
    dil = (1, *a["dilations"]) if nd == 1 else tuple(a["dilations"])
    pads = _conv_pads(layer, x.shape[3:] if nd == 1 else x.shape[2:])
    pads = [0, *pads[:1], 0, *pads[1:]] if nd == 1 else pads
    x = np.pad(x, [(0, 0), (0, 0), (pads[0], pads[2]), (pads[1], pads[3])])
    win = np.lib.stride_tricks.sliding_window_view(x, ((kernel[0] - 1) * dil[0] + 1, (kernel[1] - 1) * dil[1] + 1),
                                                   axis=(2, 3))
    return win[:, :, ::strides[0], ::strides[1], ::dil[0], ::dil[1]]


def patches(x: np.ndarray, layer: Layer, keep: np.ndarray | None = None) -> np.ndarray:
    """Conv input ``(N, C, *S)`` -> patch rows ``(N, L, C * prod(k))`` at the output positions ``keep``
    (flat row-major indices; None: all L)."""
    win = _windows(x, layer)
    n, c, h, w, kh, kw = win.shape
    if keep is None:
        return win.transpose(0, 2, 3, 1, 4, 5).reshape(n, h * w, c * kh * kw)
    sel = win[:, :, keep // w, keep % w]  # (N, C, P, kh, kw), only the kept positions copied
    return sel.transpose(0, 2, 1, 3, 4).reshape(n, len(keep), c * kh * kw)


def positions(layer: Layer, n_positions: int, n_samples: int) -> np.ndarray | None:
    """The output positions used per sample (None: all), at most ``row_cap`` rows over ``n_samples``."""
    keep = max(1, row_cap(input_dim(layer)) // max(n_samples, 1))
    if keep >= n_positions:
        return None
    return np.sort(np.random.default_rng(POSITION_SEED).choice(n_positions, keep, replace=False))


def layer_rows(x: np.ndarray, layer: Layer, n_samples: int) -> np.ndarray:
    """Rows ``(R, n + 1)`` (float32 as ``x``, constant-1 last column) of the layer's input batch ``x``."""
    if layer.kind == "conv":
        h, w = _windows(x[:1], layer).shape[2:4]
        p = patches(x, layer, positions(layer, h * w, n_samples))
        rows = p.reshape(-1, p.shape[-1])
    elif layer.kind == "gemm" and layer.attrs.get("transA"):
        rows = x.T
    else:
        rows = x.reshape(-1, layer.in_features)
    return np.hstack([rows, np.ones((len(rows), 1), dtype=rows.dtype)])


@dataclass
class Moments:
    """Sums over rows of ``a_c a_c^T``, ``a_c a_o^T``, ``a_o a_o^T`` ((n+1, n+1), or (n+1,) diagonals)."""

    cc: np.ndarray
    co: np.ndarray
    oo: np.ndarray
    rows: int = 0
    cross: bool = False  # a_o was given (else co and oo are not accumulated: they equal cc)

    @classmethod
    def zeros(cls, n: int) -> Moments:
        shape = (n + 1,) if n > DIAGONAL_ABOVE else (n + 1, n + 1)
        return cls(np.zeros(shape), np.zeros(shape), np.zeros(shape))

    @property
    def diagonal(self) -> bool:
        return self.cc.ndim == 1

    def update(self, a_c: np.ndarray, a_o: np.ndarray | None = None, oo: bool = True) -> None:
        """Add the rows ``a_c`` (and the matching rows ``a_o`` of the original; None: the same). The products
        run in the rows' dtype (float32 GEMMs for activations), the sums are float64."""
        self.cc += np.einsum("ri,ri->i", a_c, a_c) if self.diagonal else a_c.T @ a_c
        if a_o is not None:
            self.cross = True
            self.co += np.einsum("ri,ri->i", a_c, a_o) if self.diagonal else a_c.T @ a_o
            if oo:  # skipped when the caller has E[a_o a_o^T] from a pass of the original already
                self.oo += np.einsum("ri,ri->i", a_o, a_o) if self.diagonal else a_o.T @ a_o
        self.rows += len(a_c)

    def mean(self) -> Moments:
        """Expectations: the sums divided by the row count (``co``/``oo`` equal ``cc`` when never given)."""
        d = max(self.rows, 1)
        cc = self.cc / d
        if not self.cross:
            return Moments(cc, cc, cc, self.rows)
        return Moments(cc, self.co / d, self.oo / d, self.rows, True)


def restrict_outputs(model: ir.Model, values: list[str]) -> onnx.ModelProto:
    """A copy of ``model`` whose only outputs are ``values``: ORT prunes what they do not need."""
    proto = to_proto(model)
    del proto.graph.output[:]
    for name in dict.fromkeys(values):
        proto.graph.output.add(name=name)
    return proto


def accumulate(original: ir.Model, layers: list[Layer], x: np.ndarray, inp: ModelInput,
               compressed: ir.Model | None = None, batch: int = 100, progress: bool = False,
               desc: str = "moments", known: dict[str, Moments] | None = None) -> dict[str, Moments]:
    """Mean moments of every layer's input on ``x``; with ``compressed``, also the cross moments
    (``a_c`` read in ``compressed``, ``a_o`` in ``original``, sample by sample). One ORT pass per model.
    ``known``: the original's moments on the same ``x`` (a plain ``accumulate``); their ``cc`` is ``oo``
    exactly (same rows), so it is taken from there instead of being summed again."""
    names = {layer.name: input_value(original, layer) for layer in layers}
    values = list(dict.fromkeys(names.values()))
    runners = [BatchRunner(restrict_outputs(m, values), inp, values, batch)
               for m in ([original] if compressed is None else [original, compressed])]
    sums = {layer.name: Moments.zeros(input_dim(layer)) for layer in layers}
    bar = tqdm(total=runners[0].n_batches(len(x)), desc=desc, unit="batch", disable=not progress, leave=False)
    index = np.arange(len(x))
    streams = [r.batches(x, index) for r in runners]
    for got in zip(*streams):
        for layer in layers:
            rows = [layer_rows(out[names[layer.name]], layer, len(x)) for _, out in got]
            sums[layer.name].update(rows[-1], rows[0] if compressed is not None else None, oo=known is None)
        bar.update(1)
    bar.close()
    means = {name: m.mean() for name, m in sums.items()}
    if known is not None and compressed is not None:
        for name, m in means.items():
            m.oo = known[name].cc
    return means
