"""What the LWIQ proxies classify: one class per calibration item, from the data or from the model.

Kinds (``Targets.kind``), chosen from the data and the model's first output ``o``:

* ``labels``   the data's labels ``y`` (N,); items are samples.
* ``top1``     no labels, ``o`` is ``(N, K)``: the model's top-1 class; items are samples.
* ``sequence`` no labels, ``o`` is ``(N, T, K)`` or ``(T, N, K)`` (CTC recognisers, taggers): item
  ``(n, t)`` has class ``argmax_k o[n, t]``; a layer's features are embedded per position
  (``embed_positions``), so every sample gives T items.
* ``pseudo``   any other output (detector maps, embeddings, regressors): k-means with K = ``pseudo_classes``
  clusters (seeded k-means++ then Lloyd) on the embedded output (``features.embed``); items are samples.

The batch axis of a rank-3 output is the axis whose size follows the batch size (found by feeding two
batch sizes), ``(N, T, K)`` when that cannot be told (a fixed batch of 1).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ttcompile.analysis.features import BatchRunner, Calibration, embed, model_input, pool_matrix
from ttcompile.errors import OptionError, UserError, opt

KMEANS_ITERATIONS = 50


@dataclass
class Targets:
    """Item labels: ``labels`` (N,) or, for ``sequence``, (N, T); ``n_classes`` K; how they were made."""

    kind: str
    labels: np.ndarray
    n_classes: int
    note: str
    time_axis: int | None = None  # sequence: axis of T in the model output (1 for (N, T, K), 0 for (T, N, K))

    @property
    def positions(self) -> int:
        """Items per sample (T for ``sequence``, else 1)."""
        return self.labels.shape[1] if self.labels.ndim == 2 else 1

    def sample_labels(self) -> np.ndarray | None:
        """Labels to stratify the imprint/held-out split by (None for ``sequence``)."""
        return None if self.kind == "sequence" else self.labels

    def items(self, idx: np.ndarray) -> np.ndarray:
        """Item labels ``(len(idx) * T,)`` of samples ``idx``, sample-major."""
        return self.labels[idx].reshape(-1)

    def embed(self, a: np.ndarray, channels_first: bool) -> np.ndarray:
        """Item embeddings ``(B * T, D)`` of one activation batch ``a`` (sample-major)."""
        if self.kind != "sequence":
            return embed(a, channels_first)
        if a.ndim == 3 and not channels_first and self.time_axis == 0:
            a = np.moveaxis(a, 0, 1)  # (T', B, F) rows of a time-major model
        return embed_positions(a, channels_first, self.positions).reshape(-1, _width(a, channels_first))

    def to_json(self) -> dict:
        return {"kind": self.kind, "classes": self.n_classes, "note": self.note}


def _width(a: np.ndarray, channels_first: bool) -> int:
    return a.shape[1] if channels_first and a.ndim > 2 else a.shape[-1]


def _pool_axis(a: np.ndarray, axis: int, cells: int) -> np.ndarray:
    """Adaptive average pooling of ``a`` along ``axis`` to ``cells`` cells (as torch's AdaptiveAvgPool)."""
    return np.moveaxis(np.tensordot(a, pool_matrix(a.shape[axis], cells), axes=([axis], [1])), -1, axis)


def embed_positions(a: np.ndarray, channels_first: bool, positions: int) -> np.ndarray:
    """Per-position embeddings ``(B, T, D)`` of a batch ``a`` for a sequence model with T positions.

    Channels-first maps ``(B, C, *S)``: mean over every spatial axis but the last, which is pooled to T
    cells (the width of a text line becomes its time steps); D = C. Rank-3 rows ``(B, T', F)`` are pooled
    along T' to T; ``(B, F)`` features are repeated at every position.
    """
    a = np.asarray(a, dtype=np.float64)
    if a.ndim == 2:
        return np.repeat(a[:, None, :], positions, axis=1)
    if channels_first:
        m = a.reshape(a.shape[0], a.shape[1], -1, a.shape[-1]).mean(axis=2)  # (B, C, W)
        return np.moveaxis(_pool_axis(m, 2, positions), 1, 2)
    m = a.reshape(a.shape[0], -1, a.shape[-1])
    return _pool_axis(m, 1, positions)


def kmeans(points: np.ndarray, k: int, seed: int = 0, iterations: int = KMEANS_ITERATIONS) -> np.ndarray:
    """Cluster index ``(N,)`` of each row of ``points`` ``(N, D)``: k-means++ seeding, then Lloyd steps."""
    rng = np.random.default_rng(seed)
    x = np.asarray(points, dtype=np.float64)
    centers = [x[rng.integers(len(x))]]
    for _ in range(1, k):
        d2 = np.min([((x - c) ** 2).sum(axis=1) for c in centers], axis=0)
        total = d2.sum()
        centers.append(x[rng.choice(len(x), p=d2 / total)] if total > 0 else x[rng.integers(len(x))])
    c = np.array(centers)
    assign = np.zeros(len(x), dtype=np.int64)
    for _ in range(iterations):
        dist = (x ** 2).sum(1)[:, None] - 2 * x @ c.T + (c ** 2).sum(1)[None, :]
        new = np.argmin(dist, axis=1)
        if _ and np.array_equal(new, assign):
            break
        assign = new
        for j in range(k):
            if (assign == j).any():
                c[j] = x[assign == j].mean(axis=0)
    return assign


def _time_axis(runner: BatchRunner, x: np.ndarray, name: str) -> int:
    """1 for ``(N, T, K)`` outputs, 0 for ``(T, N, K)``: the axis that does not follow the batch size."""
    if runner.static or len(x) < 3:
        return 1
    sizes = [runner.session.run([name], {runner.input: x[:n]})[0].shape for n in (2, 3)]
    return 1 if sizes[0][0] != sizes[1][0] else 0


def make_targets(calib: Calibration, proto, *, batch: int = 256, pseudo_classes: int = 10, seed: int = 0,
                 progress=None) -> Targets:
    """Targets for ``calib`` on model ``proto`` (see the module docstring); one model pass without labels."""
    if calib.y is not None:
        return Targets("labels", calib.y, calib.n_classes, "given")
    name = proto.graph.output[0].name
    runner = BatchRunner(proto, model_input(proto), [name], batch)
    outputs = [out[name] for _, out in runner.batches(calib.x, np.arange(len(calib.x)), progress)]
    axis = _time_axis(runner, calib.x, name) if outputs[0].ndim == 3 else 1
    o = np.concatenate(outputs, axis=1 - axis if outputs[0].ndim == 3 else 0)
    if o.ndim == 3 and axis == 0:
        o = np.moveaxis(o, 0, 1)  # (T, N, K) -> (N, T, K)
    if o.ndim == 2 and o.shape[1] > 1:
        return Targets("top1", np.argmax(o, axis=1), o.shape[1], "model top-1 predictions (the data has no labels 'y')")
    if o.ndim == 3 and o.shape[2] > 1:
        seq = np.argmax(o, axis=2)
        layout = "(N, T, K)" if axis == 1 else "(T, N, K)"
        return Targets("sequence", seq, o.shape[2],
                       f"per-position top-1 of the {layout} output ({seq.shape[1]} positions, {o.shape[2]} classes)",
                       time_axis=axis)
    if pseudo_classes < 2:
        raise OptionError(f"{opt('pseudo_classes')} {pseudo_classes}: need at least 2")
    if len(o) < 2 * pseudo_classes:
        raise UserError(f"{calib.source}: {len(o)} samples are too few for {pseudo_classes} pseudo-classes "
                        f"(the output {tuple(o.shape[1:])} is no class score; give at least {2 * pseudo_classes})")
    emb = embed(o, channels_first=o.ndim > 2)
    labels = kmeans(emb, pseudo_classes, seed)
    return Targets("pseudo", labels, pseudo_classes,
                   f"k-means pseudo-classes (K={pseudo_classes}) of the model output {tuple(o.shape[1:])}")
