"""ONNX idioms used across the library: a graph's real inputs, declared dims, batched ONNX Runtime runs."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import numpy as np
import onnx


def graph_inputs(model: onnx.ModelProto | onnx.GraphProto) -> list[onnx.ValueInfoProto]:
    """The graph inputs that are not initializers (what a caller feeds)."""
    graph = model.graph if isinstance(model, onnx.ModelProto) else model
    inits = {t.name for t in graph.initializer}
    return [i for i in graph.input if i.name not in inits]


def declared_shape(value: onnx.ValueInfoProto) -> tuple[int | None, ...] | None:
    """A tensor value's declared dims, None per dynamic dim (symbolic, unset or <= 0); None without a shape."""
    tt = value.type.tensor_type
    if not tt.HasField("shape"):
        return None
    return tuple(d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else None for d in tt.shape.dim)


def run_batched(run: Callable[[dict[str, np.ndarray]], np.ndarray], feeds: dict[str, np.ndarray], batch: int,
                pad: bool = False) -> Iterator[np.ndarray]:
    """``run`` (one session run on a feed dict, returning one array) on consecutive ``batch``-sample slices
    of ``feeds`` (every array ``(N, ...)``), slice by slice; with ``pad`` every run gets ``batch`` samples
    (a fixed batch dim): the last slice is padded by repeating its last sample and its output cut back."""
    n = len(next(iter(feeds.values())))
    for start in range(0, n, batch):
        part = {k: np.asarray(v[start:start + batch]) for k, v in feeds.items()}
        got = len(next(iter(part.values())))
        if pad and got < batch:
            part = {k: np.concatenate([v, np.repeat(v[-1:], batch - got, axis=0)]) for k, v in part.items()}
        out = run(part)
        yield out[:got] if pad else out
