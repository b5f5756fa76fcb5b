"""Tiny hand-built ONNX models covering the Gemm/MatMul/Conv attribute forms."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = 17


def _model(nodes, inputs, outputs, inits, opset=OPSET) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, "g", inputs, outputs, [numpy_helper.from_array(a, n) for n, a in inits.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    onnx.checker.check_model(model, full_check=True)
    return model


def gemm_model(n_in=48, n_out=40, batch="N", trans_a=0, trans_b=1, alpha=1.0, beta=1.0, bias="vector", seed=0):
    """Gemm(x, W[, C]); bias in {None, 'vector', 'row' (1,N), 'scalar', 'matrix' (M,N), 'input'}."""
    rng = np.random.default_rng(seed)
    w = (rng.standard_normal((n_out, n_in) if trans_b else (n_in, n_out)) / np.sqrt(n_in)).astype(np.float32)
    x_shape = [n_in, batch] if trans_a else [batch, n_in]
    inits, inputs, names = {"W": w}, [helper.make_tensor_value_info("x", TensorProto.FLOAT, x_shape)], ["x", "W"]
    if bias == "input":
        inputs.append(helper.make_tensor_value_info("c", TensorProto.FLOAT, [batch, n_out]))
        names.append("c")
    elif bias is not None:
        shape = {"vector": (n_out,), "row": (1, n_out), "scalar": (), "matrix": (batch, n_out)}[bias]
        inits["C"] = rng.standard_normal(shape).astype(np.float32)
        names.append("C")
    node = helper.make_node("Gemm", names, ["y"], name="gemm", transA=trans_a, transB=trans_b, alpha=alpha, beta=beta)
    out_batch = batch
    return _model([node], inputs, [helper.make_tensor_value_info("y", TensorProto.FLOAT, [out_batch, n_out])], inits)


def matmul_model(n_in=48, n_out=40, lead=("N",), seed=0):
    """MatMul(x (*lead, n_in), W (n_in, n_out)); ``lead=()`` gives a 1-D input."""
    rng = np.random.default_rng(seed)
    w = (rng.standard_normal((n_in, n_out)) / np.sqrt(n_in)).astype(np.float32)
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [*lead, n_in])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [*lead, n_out])
    return _model([helper.make_node("MatMul", ["x", "W"], ["y"], name="mm")], [x], [y], {"W": w})


def conv_model(c_in=16, c_out=32, kernel=(3, 3), spatial=(10, 9), strides=None, pads=None, dilations=None,
               auto_pad=None, bias=True, group=1, seed=0):
    """Conv with the given attributes on input (N, c_in, *spatial); ``bias="input"``: B is a graph input."""
    rng = np.random.default_rng(seed)
    w = (rng.standard_normal((c_out, c_in // group, *kernel)) / np.sqrt(c_in * np.prod(kernel))).astype(np.float32)
    inits, names, extra = {"W": w}, ["x", "W"], []
    if bias == "input":
        extra.append(helper.make_tensor_value_info("B", TensorProto.FLOAT, [c_out]))
        names.append("B")
    elif bias:
        inits["B"] = rng.standard_normal(c_out).astype(np.float32)
        names.append("B")
    attrs = {k: v for k, v in dict(strides=strides, pads=pads, dilations=dilations, auto_pad=auto_pad,
                                    group=group if group != 1 else None).items() if v is not None}
    node = helper.make_node("Conv", names, ["y"], name="conv", kernel_shape=list(kernel), **attrs)
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", c_in, *spatial])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", c_out, *(f"s{i}" for i in range(len(spatial)))])
    return _model([node], [x, *extra], [y], inits)


def mlp_model(seed=0):
    """x (N, 64) -> Gemm 64->96 -> Relu -> MatMul 96->32 -> Add -> y; a two-layer model for CLI tests."""
    rng = np.random.default_rng(seed)
    inits = {"W1": (rng.standard_normal((96, 64)) / 8).astype(np.float32), "B1": np.zeros(96, np.float32),
             "W2": (rng.standard_normal((96, 32)) / 10).astype(np.float32), "B2": np.ones(32, np.float32)}
    nodes = [helper.make_node("Gemm", ["x", "W1", "B1"], ["h"], name="fc1", transB=1),
             helper.make_node("Relu", ["h"], ["r"], name="relu"),
             helper.make_node("MatMul", ["r", "W2"], ["m"], name="fc2"),
             helper.make_node("Add", ["m", "B2"], ["y"], name="add")]
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 64])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 32])
    return _model(nodes, [x], [y], inits)
