"""Exactness of static params/MACs counting on hand-built ONNX graphs.

Every MAC expectation is written out by hand; where a Conv output size is involved the
test also runs the model in ONNX Runtime and checks the real output shape behind the count.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

from ttcompile.errors import UserError
from ttcompile.rewrite.counting import count_macs, count_params, total_macs

F = TensorProto.FLOAT


def make(nodes, inputs, output="y", inits=(), opset=17, validate=True):
    """Model with float inputs ``{name: shape}`` (None or str dims are dynamic) and one output."""
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info(n, F, s) for n, s in inputs.items()],
        [helper.make_tensor_value_info(output, F, None)],
        initializer=list(inits),
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    if validate:
        ort_session(model)  # the graph is valid: ONNX Runtime loads it
    return model


def weight(name, *shape):
    return numpy_helper.from_array(np.random.default_rng(0).standard_normal(shape).astype(np.float32), name)


def ints(name, values):
    return numpy_helper.from_array(np.array(values, dtype=np.int64), name)


def ort_session(model):
    import onnxruntime as ort

    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])


def ort_output_shape(model, **feeds):
    return ort_session(model).run(None, {k: v.astype(np.float32) for k, v in feeds.items()})[0].shape


def test_gemm_trans_a_trans_b():
    # A stored as [K=30, M=5] (transA), B stored as [N=7, K=30] (transB): M*N*K
    model = make(
        [helper.make_node("Gemm", ["a", "w", "b"], ["y"], name="fc", transA=1, transB=1)],
        {"a": [30, 5]},
        inits=[weight("w", 7, 30), weight("b", 7)],
    )
    assert count_macs(model) == {"fc": 5 * 7 * 30}


def test_gemm_dynamic_batch():
    model = make(
        [helper.make_node("Gemm", ["x", "w"], ["y"], name="fc")],
        {"x": ["batch", 30]},
        inits=[weight("w", 30, 7)],
    )
    assert count_macs(model, batch=4) == {"fc": 4 * 30 * 7}
    assert total_macs(model, batch=1) == 30 * 7


def test_matmul_3d_input_2d_weight():
    model = make(
        [helper.make_node("MatMul", ["x", "w"], ["y"], name="mm")],
        {"x": ["N", 10, 16]},
        inits=[weight("w", 16, 8)],
    )
    assert count_macs(model, batch=3) == {"mm": 3 * 10 * 8 * 16}


def test_batched_matmul_broadcasting():
    # [B,1,5,6] @ [3,6,4] -> [B,3,5,4], K=6
    model = make([helper.make_node("MatMul", ["a", "b"], ["y"], name="bmm")], {"a": [None, 1, 5, 6], "b": [3, 6, 4]})
    assert count_macs(model, batch=2) == {"bmm": 2 * 3 * 5 * 4 * 6}


def test_matmul_1d_operands():
    model = make(
        [
            helper.make_node("MatMul", ["v", "w"], ["t"], name="vec_mat"),  # [6] @ [6,4] -> [4]
            helper.make_node("MatMul", ["w2", "t"], ["y"], name="mat_vec"),  # [3,4] @ [4] -> [3]
        ],
        {"v": [6]},
        inits=[weight("w", 6, 4), weight("w2", 3, 4)],
    )
    assert count_macs(model) == {"vec_mat": 4 * 6, "mat_vec": 3 * 4}


def test_conv2d_stride_pad_dilation_group():
    # out H = (11 + 1 + 1 - 1*(3-1) - 1) // 2 + 1 = 6 ; out W = (13 + 0 + 2 - 2*(3-1) - 1) // 1 + 1 = 11
    node = helper.make_node(
        "Conv", ["x", "w"], ["y"], name="conv", group=2, strides=[2, 1], pads=[1, 0, 1, 2], dilations=[1, 2]
    )
    model = make([node], {"x": ["N", 8, 11, 13]}, inits=[weight("w", 12, 4, 3, 3)])
    assert count_macs(model, batch=2) == {"conv": 2 * 12 * 6 * 11 * (8 // 2) * 3 * 3}
    assert ort_output_shape(model, x=np.zeros((2, 8, 11, 13))) == (2, 12, 6, 11)


def test_conv1d_auto_pad_same():
    # SAME_UPPER with stride 3: out = ceil(20 / 3) = 7
    node = helper.make_node("Conv", ["x", "w", "b"], ["y"], name="c1", strides=[3], auto_pad="SAME_UPPER")
    model = make([node], {"x": ["N", 3, 20]}, inits=[weight("w", 5, 3, 4), weight("b", 5)])
    assert count_macs(model) == {"c1": 5 * 7 * 3 * 4}
    assert ort_output_shape(model, x=np.zeros((1, 3, 20))) == (1, 5, 7)


def test_depthwise_conv():
    node = helper.make_node("Conv", ["x", "w"], ["y"], name="dw", group=16, pads=[1, 1, 1, 1])
    model = make([node], {"x": ["N", 16, 9, 9]}, inits=[weight("w", 16, 1, 3, 3)])
    assert count_macs(model, batch=5) == {"dw": 5 * 16 * 9 * 9 * 1 * 3 * 3}


def test_conv_transpose():
    # every input element [N,4,5,5] scatters onto C_out/group * k*k = 6 * 9 outputs
    node = helper.make_node("ConvTranspose", ["x", "w"], ["y"], name="up", strides=[2, 2])
    model = make([node], {"x": ["N", 4, 5, 5]}, inits=[weight("w", 4, 6, 3, 3)])
    assert count_macs(model, batch=2) == {"up": 2 * 4 * 5 * 5 * 6 * 3 * 3}


def test_reshape_chain_with_zero_and_minus_one():
    # [B,64] -Reshape[0,-1,8]-> [B,8,8] @ [8,4] -> [B,8,4] -Reshape[-1,32]-> [B,32] Gemm [32,10]
    nodes = [
        helper.make_node("Reshape", ["x", "s1"], ["r1"]),
        helper.make_node("MatMul", ["r1", "u"], ["m1"]),
        helper.make_node("Reshape", ["m1", "s2"], ["r2"]),
        helper.make_node("Gemm", ["r2", "v"], ["y"]),
    ]
    inits = [ints("s1", [0, -1, 8]), ints("s2", [-1, 32]), weight("u", 8, 4), weight("v", 32, 10)]
    model = make(nodes, {"x": ["batch", 64]}, inits=inits)
    assert count_macs(model, batch=7) == {"MatMul_1": 7 * 8 * 4 * 8, "Gemm_3": 7 * 10 * 32}


def test_reshape_shape_computed_from_shape_op():
    # target shape built at run time: Concat(Shape(x)[0:1], [4, 16])
    nodes = [
        helper.make_node("Shape", ["x"], ["sh"]),
        helper.make_node("Slice", ["sh", "zero", "one"], ["n"]),
        helper.make_node("Concat", ["n", "rest"], ["target"], axis=0),
        helper.make_node("Reshape", ["x", "target"], ["r"]),
        helper.make_node("MatMul", ["r", "w"], ["y"], name="mm"),
    ]
    inits = [ints("zero", [0]), ints("one", [1]), ints("rest", [4, 16]), weight("w", 16, 3)]
    model = make(nodes, {"x": ["batch", 64]}, inits=inits)
    assert count_macs(model, batch=6) == {"mm": 6 * 4 * 3 * 16}


def test_shapes_behind_a_computed_pad():
    """ONNX inference loses the Pad output when pads come from a Cast (TorchScript-exported
    shortcuts do this); ONNX Runtime's symbolic inference recovers it."""
    nodes = [
        helper.make_node("Cast", ["pads32"], ["pads"], to=TensorProto.INT64),
        helper.make_node("Pad", ["x", "pads"], ["p"]),  # [N,4,5,5] -> [N,4,7,7]
        helper.make_node("Conv", ["p", "w"], ["y"], name="conv"),  # 3x3 valid -> [N,2,5,5]
    ]
    pads = numpy_helper.from_array(np.array([0, 0, 1, 1, 0, 0, 1, 1], np.int32), "pads32")
    model = make(nodes, {"x": ["N", 4, 5, 5]}, inits=[pads, weight("w", 2, 4, 3, 3)])
    assert count_macs(model, batch=3) == {"conv": 3 * 2 * 5 * 5 * 4 * 3 * 3}
    assert ort_output_shape(model, x=np.zeros((3, 4, 5, 5))) == (3, 2, 5, 5)


def test_unnamed_and_repeated_names_get_index_keys():
    nodes = [
        helper.make_node("MatMul", ["x", "w"], ["t"], name="same"),
        helper.make_node("Relu", ["t"], ["t2"]),
        helper.make_node("MatMul", ["t2", "w"], ["t3"], name="same"),
        helper.make_node("MatMul", ["t3", "w"], ["y"]),
    ]
    # ONNX Runtime refuses repeated node names, but the ONNX checker lets them through
    model = make(nodes, {"x": [None, 8]}, inits=[weight("w", 8, 8)], validate=False)
    assert count_macs(model) == {"same": 64, "MatMul_2": 64, "MatMul_3": 64}


def test_dynamic_non_batch_dim_needs_input_shapes():
    model = make(
        [helper.make_node("MatMul", ["x", "w"], ["y"], name="mm")],
        {"x": ["batch", "seq", 16]},
        inits=[weight("w", 16, 8)],
    )
    with pytest.raises(UserError, match="'x'"):
        count_macs(model)
    assert count_macs(model, input_shapes={"x": (2, 5, 16)}) == {"mm": 2 * 5 * 8 * 16}


def test_count_params_floats_only():
    nodes = [
        helper.make_node("Constant", [], ["c"], value=numpy_helper.from_array(np.ones((3, 4), np.float32))),
        helper.make_node("Constant", [], ["cs"], value=numpy_helper.from_array(np.array([0, -1], np.int64))),
        helper.make_node("Constant", [], ["eps"], value_float=1e-5),
        helper.make_node("Reshape", ["x", "s"], ["r"]),
        helper.make_node("MatMul", ["r", "w"], ["y"]),
    ]
    inits = [
        weight("w", 16, 8),
        numpy_helper.from_array(np.zeros(8, np.float16), "half"),
        numpy_helper.from_array(np.zeros(5, np.float64), "double"),
        ints("s", [-1, 16]),
    ]
    model = make(nodes, {"x": [None, 16]}, inits=inits)
    assert count_params(model) == 16 * 8 + 8 + 5 + 3 * 4 + 1


def test_counts_agree_with_torch_style_mlp():
    """Two-layer MLP: params and MACs match the closed form."""
    nodes = [
        helper.make_node("Gemm", ["x", "w1", "b1"], ["h"], transB=1),
        helper.make_node("Relu", ["h"], ["hr"]),
        helper.make_node("Gemm", ["hr", "w2", "b2"], ["y"], transB=1),
    ]
    inits = [weight("w1", 32, 20), weight("b1", 32), weight("w2", 10, 32), weight("b2", 10)]
    model = make(nodes, {"x": ["batch", 20]}, inits=inits)
    assert count_params(model) == 32 * 20 + 32 + 10 * 32 + 10
    assert total_macs(model, batch=8) == 8 * (20 * 32 + 32 * 10)
    assert math.prod(ort_output_shape(model, x=np.zeros((8, 20)))) == 8 * 10
