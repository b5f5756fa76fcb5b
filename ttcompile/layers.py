"""Discovery of compressible layers: Gemm, MatMul with a constant weight, Conv 1-D/2-D.

Constant weights include quantized ones (``ttcompile.rewrite.quant``): a QDQ weight (``DequantizeLinear`` of
constants) and the integer ops of ORT's dynamic quantization (MatMulInteger, ConvInteger).

Every layer is described in a canonical form that the rewrite passes share:

* fully connected (``gemm``/``matmul``): weight ``W`` of shape ``(out, in)`` with
  ``y = x @ W.T + b`` (Gemm's ``alpha`` is folded into ``W``, ``beta`` into ``b``);
* convolution (``conv``): kernel ``(O, C, *k)`` exactly as ONNX stores it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from math import prod

import numpy as np
import onnx_ir as ir

from ttcompile.graph import to_proto
from ttcompile.rewrite.quant import (
    INTEGER_OPS,
    DynamicPattern,
    constant_array,
    constant_shape,
    dynamic_pattern,
    weight_precision,
)
from ttcompile.shapes import static_shapes

FLOAT_TYPES = {ir.DataType.FLOAT, ir.DataType.FLOAT16, ir.DataType.DOUBLE}
NON_FINITE = "has NaN or infinite values"  # ends the skip reason of such a weight


@dataclass
class Layer:
    """One candidate node. ``macs`` are per sample (batch 1) at the model's input shape."""

    name: str
    kind: str  # "gemm" | "matmul" | "conv"
    op_type: str
    weight: str
    weight_shape: tuple[int, ...]  # as stored in the model
    out_features: int  # O (N for Gemm/MatMul)
    in_features: int  # C (K for Gemm/MatMul)
    kernel: tuple[int, ...] = ()  # conv spatial kernel, () for fully connected
    rows: int = 1  # fully connected: rows per sample (leading dims of a MatMul input)
    in_spatial: tuple[int, ...] | None = None  # conv input spatial dims
    out_spatial: tuple[int, ...] | None = None  # conv output spatial dims
    has_bias: bool = False
    params: int = 0
    macs: int | None = None
    attrs: dict = field(default_factory=dict)
    skip: str | None = None  # why the layer cannot be compressed

    def __post_init__(self):
        # shapes may come from onnx-ir with symbolic dims (dynamo exports): keep them JSON-safe
        for key in ("weight_shape", "kernel", "in_spatial", "out_spatial"):
            if getattr(self, key) is not None:
                setattr(self, key, json_dims(getattr(self, key)))

    @property
    def compressible(self) -> bool:
        return self.skip is None

    @property
    def dense_shape(self) -> tuple[int, ...]:
        """Canonical weight shape: ``(out, in)`` or ``(O, C, *k)``."""
        return (self.out_features, self.in_features, *self.kernel)

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict) -> Layer:
        data = dict(data)
        for key in ("weight_shape", "kernel", "in_spatial", "out_spatial"):
            if data.get(key) is not None:
                data[key] = tuple(data[key])
        return cls(**data)


def json_dims(dims) -> tuple[int | str, ...]:
    """Dims as ints, a symbolic dim as its name (``"?"`` when it has none)."""
    out = []
    for d in dims:
        if isinstance(d, (int, np.integer)):
            out.append(int(d))
        else:
            value = getattr(d, "value", d)
            out.append(int(value) if isinstance(value, (int, np.integer)) else str(value or "?"))
    return tuple(out)


def _attr(node: ir.Node, name: str, default):
    a = node.attributes.get(name)
    return default if a is None else a.value


def _weight_problem(value: ir.Value) -> str | None:
    if value.const_value is None and constant_array(value) is None:
        return "weight is not a constant initializer"
    if value.is_graph_input():
        return "weight is also a graph input (it may be overridden at run time)"
    integer_op = any(use.node.op_type in INTEGER_OPS for use in value.uses())
    if value.const_value is not None and value.dtype not in FLOAT_TYPES and not integer_op:
        return f"weight dtype {value.dtype.name} is not floating point"
    if not np.isfinite(constant_array(value)).all():  # a QDQ weight: its dequantized values
        return f"weight {value.name} {NON_FINITE}"
    users = {use.node.name for use in value.uses()}
    if len(users) > 1:
        return f"weight {value.name} is shared by {len(users)} nodes ({', '.join(sorted(users))})"
    return None


def _gemm(node: ir.Node, shapes: dict) -> Layer:
    a, b = node.inputs[0], node.inputs[1]
    c = node.inputs[2] if len(node.inputs) > 2 else None
    trans_a, trans_b = int(_attr(node, "transA", 0)), int(_attr(node, "transB", 0))
    alpha, beta = float(_attr(node, "alpha", 1.0)), float(_attr(node, "beta", 1.0))
    attrs = {"transA": trans_a, "transB": trans_b, "alpha": alpha, "beta": beta}
    b_shape = constant_shape(b)
    layer = Layer(node.name, "gemm", "Gemm", b.name, b_shape or tuple(b.shape or ()), 0, 0, attrs=attrs)
    if b_shape is None:
        layer.skip = "weight is input A, not B" if a.const_value is not None else "no constant weight"
        return layer
    k, n = (b_shape[1], b_shape[0]) if trans_b else (b_shape[0], b_shape[1])
    layer.out_features, layer.in_features = int(n), int(k)
    layer.has_bias = c is not None
    layer.attrs["bias_vector"] = c is None or _is_bias_vector(c, int(n))
    if c is not None and not layer.attrs["bias_vector"] and c.const_value is not None:
        layer.attrs["c_size"] = int(prod(c.shape))  # re-added as a constant after the chain
    layer.params = int(k * n) + (int(prod(c.shape)) if c is not None and c.const_value is not None else 0)
    layer.macs = int(k * n)
    layer.skip = _weight_problem(b)
    return layer


def _is_bias_vector(c: ir.Value, n: int) -> bool:
    """True when Gemm's C is a constant broadcastable along the output features only."""
    shape = constant_shape(c)
    if shape is None:
        return False
    dims = list(shape)
    return prod(dims) in (1, n) and (not dims or dims[-1] in (1, n)) and all(d == 1 for d in dims[:-1])


def _matmul(node: ir.Node, shapes: dict) -> Layer:
    a, b = node.inputs[0], node.inputs[1]
    b_shape = constant_shape(b)
    layer = Layer(node.name, "matmul", node.op_type, b.name, b_shape or tuple(b.shape or ()), 0, 0)
    if b_shape is None:
        layer.skip = "weight is the first input" if a.const_value is not None else "no constant weight"
        return layer
    if len(b_shape) != 2:
        layer.skip = f"weight has rank {len(b_shape)}, only 2-D weights are rewritten"
        return layer
    k, n = int(b_shape[0]), int(b_shape[1])
    layer.out_features, layer.in_features = n, k
    a_shape = shapes.get(a.name)
    layer.attrs["input_rank"] = len(a_shape) if a_shape is not None else None
    layer.rows = int(prod(a_shape[1:-1])) if a_shape is not None and len(a_shape) >= 3 else 1
    layer.params = k * n
    layer.macs = layer.rows * k * n
    layer.skip = _weight_problem(b)
    return layer


def _conv(node: ir.Node, shapes: dict) -> Layer:
    x, w = node.inputs[0], node.inputs[1]
    bias = node.inputs[2] if len(node.inputs) > 2 and node.op_type == "Conv" else None  # ConvInteger: zero point
    w_shape = constant_shape(w) or tuple(int(d) for d in (w.shape or ()))
    nd = len(w_shape) - 2
    attrs = {
        "strides": list(_attr(node, "strides", [1] * nd)),
        "pads": list(_attr(node, "pads", [0] * 2 * nd)),
        "dilations": list(_attr(node, "dilations", [1] * nd)),
        "auto_pad": str(_attr(node, "auto_pad", "NOTSET")),
        "group": int(_attr(node, "group", 1)),
    }
    layer = Layer(node.name, "conv", node.op_type, w.name, w_shape, 0, 0, attrs=attrs)
    if constant_shape(w) is None:
        layer.skip = "no constant weight"
        return layer
    o, c_per_group = w_shape[0], w_shape[1]
    layer.out_features, layer.in_features, layer.kernel = o, c_per_group * attrs["group"], w_shape[2:]
    layer.has_bias = bias is not None
    layer.params = int(prod(w_shape)) + (o if bias is not None else 0)
    x_shape, y_shape = shapes.get(x.name), shapes.get(node.outputs[0].name)
    if x_shape is not None and y_shape is not None:
        layer.in_spatial, layer.out_spatial = tuple(x_shape[2:]), tuple(y_shape[2:])
        layer.macs = int(prod(y_shape[1:]) * c_per_group * prod(w_shape[2:]))
    if attrs["group"] != 1:
        layer.skip = "depthwise conv" if c_per_group == 1 else f"grouped conv (group={attrs['group']})"
    elif nd not in (1, 2):
        layer.skip = f"{nd}-D conv; only 1-D and 2-D are rewritten"
    else:
        layer.skip = _weight_problem(w)
    return layer


def _integer(node: ir.Node, shapes: dict) -> Layer:
    """MatMulInteger / ConvInteger of ORT's dynamic quantization, found as a matmul / conv layer."""
    layer = (_matmul if node.op_type == "MatMulInteger" else _conv)(node, shapes)
    pattern = dynamic_pattern(node)
    if isinstance(pattern, str) and layer.skip is None:
        layer.skip = pattern
    return layer


_FINDERS = {"Gemm": _gemm, "MatMul": _matmul, "Conv": _conv, "MatMulInteger": _integer, "ConvInteger": _integer}


def find_layers(model: ir.Model, input_shapes: dict[str, tuple[int, ...]] | None = None) -> list[Layer]:
    """All Gemm/MatMul/Conv nodes in graph order, with ``skip`` set on those we cannot rewrite.

    Shapes come from shape inference at batch 1; a wrong ``input_shapes`` entry, a dynamic dim it does
    not fix, or inference failing is a UserError (never silently unknown sizes)."""
    shapes = static_shapes(to_proto(model), batch=1, input_shapes=input_shapes)
    layers = []
    for node in model.graph:
        if node.domain in ("", "ai.onnx") and node.op_type in _FINDERS:
            layers.append(_FINDERS[node.op_type](node, shapes))
            layers[-1].attrs["precision"] = weight_precision(node)
    return layers


def dense_weight(model: ir.Model, layer: Layer) -> tuple[np.ndarray, np.ndarray | None]:
    """Canonical weight and bias vector of ``layer`` (float64).

    Gemm: ``W = alpha * op(B)^T`` as ``(out, in)``; bias ``beta * C`` when C is a vector
    (a non-vector C is re-added by the rewrite, see ``passes.base.finish_fc``).
    """
    node = find_node(model, layer.name)
    if node.op_type in INTEGER_OPS:
        w, bias = dynamic_pattern(node).weight, None
    else:
        w = constant_array(node.inputs[1]).astype(np.float64)
        bias = constant_array(node.inputs[2]) if len(node.inputs) > 2 else None
    if layer.kind == "gemm":
        w = (w if layer.attrs["transB"] else w.T) * layer.attrs["alpha"]
        if bias is not None and layer.attrs["bias_vector"]:
            bias = np.broadcast_to(bias.reshape(-1), (layer.out_features,)) * layer.attrs["beta"]
        else:
            bias = None
    elif layer.kind == "matmul":
        w = w.T
    return w, None if bias is None else np.asarray(bias, dtype=np.float64)


def stored_weight(layer: Layer, canonical: np.ndarray) -> np.ndarray:
    """Inverse of ``dense_weight`` for a weight stored as it is read (no quantization): ``canonical``
    ``(out, in)`` / ``(O, C, *k)`` in the layout of ``layer``'s weight input (Gemm ``B = (W / alpha)^T``
    unless ``transB``, MatMul ``B = W^T``, Conv unchanged)."""
    if layer.kind == "gemm":
        w = canonical / layer.attrs["alpha"]
        return w if layer.attrs["transB"] else w.T
    return canonical.T if layer.kind == "matmul" else canonical


def layer_io(model: ir.Model, layer: Layer) -> tuple[ir.Node, list[ir.Node], ir.Value | tuple, ir.Value]:
    """``(node, nodes a rewrite replaces, chain input, value the chain's output replaces)``; the chain input
    of a dynamically quantized layer is its ``(xq, x_scale, x_zp)`` (see ``quant.chain_input``)."""
    node = find_node(model, layer.name)
    if node.op_type in INTEGER_OPS:
        pattern: DynamicPattern = dynamic_pattern(node)
        return node, pattern.nodes, pattern.x, pattern.y
    return node, [node], node.inputs[0], node.outputs[0]


def find_node(model: ir.Model, name: str) -> ir.Node:
    for node in model.graph:
        if node.name == name:
            return node
    raise KeyError(f"node {name!r} not found in the graph")
