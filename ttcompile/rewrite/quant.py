"""Quantized weights: QDQ (``DequantizeLinear`` of constants) and ORT's dynamic int8 pattern.

QDQ (``quantize_static(..., quant_format=QDQ)``): a weight is ``DequantizeLinear(q, scale[, zero_point],
axis)`` of constants, ``w = (q - zero_point) * scale`` with per-tensor or per-axis (1-D) scale/zero point.

Dynamic (``quantize_dynamic``): ``DynamicQuantizeLinear(x) -> (xq, x_scale, x_zp)``,
``MatMulInteger|ConvInteger(xq, wq, x_zp[, w_zp]) -> Cast(to=FLOAT) -> Mul(., Mul(x_scale, w_scale))``,
which computes ``x_hat @ w`` (or ``conv(x_hat, w)``) with ``w = (wq - w_zp) * w_scale`` and the
activation as quantized, ``x_hat = (xq - x_zp) * x_scale``. A rewrite replaces the integer op, its Cast
and its Mul: the chain reads ``x_hat = DequantizeLinear(xq, x_scale, x_zp)`` (so it sees the activation
the original saw) and writes the Mul's output (``DynamicPattern``).

Rewritten chains are floating point (float32, or the scale's dtype for QDQ), initialised from the
dequantized weight.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx_ir as ir

INTEGER_OPS = ("MatMulInteger", "ConvInteger")


def _is_onnx(node: ir.Node | None, op_type: str) -> bool:
    return node is not None and node.op_type == op_type and node.domain in ("", "ai.onnx")


def _const(value: ir.Value | None) -> np.ndarray | None:
    return None if value is None or value.const_value is None else value.const_value.numpy()


def _per_axis(v: np.ndarray, ndim: int, axis: int) -> np.ndarray:
    """A 1-D per-axis scale/zero point shaped to broadcast along ``axis`` of an ``ndim`` tensor."""
    if v.ndim == 0 or ndim == 0:
        return v
    shape = [1] * ndim
    shape[axis % ndim] = -1
    return v.reshape(shape)


def _axis(node: ir.Node) -> int:
    axis = node.attributes.get("axis")
    return 1 if axis is None else int(axis.value)


def quantize_linear(value: ir.Value | None) -> np.ndarray | None:
    """``QuantizeLinear`` of constants computed as ONNX defines it (round half to even, saturate to the
    zero point's integer type, uint8 without one); quantizers emit ``DequantizeLinear(QuantizeLinear(w))``
    for weights stored as Constant nodes."""
    node = value.producer() if value is not None else None
    if not _is_onnx(node, "QuantizeLinear"):
        return None
    x, scale = _const(node.inputs[0]), _const(node.inputs[1])
    zp = _const(node.inputs[2]) if len(node.inputs) > 2 and node.inputs[2] is not None else None
    if x is None or scale is None or (len(node.inputs) > 2 and node.inputs[2] is not None and zp is None):
        return None
    dtype = zp.dtype if zp is not None else np.dtype(np.uint8)
    if dtype.kind not in "iu":
        return None
    axis, info = _axis(node), np.iinfo(dtype)
    zero = 0.0 if zp is None else _per_axis(zp.astype(np.float64), x.ndim, axis)
    q = np.rint(x / _per_axis(scale, x.ndim, axis)).astype(np.float64) + zero  # in x's precision, as ORT does
    return np.clip(q, info.min, info.max).astype(dtype)


def dequantize_linear(value: ir.Value | None) -> np.ndarray | None:
    """float64 weight of ``value`` when it is ``DequantizeLinear`` of constants (no block quantization)."""
    node = value.producer() if value is not None else None
    if not _is_onnx(node, "DequantizeLinear"):
        return None
    q, scale = _const(node.inputs[0]), _const(node.inputs[1])
    q = q if q is not None else quantize_linear(node.inputs[0])
    zp_value = node.inputs[2] if len(node.inputs) > 2 else None
    zp = _const(zp_value)
    block = node.attributes.get("block_size")
    if q is None or scale is None or (zp_value is not None and zp is None) or (block is not None and block.value):
        return None
    axis = _axis(node)
    zero = 0.0 if zp is None else _per_axis(zp.astype(np.float64), q.ndim, axis)
    return (q.astype(np.float64) - zero) * _per_axis(scale.astype(np.float64), q.ndim, axis)


def dynamic_quantize_constant(value: ir.Value | None) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """``(q, scale, zero_point)`` when ``value`` is an output of ``DynamicQuantizeLinear`` of a constant.

    ``quantize_dynamic`` emits this for weights stored as Constant nodes (PaddlePaddle exports); the
    result is computed here as the ONNX spec defines it (uint8, range widened to include 0, round half
    to even, saturate).
    """
    node = value.producer() if value is not None else None
    x = _const(node.inputs[0]) if _is_onnx(node, "DynamicQuantizeLinear") else None
    if x is None or x.size == 0:
        return None
    x = x.astype(np.float64)
    lo, hi = min(0.0, float(x.min())), max(0.0, float(x.max()))
    scale = (hi - lo) / 255 or 1.0
    zp = np.clip(np.rint(-lo / scale), 0, 255)
    q = np.clip(np.rint(x / scale) + zp, 0, 255)
    return q.astype(np.uint8), np.asarray(scale, dtype=np.float32), np.asarray(zp, dtype=np.uint8)


def _quantized_part(value: ir.Value | None, index: int) -> np.ndarray | None:
    """A constant, or output ``index`` (0 q, 1 scale, 2 zero point) of DynamicQuantizeLinear of a constant."""
    got = _const(value)
    if got is not None:
        return got
    dql = dynamic_quantize_constant(value)
    producer = value.producer() if value is not None else None
    if dql is None or producer.outputs[index] is not value:
        return None
    return dql[index]


def constant_array(value: ir.Value | None) -> np.ndarray | None:
    """An initializer's array, a QDQ weight dequantized (float64), or a dynamically quantized constant;
    None for anything computed at run time."""
    got = _quantized_part(value, 0)
    return got if got is not None else dequantize_linear(value)


def constant_shape(value: ir.Value | None) -> tuple[int, ...] | None:
    array = constant_array(value)
    return None if array is None else tuple(int(d) for d in array.shape)


@dataclass
class DynamicPattern:
    """An integer op with its dequantizing tail: chain input ``x``, replaced ``nodes``, their output ``y``."""

    x: tuple[ir.Value, ir.Value, ir.Value]  # xq, x_scale, x_zp: the chain input is their DequantizeLinear
    nodes: list[ir.Node]
    y: ir.Value
    weight: np.ndarray  # dequantized, float64, as stored (MatMul (K, N); Conv (O, C, *k))


def _only_use(value: ir.Value, op_type: str) -> ir.Node | None:
    uses = list(value.uses())
    return uses[0].node if len(uses) == 1 and _is_onnx(uses[0].node, op_type) and not value.is_graph_output() \
        else None


def dynamic_pattern(node: ir.Node) -> DynamicPattern | str:
    """The ``DynamicPattern`` of a MatMulInteger/ConvInteger node, or why it is not one we can rewrite."""
    xq, wq = node.inputs[0], node.inputs[1]
    w_zp_value = node.inputs[3] if len(node.inputs) > 3 else None
    dql = xq.producer() if xq is not None else None
    if not _is_onnx(dql, "DynamicQuantizeLinear") or dql.outputs[0] is not xq:
        return "integer op input is not DynamicQuantizeLinear's output"
    wq_array, w_zp = _quantized_part(wq, 0), _quantized_part(w_zp_value, 2)
    if wq_array is None or (w_zp_value is not None and w_zp is None):
        return "quantized weight or its zero point is not constant"
    cast = _only_use(node.outputs[0], "Cast")
    if cast is None or int(cast.attributes["to"].value) != ir.DataType.FLOAT:
        return "integer output is not cast to float once"
    mul = _only_use(cast.outputs[0], "Mul")
    scales = mul.inputs[1] if mul is not None and mul.inputs[0] is cast.outputs[0] else \
        (mul.inputs[0] if mul is not None else None)
    scale_mul = scales.producer() if scales is not None else None
    if not _is_onnx(scale_mul, "Mul") or dql.outputs[1] not in scale_mul.inputs:
        return "output is not rescaled by x_scale * w_scale"
    w_scale = _quantized_part(next(v for v in scale_mul.inputs if v is not dql.outputs[1]), 1)
    if w_scale is None or w_scale.size != 1 and not (node.op_type == "MatMulInteger" and w_scale.ndim == 1):
        return "weight scale is not constant per-tensor (or per-column for MatMulInteger)"
    zero = 0.0 if w_zp is None else w_zp.astype(np.float64)
    weight = (wq_array.astype(np.float64) - zero) * w_scale.astype(np.float64)
    return DynamicPattern(tuple(dql.outputs), [node, cast, mul], mul.outputs[0], weight)


def chain_input(b, x):
    """The value a chain reads: ``x`` itself, or ``DequantizeLinear(xq, x_scale, x_zp)`` for a dynamic pattern."""
    return b.op("DequantizeLinear", list(x)) if isinstance(x, tuple) else x


def chain_dtype(node: ir.Node) -> np.dtype:
    """Float dtype of the chain replacing ``node``: its weight's, a QDQ scale's, or float32 (integer ops)."""
    w = node.inputs[1]
    if w.const_value is not None and w.const_value.numpy().dtype.kind == "f":
        return w.const_value.numpy().dtype
    producer = w.producer()
    if _is_onnx(producer, "DequantizeLinear") and producer.inputs[1].const_value is not None:
        return producer.inputs[1].const_value.numpy().dtype
    return np.dtype(np.float32)


def weight_precision(node: ir.Node) -> str:
    """How the layer's weight is stored: ``float32``, ``float16``, ``int8 QDQ``, ``uint8 dynamic``, ..."""
    w = node.inputs[1]
    if node.op_type in INTEGER_OPS:
        q = _quantized_part(w, 0)
        return f"{q.dtype} dynamic" if q is not None else "dynamic"
    if w.const_value is not None:
        return str(w.const_value.numpy().dtype)
    producer = w.producer()
    if _is_onnx(producer, "DequantizeLinear"):
        q = _const(producer.inputs[0])
        q = q if q is not None else quantize_linear(producer.inputs[0])
        if q is not None:
            return f"{q.dtype} QDQ"
    return "computed"


def precision_summary(layers) -> str:
    """``"12 float32, 3 int8 QDQ"``: how many layers store their weight in each precision."""
    counts: dict[str, int] = {}
    for layer in layers:
        key = layer.attrs.get("precision", "?")
        counts[key] = counts.get(key, 0) + 1
    return ", ".join(f"{n} {key}" for key, n in counts.items())


def chain_precision(proto, layer_names) -> str:
    """Element types of the initializers the rewrite added (named ``<layer>/<tag>_<n>``) in ``proto``."""
    import onnx

    prefixes = tuple(f"{name}/" for name in layer_names)
    types = sorted({onnx.helper.tensor_dtype_to_np_dtype(t.data_type).name for t in proto.graph.initializer
                    if t.name.startswith(prefixes) and t.data_type != onnx.TensorProto.INT64})
    return ", ".join(types) or "none"
