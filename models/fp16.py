"""A small float32 -> float16 model converter for tests (initializers, graph inputs/outputs, Cast targets)."""

from __future__ import annotations

import onnx
from onnx import TensorProto, numpy_helper


def to_fp16(model: onnx.ModelProto) -> onnx.ModelProto:
    """Copy of ``model`` computing in float16 end to end: every float initializer, input, output and
    ``Cast(to=FLOAT)`` becomes float16; value_info is dropped (shape inference redoes it)."""
    out = onnx.ModelProto.FromString(model.SerializeToString())
    g = out.graph
    for i, t in enumerate(g.initializer):
        if t.data_type == TensorProto.FLOAT:
            g.initializer[i].CopyFrom(numpy_helper.from_array(numpy_helper.to_array(t).astype("float16"), t.name))
    for vi in [*g.input, *g.output]:
        if vi.type.tensor_type.elem_type == TensorProto.FLOAT:
            vi.type.tensor_type.elem_type = TensorProto.FLOAT16
    for node in g.node:
        for a in node.attribute:
            if node.op_type == "Cast" and a.name == "to" and a.i == TensorProto.FLOAT:
                a.i = TensorProto.FLOAT16
            if a.name == "value" and a.t.data_type == TensorProto.FLOAT:
                a.t.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(a.t).astype("float16"), a.t.name))
    del g.value_info[:]
    onnx.checker.check_model(out, full_check=True)
    return out
