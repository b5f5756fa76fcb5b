"""Static cost of an ONNX model: parameter count and multiply-accumulates per node.

This is the ground truth the compiler's own cost model is tested against, so it
counts from the graph alone (ONNX shape inference at a fixed batch), not from
any layer bookkeeping of the compiler.
"""

from __future__ import annotations

import math

import onnx

from ttcompile.errors import UserError
from ttcompile.shapes import static_shapes

_FLOAT_NAMES = (
    "FLOAT",
    "DOUBLE",
    "FLOAT16",
    "BFLOAT16",
    "FLOAT8E4M3FN",
    "FLOAT8E4M3FNUZ",
    "FLOAT8E5M2",
    "FLOAT8E5M2FNUZ",
    "FLOAT4E2M1",
)
FLOAT_TYPES = frozenset(getattr(onnx.TensorProto, n) for n in _FLOAT_NAMES if hasattr(onnx.TensorProto, n))

MAC_OPS = frozenset({"MatMul", "Gemm", "Conv", "ConvTranspose"})


def count_params(model: onnx.ModelProto) -> int:
    """Elements of the floating-point weights: initializers and Constant node tensors.

    Integer tensors (shapes, axes, indices) are not parameters. Subgraphs are not visited.
    """
    g = model.graph
    total = sum(math.prod(t.dims) for t in g.initializer if t.data_type in FLOAT_TYPES)
    total += sum(math.prod(t.dims) for t in g.sparse_initializer if t.values.data_type in FLOAT_TYPES)
    for node in g.node:
        if node.op_type != "Constant" or node.domain not in ("", "ai.onnx"):
            continue
        for attr in node.attribute:
            if attr.name == "value" and attr.t.data_type in FLOAT_TYPES:
                total += math.prod(attr.t.dims)
            elif attr.name == "value_float":
                total += 1
            elif attr.name == "value_floats":
                total += len(attr.floats)
    return total


def node_key(node: onnx.NodeProto, index: int) -> str:
    """Stable key of a node: its name, or ``{op_type}_{index}`` (index in graph.node) when unnamed."""
    return node.name or f"{node.op_type}_{index}"


def count_macs(
    model: onnx.ModelProto, batch: int = 1, input_shapes: dict[str, tuple[int, ...]] | None = None
) -> dict[str, int]:
    """Multiply-accumulates of every MatMul, Gemm, Conv and ConvTranspose node, keyed by node.

    Shapes come from ONNX shape inference with the graph inputs fixed: a dynamic
    leading dim becomes ``batch``; other dynamic dims must be given in
    ``input_shapes`` (input name -> full shape), else UserError names the input.
    Where ONNX inference stops short of a counted node (e.g. Pad amounts computed by a
    Shape/Cast chain, as the TorchScript exporter emits), ONNX Runtime's symbolic
    shape inference fills the gap when onnxruntime is installed.

    - MatMul  A[..., M, K] @ B[..., K, N] (numpy broadcasting, 1-D operands allowed):
      prod(output shape) * K.
    - Gemm    op(A)[M, K] @ op(B)[K, N], transA/transB honoured: M * N * K.
    - Conv    W[C_out, C_in/group, k1, ...]: prod(output shape) * C_in/group * prod(k).
    - ConvTranspose W[C_in, C_out/group, k1, ...]: every input element is scattered
      onto C_out/group * prod(k) outputs: prod(input shape) * C_out/group * prod(k).

    Bias additions, alpha/beta scaling and all other ops are not counted.
    Keys are node names; an unnamed (or repeated) name becomes ``{op_type}_{index}``.
    Only nodes of the top-level graph are counted (no If/Loop bodies, no local functions).
    """
    nodes = [
        (index, node)
        for index, node in enumerate(model.graph.node)
        if node.op_type in MAC_OPS and node.domain in ("", "ai.onnx")
    ]
    shapes = static_shapes(model, batch, input_shapes)
    macs: dict[str, int] = {}
    for index, node in nodes:
        key = node_key(node, index)
        if key in macs:
            key = f"{node.op_type}_{index}"
        macs[key] = _node_macs(node, key, shapes)
    return macs


def total_macs(model: onnx.ModelProto, batch: int = 1, input_shapes: dict[str, tuple[int, ...]] | None = None) -> int:
    """Sum of :func:`count_macs` over the graph."""
    return sum(count_macs(model, batch, input_shapes).values())


def _node_macs(node: onnx.NodeProto, key: str, shapes: dict[str, tuple[int, ...]]) -> int:
    def shape(name: str) -> tuple[int, ...]:
        if name not in shapes:
            raise UserError(f"cannot count MACs of {node.op_type} node {key!r}: shape of {name!r} is unknown")
        return shapes[name]

    a = shape(node.input[0])
    if node.op_type == "MatMul":
        return math.prod(shape(node.output[0])) * a[0 if len(a) == 1 else -1]
    if node.op_type == "Gemm":
        trans_a = next((attr.i for attr in node.attribute if attr.name == "transA"), 0)
        return math.prod(shape(node.output[0])) * a[0 if trans_a else 1]
    w = shape(node.input[1])
    if node.op_type == "Conv":
        return math.prod(shape(node.output[0])) * math.prod(w[1:])
    return math.prod(a) * math.prod(w[1:])  # ConvTranspose
