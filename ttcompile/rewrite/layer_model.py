"""One layer alone as a tiny ONNX model, dense or rewritten, for timing it on an execution provider.

The dense model is rebuilt from the ``Layer`` description only (random weights of the stored shape, the
same attributes, input ``(batch, C, *in_spatial)`` for a conv, ``(batch, in)`` or ``(batch, rows, in)``
for a fully connected layer), so equal descriptions give equal models: that is what lets a latency table
key its entries by the layer's signature instead of its weights. The chain model is that dense model
rewritten by the very pass ``compress`` uses (``apply_plan``), at the plan's format, modes, ranks and
realization. Simplifications (timing only, documented): weights are float32 whatever the model stores
(quantized layers are timed as float layers), a Gemm is timed with ``transA = 0`` (its chain's leading
Transpose is left out), a 1-D MatMul input as one row.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import onnx
import onnx_ir as ir
from onnx import TensorProto, helper, numpy_helper

from ttcompile.errors import UserError
from ttcompile.graph import to_proto
from ttcompile.layers import Layer, find_layers
from ttcompile.planning.plan import LayerPlan, Plan
from ttcompile.rewrite.compress import apply_plan

OPSET = 17


def dense_model(layer: Layer, batch: int, seed: int = 0) -> onnx.ModelProto:
    """The layer alone, at a fixed ``batch``: one Gemm/MatMul/Conv node named ``layer.name``."""
    rng = np.random.default_rng(seed)
    fan_in = layer.in_features * int(np.prod(layer.kernel or (1,)))
    inits = {"W": (rng.standard_normal(layer.weight_shape) / np.sqrt(fan_in)).astype(np.float32)}
    attrs: dict = {}
    if layer.kind == "conv":
        if layer.in_spatial is None or any(not isinstance(d, int) for d in layer.in_spatial):
            raise UserError(f"layer {layer.name!r}: its input size is unknown, so it cannot be timed "
                            "(fix the input shape with --input-shape)")
        x_shape = [batch, layer.in_features, *layer.in_spatial]
        y_shape = [batch, layer.out_features, *layer.out_spatial]
        a = layer.attrs
        attrs = {"kernel_shape": list(layer.kernel), "strides": a["strides"], "dilations": a["dilations"]}
        attrs |= {"auto_pad": a["auto_pad"]} if a["auto_pad"] not in ("NOTSET", "") else {"pads": a["pads"]}
        op = "Conv"
    elif layer.kind == "gemm":
        x_shape, y_shape = [batch, layer.in_features], [batch, layer.out_features]
        attrs = {"transB": layer.attrs["transB"], "alpha": layer.attrs["alpha"], "beta": layer.attrs["beta"]}
        op = "Gemm"
    else:
        rank = layer.attrs.get("input_rank") or 2
        x_shape = [batch, layer.in_features] if rank <= 2 else [batch, layer.rows, layer.in_features]
        y_shape = [*x_shape[:-1], layer.out_features]
        op = "MatMul"
    names = ["x", "W"]
    if layer.has_bias and op != "MatMul":
        inits["B"] = rng.standard_normal(layer.out_features).astype(np.float32) * 0.1
        names.append("B")
    node = helper.make_node(op, names, ["y"], name=layer.name, **attrs)
    graph = helper.make_graph([node], f"{layer.name}_alone", [helper.make_tensor_value_info("x", TensorProto.FLOAT,
                                                                                            x_shape)],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, y_shape)],
                              [numpy_helper.from_array(v, k) for k, v in inits.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = 8
    return model


def chain_model(lp: LayerPlan, batch: int) -> onnx.ModelProto:
    """``dense_model(lp.layer)`` with its node rewritten as ``lp`` says (format, modes, ranks, options)."""
    model = ir.from_proto(dense_model(lp.layer, batch))
    (fresh,) = find_layers(model)
    apply_plan(model, Plan("", "", {}, [replace(lp, layer=fresh, action="compress")]), progress=False)
    return to_proto(model)
