"""ONNX operators as torch functions, for :mod:`ttcompile.train.executor`.

Each operator is ``fn(node, *inputs) -> Tensor | tuple[Tensor, ...]``: ``node`` carries the parsed
attributes and the opset, ``inputs`` follow the ONNX input order with ``None`` for omitted optional
inputs. The graph runs in its inference form: BatchNormalization uses its stored statistics and
Dropout is the identity, also while training.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx
import torch
import torch.nn.functional as F
from onnx import numpy_helper

from ttcompile.errors import UserError

Tensor = torch.Tensor


@dataclass(frozen=True)
class Node:
    """One ONNX node: op type, name, attributes (strings decoded, tensors as numpy), opset, outputs."""

    op_type: str
    name: str
    attrs: dict[str, Any]
    opset: int
    n_outputs: int

    @classmethod
    def from_proto(cls, node: onnx.NodeProto, opset: int) -> Node:
        attrs = {}
        for a in node.attribute:
            value = onnx.helper.get_attribute_value(a)
            if isinstance(value, bytes):
                value = value.decode()
            elif isinstance(value, onnx.TensorProto):
                value = numpy_helper.to_array(value)
            attrs[a.name] = value
        return cls(node.op_type, node.name, attrs, opset, len(node.output))

    def attr(self, key: str, default: Any = None) -> Any:
        return self.attrs.get(key, default)

    def fail(self, why: str) -> UserError:
        return UserError(f"{self.op_type} node {self.name or '<unnamed>'!r}: {why}")


OpFn = Callable[..., "Tensor | tuple[Tensor, ...]"]
# op type -> (function, most outputs it produces; None: any number)
OPS: dict[str, tuple[OpFn, int | None]] = {}


def op(*names: str, outputs: int | None = 1) -> Callable[[OpFn], OpFn]:
    def register(fn: OpFn) -> OpFn:
        for name in names:
            OPS[name] = (fn, outputs)
        return fn

    return register


def torch_dtype(onnx_type: int) -> torch.dtype:
    """torch dtype of an ONNX TensorProto element type."""
    try:
        return torch.from_numpy(np.empty(0, onnx.helper.tensor_dtype_to_np_dtype(onnx_type))).dtype
    except (KeyError, TypeError) as exc:
        raise UserError(f"ONNX element type {onnx.TensorProto.DataType.Name(onnx_type)} "
                        "has no torch equivalent") from exc


def _ints(t: Tensor | None) -> list[int] | None:
    return None if t is None else [int(v) for v in t.reshape(-1).tolist()]


def _axis(axis: int, rank: int) -> int:
    return axis + rank if axis < 0 else axis


def _input_or_attr(node: Node, value: Tensor | None, key: str, since: int) -> list[int] | None:
    """Attributes that moved to inputs at opset ``since`` (axes, split, pads, ...)."""
    return _ints(value) if node.opset >= since else node.attr(key)


# --- elementwise -------------------------------------------------------------------------------------

_UNARY: dict[str, Callable[[Tensor], Tensor]] = {
    "Relu": F.relu, "Sigmoid": torch.sigmoid, "Tanh": torch.tanh, "Erf": torch.erf, "Sqrt": torch.sqrt,
    "Exp": torch.exp, "Log": torch.log, "Neg": torch.neg, "Abs": torch.abs, "Reciprocal": torch.reciprocal,
    "Floor": torch.floor, "Ceil": torch.ceil, "Not": torch.logical_not, "Identity": lambda x: x,
}
_BINARY: dict[str, Callable[[Tensor, Tensor], Tensor]] = {
    "Add": torch.add, "Sub": torch.sub, "Mul": torch.mul, "Pow": torch.pow, "MatMul": torch.matmul,
    "Equal": torch.eq, "Less": torch.lt, "Greater": torch.gt, "LessOrEqual": torch.le,
    "GreaterOrEqual": torch.ge, "And": torch.logical_and, "Or": torch.logical_or,
}
for _name, _fn in _UNARY.items():
    op(_name)(lambda node, x, _fn=_fn: _fn(x))
for _name, _fn in _BINARY.items():
    op(_name)(lambda node, a, b, _fn=_fn: _fn(a, b))


@op("Div")
def _div(node: Node, a: Tensor, b: Tensor) -> Tensor:
    """Integer Div truncates towards zero, like C."""
    if a.is_floating_point():
        return a / b
    return torch.div(a, b, rounding_mode="trunc")


@op("LeakyRelu")
def _leaky_relu(node: Node, x: Tensor) -> Tensor:
    return F.leaky_relu(x, node.attr("alpha", 0.01))


@op("Gelu")
def _gelu(node: Node, x: Tensor) -> Tensor:
    return F.gelu(x, approximate=node.attr("approximate", "none"))


@op("Clip")
def _clip(node: Node, x: Tensor, lo: Tensor | None = None, hi: Tensor | None = None) -> Tensor:
    if node.opset < 11:
        lo, hi = node.attr("min"), node.attr("max")
    if lo is None and hi is None:
        return x
    return torch.clamp(x, lo, hi)


@op("Where")
def _where(node: Node, cond: Tensor, a: Tensor, b: Tensor) -> Tensor:
    return torch.where(cond.bool(), a, b)


@op("Cast")
def _cast(node: Node, x: Tensor) -> Tensor:
    return x.to(torch_dtype(node.attr("to")))


@op("Softmax", "LogSoftmax")
def _softmax(node: Node, x: Tensor) -> Tensor:
    """Opset < 13 normalises over all dims from ``axis`` on (flattened); later opsets over one axis."""
    fn = F.softmax if node.op_type == "Softmax" else F.log_softmax
    if node.opset >= 13:
        return fn(x, dim=node.attr("axis", -1))
    axis = _axis(node.attr("axis", 1), x.dim())
    return fn(x.reshape(math.prod(x.shape[:axis]), -1), dim=1).reshape(x.shape)


# --- linear layers -----------------------------------------------------------------------------------

@op("Gemm")
def _gemm(node: Node, a: Tensor, b: Tensor, c: Tensor | None = None) -> Tensor:
    """Y = alpha * A' B' + beta * C, with A' = A^T when transA and B' = B^T when transB."""
    a = a.t() if node.attr("transA", 0) else a
    b = b.t() if node.attr("transB", 0) else b
    alpha, beta = node.attr("alpha", 1.0), node.attr("beta", 1.0)
    y = a @ b if alpha == 1.0 else alpha * (a @ b)
    if c is None:
        return y
    return y + (c if beta == 1.0 else beta * c)


def _spatial_pads(node: Node, size: Sequence[int], kernel: Sequence[int], strides: Sequence[int],
                  dilations: Sequence[int]) -> list[int]:
    """ONNX pads [b_1..b_n, e_1..e_n] for Conv/pooling, resolving auto_pad from the input ``size``."""
    auto = node.attr("auto_pad", "NOTSET")
    n = len(size)
    if auto == "NOTSET":
        return list(node.attr("pads", [0] * 2 * n))
    if auto == "VALID":
        return [0] * 2 * n
    if auto not in ("SAME_UPPER", "SAME_LOWER"):
        raise node.fail(f"unknown auto_pad {auto!r}")
    begin, end = [], []
    for i, s, k, d in zip(size, strides, kernel, dilations, strict=True):
        total = max((math.ceil(i / s) - 1) * s + (k - 1) * d + 1 - i, 0)
        small = total // 2
        begin.append(small if auto == "SAME_UPPER" else total - small)
        end.append(total - begin[-1])
    return begin + end


def _torch_pad(pads: Sequence[int]) -> list[int]:
    """ONNX [b_1..b_n, e_1..e_n] for the last n dims -> F.pad order (last dim first)."""
    n = len(pads) // 2
    return [p for i in reversed(range(n)) for p in (pads[i], pads[n + i])]


_CONV = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}
_CONV_T = {1: F.conv_transpose1d, 2: F.conv_transpose2d, 3: F.conv_transpose3d}


@op("Conv")
def _conv(node: Node, x: Tensor, w: Tensor, b: Tensor | None = None) -> Tensor:
    """x (N, C, *spatial), w (M, C/group, *kernel), b (M,)."""
    n = x.dim() - 2
    if n not in _CONV:
        raise node.fail(f"{n}-D convolution is not supported")
    strides, dil = node.attr("strides", [1] * n), node.attr("dilations", [1] * n)
    pads = _spatial_pads(node, x.shape[2:], w.shape[2:], strides, dil)
    if pads[:n] == pads[n:]:
        padding = pads[:n]
    else:
        x, padding = F.pad(x, _torch_pad(pads)), 0
    return _CONV[n](x, w, b, strides, padding, dil, node.attr("group", 1))


@op("ConvTranspose")
def _conv_transpose(node: Node, x: Tensor, w: Tensor, b: Tensor | None = None) -> Tensor:
    """x (N, C, *spatial), w (C, M/group, *kernel), b (M,). Runs the unpadded transpose, then crops
    ``pads`` / appends ``output_padding`` (negative / positive F.pad), then adds the bias."""
    n = x.dim() - 2
    if n not in _CONV_T:
        raise node.fail(f"{n}-D transposed convolution is not supported")
    strides, dil = node.attr("strides", [1] * n), node.attr("dilations", [1] * n)
    out_pad = node.attr("output_padding", [0] * n)
    full = [s * (i - 1) + (k - 1) * d + 1 + op_
            for i, s, k, d, op_ in zip(x.shape[2:], strides, w.shape[2:], dil, out_pad, strict=True)]
    target = node.attr("output_shape")
    auto = node.attr("auto_pad", "NOTSET")
    if target is None and auto in ("SAME_UPPER", "SAME_LOWER"):
        target = [i * s for i, s in zip(x.shape[2:], strides, strict=True)]
    if target is not None:
        totals = [f - t for f, t in zip(full, target[-n:], strict=True)]
        begin = [t // 2 if auto == "SAME_UPPER" else t - t // 2 for t in totals]
        pads = begin + [t - b_ for t, b_ in zip(totals, begin, strict=True)]
    elif auto == "VALID":
        pads = [0] * 2 * n
    else:
        pads = list(node.attr("pads", [0] * 2 * n))
    y = _CONV_T[n](x, w, None, strides, 0, 0, node.attr("group", 1), dil)
    crop = [-p for p in pads[:n]] + [o - p for o, p in zip(out_pad, pads[n:], strict=True)]
    if any(crop):
        y = F.pad(y, _torch_pad(crop))
    return y if b is None else y + b.reshape(-1, *[1] * n)


# --- pooling and normalisation -----------------------------------------------------------------------

def _pool_geometry(node: Node, x: Tensor) -> tuple[list[int], list[int], list[int], list[int]]:
    kernel = list(node.attr("kernel_shape"))
    n = len(kernel)
    strides, dil = node.attr("strides", [1] * n), node.attr("dilations", [1] * n)
    return kernel, strides, dil, _spatial_pads(node, x.shape[2:], kernel, strides, dil)


@op("MaxPool")
def _max_pool(node: Node, x: Tensor) -> Tensor:
    if node.n_outputs > 1:
        raise node.fail("the Indices output is not supported")
    kernel, strides, dil, pads = _pool_geometry(node, x)
    if any(pads):
        x = F.pad(x, _torch_pad(pads), value=-math.inf)
    fn = {1: F.max_pool1d, 2: F.max_pool2d, 3: F.max_pool3d}[len(kernel)]
    return fn(x, kernel, strides, 0, dil, ceil_mode=bool(node.attr("ceil_mode", 0)))


@op("AveragePool")
def _avg_pool(node: Node, x: Tensor) -> Tensor:
    """Sums over windows of the zero-padded input divided by the count of cells each window covers:
    padding cells count when count_include_pad, cells past the padded edge (ceil_mode) never do."""
    kernel, strides, dil, pads = _pool_geometry(node, x)
    if any(d != 1 for d in dil):
        raise node.fail("dilated average pooling is not supported")
    ceil = bool(node.attr("ceil_mode", 0))
    if not any(pads) and not ceil:
        return {1: F.avg_pool1d, 2: F.avg_pool2d, 3: F.avg_pool3d}[len(kernel)](x, kernel, strides)
    one_d = len(kernel) == 1
    if one_d:  # avg_pool1d has no divisor_override: pool a (1, L) image instead
        x, kernel, strides, pads = x.unsqueeze(2), [1, *kernel], [1, *strides], [0, pads[0], 0, pads[1]]
    fn = {2: F.avg_pool2d, 3: F.avg_pool3d}[len(kernel)]
    padding = _torch_pad(pads)
    ones = torch.ones((1, 1, *x.shape[2:]), dtype=x.dtype, device=x.device)
    cover = F.pad(ones, padding, value=float(node.attr("count_include_pad", 0)))
    y = fn(F.pad(x, padding), kernel, strides, 0, ceil, True, 1) / fn(cover, kernel, strides, 0, ceil, True, 1)
    return y.squeeze(2) if one_d else y


@op("GlobalAveragePool")
def _global_avg_pool(node: Node, x: Tensor) -> Tensor:
    return x.mean(dim=tuple(range(2, x.dim())), keepdim=True)


@op("GlobalMaxPool")
def _global_max_pool(node: Node, x: Tensor) -> Tensor:
    return x.amax(dim=tuple(range(2, x.dim())), keepdim=True)


@op("BatchNormalization")
def _batch_norm(node: Node, x: Tensor, scale: Tensor, bias: Tensor, mean: Tensor, var: Tensor) -> Tensor:
    if node.n_outputs > 1 or node.attr("training_mode", 0):
        raise node.fail("only the inference form (one output, training_mode=0) is supported")
    return F.batch_norm(x, mean, var, scale, bias, False, 0.0, node.attr("epsilon", 1e-5))


@op("LayerNormalization")
def _layer_norm(node: Node, x: Tensor, scale: Tensor, bias: Tensor | None = None) -> Tensor:
    """Normalises over dims ``axis..``; scale and bias broadcast against those dims."""
    if node.n_outputs > 1:
        raise node.fail("the Mean/InvStdDev outputs are not supported")
    axis = _axis(node.attr("axis", -1), x.dim())
    y = F.layer_norm(x, x.shape[axis:], eps=node.attr("epsilon", 1e-5)) * scale
    return y if bias is None else y + bias


# --- reductions --------------------------------------------------------------------------------------

_REDUCE = {"ReduceMean": torch.mean, "ReduceSum": torch.sum, "ReduceMax": torch.amax, "ReduceMin": torch.amin}
_AXES_INPUT_SINCE = {"ReduceSum": 13}  # the others moved axes to an input at opset 18


@op(*_REDUCE)
def _reduce(node: Node, x: Tensor, axes: Tensor | None = None) -> Tensor:
    axes = _input_or_attr(node, axes, "axes", _AXES_INPUT_SINCE.get(node.op_type, 18))
    if not axes:
        if node.attr("noop_with_empty_axes", 0):
            return x
        axes = list(range(x.dim()))
    return _REDUCE[node.op_type](x, dim=tuple(axes), keepdim=bool(node.attr("keepdims", 1)))
