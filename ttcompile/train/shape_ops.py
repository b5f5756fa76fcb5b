"""ONNX tensor-shape operators (Reshape, Transpose, Concat, Slice, Pad, Gather, ...) as torch functions;
importing this module registers them in ``ttcompile.train.ops.OPS``."""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from ttcompile.train.ops import Node, Tensor, _axis, _input_or_attr, _ints, _torch_pad, op


@op("Reshape")
def _reshape(node: Node, x: Tensor, shape: Tensor) -> Tensor:
    """0 copies the input dim at that position (unless allowzero), -1 is inferred."""
    dims = _ints(shape)
    if not node.attr("allowzero", 0):
        dims = [x.shape[i] if d == 0 else d for i, d in enumerate(dims)]
    return x.reshape(dims)


@op("Flatten")
def _flatten(node: Node, x: Tensor) -> Tensor:
    axis = _axis(node.attr("axis", 1), x.dim())
    return x.reshape(math.prod(x.shape[:axis]), math.prod(x.shape[axis:]))


@op("Transpose")
def _transpose(node: Node, x: Tensor) -> Tensor:
    return x.permute(node.attr("perm", list(reversed(range(x.dim())))))


@op("Concat")
def _concat(node: Node, *xs: Tensor) -> Tensor:
    return torch.cat(xs, dim=node.attr("axis"))


@op("Split", outputs=None)
def _split(node: Node, x: Tensor, split: Tensor | None = None) -> tuple[Tensor, ...]:
    """Without ``split``: ``num_outputs`` (or the output count) chunks of ceil(dim / n), the last smaller."""
    axis = _axis(node.attr("axis", 0), x.dim())
    sizes = _input_or_attr(node, split, "split", 13)
    if sizes is None:
        parts = node.attr("num_outputs", node.n_outputs)
        sizes = math.ceil(x.shape[axis] / parts)
    return torch.split(x, sizes, dim=axis)


@op("Slice")
def _slice(node: Node, x: Tensor, starts: Tensor | None = None, ends: Tensor | None = None,
           axes: Tensor | None = None, steps: Tensor | None = None) -> Tensor:
    """Python slice semantics match ONNX clamping; negative steps go through index_select."""
    if node.opset < 10:
        starts, ends, axes = node.attr("starts"), node.attr("ends"), node.attr("axes")
    else:
        starts, ends, axes, steps = _ints(starts), _ints(ends), _ints(axes), _ints(steps)
    axes = axes if axes is not None else list(range(len(starts)))
    steps = steps if steps is not None else [1] * len(starts)
    for axis, start, end, step in zip(axes, starts, ends, steps, strict=True):
        axis = _axis(axis, x.dim())
        r = range(*slice(start, end, step).indices(x.shape[axis]))
        if step > 0:
            x = x[(slice(None),) * axis + (slice(r.start, r.stop, step),)]
        else:
            x = x.index_select(axis, torch.arange(r.start, r.stop, step, device=x.device))
    return x


@op("Squeeze")
def _squeeze(node: Node, x: Tensor, axes: Tensor | None = None) -> Tensor:
    axes = _input_or_attr(node, axes, "axes", 13)
    if axes is None:
        return x.squeeze()
    return x.squeeze(tuple(_axis(a, x.dim()) for a in axes))


@op("Unsqueeze")
def _unsqueeze(node: Node, x: Tensor, axes: Tensor | None = None) -> Tensor:
    """Axes index the output, so insert them in ascending order."""
    axes = _input_or_attr(node, axes, "axes", 13)
    rank = x.dim() + len(axes)
    for a in sorted(_axis(a, rank) for a in axes):
        x = x.unsqueeze(a)
    return x


_PAD_MODES = {"constant": "constant", "reflect": "reflect", "edge": "replicate", "wrap": "circular"}


@op("Pad")
def _pad(node: Node, x: Tensor, pads: Tensor | None = None, value: Tensor | None = None,
         axes: Tensor | None = None) -> Tensor:
    """pads = [b_1..b_k, e_1..e_k] over ``axes`` (default all). Non-constant modes reshape x to
    (rest, *padded trailing dims) since torch pads at most the last 3 dims there."""
    mode = node.attr("mode", "constant")
    if mode not in _PAD_MODES:
        raise node.fail(f"unknown mode {mode!r}")
    if node.opset < 11:
        pads, fill = node.attr("pads"), node.attr("value", 0.0)
    else:
        pads, fill = _ints(pads), 0.0 if value is None else value.item()
    rank = x.dim()
    axes = [_axis(a, rank) for a in _ints(axes)] if axes is not None else list(range(rank))
    k = len(axes)
    begin, end = [0] * rank, [0] * rank
    for i, a in enumerate(axes):
        begin[a], end[a] = pads[i], pads[k + i]
    padded = [a for a in range(rank) if begin[a] or end[a]]
    if not padded:
        return x
    first = padded[0]
    torch_pads = _torch_pad(begin[first:] + end[first:])
    if mode == "constant":
        return F.pad(x, torch_pads, value=fill)
    trailing = rank - first
    if trailing > 3:
        raise node.fail(f"mode {mode!r} can pad at most the last 3 dims")
    y = F.pad(x.reshape(-1, *x.shape[first:]), torch_pads, mode=_PAD_MODES[mode])
    return y.reshape((*x.shape[:first], *y.shape[1:]))


@op("Expand")
def _expand(node: Node, x: Tensor, shape: Tensor) -> Tensor:
    return x.expand(torch.broadcast_shapes(x.shape, tuple(_ints(shape))))


@op("Shape")
def _shape(node: Node, x: Tensor) -> Tensor:
    dims = list(x.shape)[slice(node.attr("start", 0), node.attr("end"))]
    return torch.tensor(dims, dtype=torch.int64, device=x.device)


@op("Gather")
def _gather(node: Node, x: Tensor, idx: Tensor) -> Tensor:
    """out shape = x.shape[:axis] + idx.shape + x.shape[axis+1:]; negative indices count from the end."""
    axis = _axis(node.attr("axis", 0), x.dim())
    idx = torch.where(idx < 0, idx + x.shape[axis], idx)
    out = x.index_select(axis, idx.reshape(-1))
    return out.reshape((*x.shape[:axis], *idx.shape, *x.shape[axis + 1:]))


@op("ConstantOfShape")
def _constant_of_shape(node: Node, shape: Tensor) -> Tensor:
    value = node.attr("value", np.zeros(1, np.float32))
    return torch.full(_ints(shape), value.reshape(-1)[0].item(),
                      dtype=torch.from_numpy(value).dtype, device=shape.device)


@op("Dropout", outputs=2)
def _dropout(node: Node, x: Tensor, ratio: Tensor | None = None, training: Tensor | None = None):
    if node.n_outputs == 1:
        return x
    return x, torch.ones_like(x, dtype=torch.bool)
