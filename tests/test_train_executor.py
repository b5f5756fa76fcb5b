"""The torch executor against ONNX Runtime, op by op and attribute form by attribute form; gradients;
write_back round trips."""

from __future__ import annotations

import itertools

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

torch = pytest.importorskip("torch")

from ttcompile.errors import UserError  # noqa: E402
from ttcompile.train.executor import OnnxModule, write_back  # noqa: E402

from train_helpers import make_model, mlp, run_ort  # noqa: E402

R = np.random.default_rng(0)
I64_MAX = np.iinfo(np.int64).max


def f(*shape: int) -> np.ndarray:
    return R.standard_normal(shape).astype(np.float32)


def pos(*shape: int) -> np.ndarray:
    return (R.random(shape) + 0.1).astype(np.float32)


def i64(*values: int) -> np.ndarray:
    return np.array(values, np.int64)


_NAMES = itertools.count()


def node(op: str, inputs: list[str], outputs: tuple[str, ...] = ("y",), **attrs) -> onnx.NodeProto:
    return helper.make_node(op, inputs, list(outputs), name=f"{op.lower()}_{next(_NAMES)}", **attrs)


def case(id_: str, nodes, inputs: dict, inits: dict | None = None, outputs=("y",), opset: int = 18):
    if isinstance(nodes, onnx.NodeProto):
        nodes = [nodes]
    if not isinstance(outputs, dict):
        outputs = dict.fromkeys(outputs, TensorProto.FLOAT)
    return pytest.param(nodes, inputs, inits or {}, outputs, opset, id=id_)


X4 = f(2, 4, 7, 7)
CASES = [
    # Conv
    case("conv2d-stride-pads-bias", node("Conv", ["x", "w", "b"], strides=[2, 2], pads=[1, 1, 1, 1]),
         {"x": X4}, {"w": f(6, 4, 3, 3), "b": f(6)}),
    case("conv2d-asym-pads-dilation-group", node("Conv", ["x", "w"], pads=[0, 1, 2, 0], dilations=[2, 1],
                                                  group=2), {"x": X4}, {"w": f(6, 2, 3, 2)}),
    case("conv2d-same-upper", node("Conv", ["x", "w", "b"], strides=[2, 2], auto_pad="SAME_UPPER"),
         {"x": X4}, {"w": f(3, 4, 4, 2), "b": f(3)}),
    case("conv2d-same-lower", node("Conv", ["x", "w"], strides=[2, 1], auto_pad="SAME_LOWER"),
         {"x": X4}, {"w": f(3, 4, 4, 2)}),
    case("conv2d-valid", node("Conv", ["x", "w"], auto_pad="VALID", kernel_shape=[3, 3]),
         {"x": X4}, {"w": f(3, 4, 3, 3)}),
    case("conv2d-depthwise", node("Conv", ["x", "w"], group=4, pads=[1, 1, 1, 1]), {"x": X4},
         {"w": f(4, 1, 3, 3)}),
    case("conv2d-1x1-chain", [node("Conv", ["x", "w1"], ("h",)), node("Conv", ["h", "w2", "b"])],
         {"x": X4}, {"w1": f(2, 4, 1, 1), "w2": f(5, 2, 1, 1), "b": f(5)}),
    case("conv1d", node("Conv", ["x", "w", "b"], strides=[2], pads=[2, 1]), {"x": f(2, 3, 11)},
         {"w": f(4, 3, 3), "b": f(4)}),
    # ConvTranspose
    case("convT2d-stride-pads-outpad", node("ConvTranspose", ["x", "w", "b"], strides=[2, 2],
                                            pads=[1, 1, 1, 1], output_padding=[1, 1]),
         {"x": X4}, {"w": f(4, 3, 3, 3), "b": f(3)}),
    case("convT2d-group-dilation-asym", node("ConvTranspose", ["x", "w"], group=2, dilations=[2, 1],
                                             pads=[0, 2, 1, 0], strides=[1, 2]),
         {"x": X4}, {"w": f(4, 3, 3, 2)}),
    case("convT2d-output-shape", node("ConvTranspose", ["x", "w", "b"], strides=[2, 2], output_shape=[14, 15]),
         {"x": X4}, {"w": f(4, 2, 3, 3), "b": f(2)}),
    case("convT2d-same-upper", node("ConvTranspose", ["x", "w"], strides=[2, 2], auto_pad="SAME_UPPER"),
         {"x": X4}, {"w": f(4, 2, 4, 3)}),
    case("convT1d", node("ConvTranspose", ["x", "w"], strides=[3], pads=[1, 0]), {"x": f(2, 3, 5)},
         {"w": f(3, 2, 4)}),
    # Gemm / MatMul
    case("gemm-plain", node("Gemm", ["a", "w"]), {"a": f(5, 4)}, {"w": f(4, 3)}),
    case("gemm-transB-bias-vector", node("Gemm", ["a", "w", "c"], transB=1), {"a": f(5, 4)},
         {"w": f(3, 4), "c": f(3)}),
    case("gemm-transA-alpha-beta-matrixC", node("Gemm", ["a", "w", "c"], transA=1, alpha=0.5, beta=2.0),
         {"a": f(4, 5)}, {"w": f(4, 3), "c": f(5, 3)}),
    case("gemm-scalar-C", node("Gemm", ["a", "w", "c"], transA=1, transB=1, beta=-1.0), {"a": f(4, 5)},
         {"w": f(3, 4), "c": f(1)}),
    case("matmul-3d-by-2d", node("MatMul", ["a", "w"]), {"a": f(2, 3, 4)}, {"w": f(4, 5)}),
    case("matmul-2d-weight-left-of-3d", node("MatMul", ["w", "a"]), {"a": f(2, 4, 5)}, {"w": f(3, 4)}),
    case("matmul-broadcast-4d", node("MatMul", ["a", "b"]), {"a": f(2, 1, 3, 4), "b": f(3, 4, 2)}),
    case("matmul-vector", node("MatMul", ["a", "w"]), {"a": f(4)}, {"w": f(4, 3)}),
    # elementwise
    case("add-broadcast", node("Add", ["a", "b"]), {"a": f(2, 3, 4)}, {"b": f(3, 1)}),
    case("sub", node("Sub", ["a", "b"]), {"a": f(2, 3), "b": f(2, 3)}),
    case("mul-scalar", node("Mul", ["a", "b"]), {"a": f(2, 3)}, {"b": np.float32(1.5)}),
    case("div", node("Div", ["a", "b"]), {"a": f(2, 3), "b": pos(3)}),
    case("div-int-truncates", node("Div", ["a", "b"]), {"a": i64(-7, 7, 5), "b": i64(2, -2, 5)},
         outputs={"y": TensorProto.INT64}),
    *[case(op.lower(), node(op, ["x"]), {"x": pos(3, 4) if op in ("Sqrt", "Log") else f(3, 4)})
      for op in ("Relu", "Sigmoid", "Tanh", "Erf", "Sqrt", "Exp", "Log", "Neg", "Abs", "Reciprocal",
                 "Identity", "Floor", "Ceil")],
    case("leakyrelu", node("LeakyRelu", ["x"], alpha=0.2), {"x": f(3, 4)}),
    case("gelu", node("Gelu", ["x"]), {"x": f(3, 4)}, opset=20),
    case("gelu-tanh", node("Gelu", ["x"], approximate="tanh"), {"x": f(3, 4)}, opset=20),
    case("gelu-erf-decomposition", [node("Div", ["x", "sqrt2"], ("d",)), node("Erf", ["d"], ("e",)),
                                    node("Add", ["e", "one"], ("e1",)), node("Mul", ["x", "e1"], ("m",)),
                                    node("Mul", ["m", "half"])],
         {"x": f(3, 4)}, {"sqrt2": np.float32(np.sqrt(2)), "one": np.float32(1), "half": np.float32(0.5)}),
    case("gelu-tanh-decomposition-pow", [node("Pow", ["x", "three"], ("p",)), node("Mul", ["p", "c"], ("q",)),
                                         node("Add", ["x", "q"], ("s",)), node("Tanh", ["s"], ("t",)),
                                         node("Mul", ["x", "t"])],
         {"x": f(3, 4)}, {"three": np.float32(3), "c": np.float32(0.044715)}),
    case("pow-sqrt", [node("Pow", ["x", "two"], ("p",)), node("Sqrt", ["p"])], {"x": f(3, 4)},
         {"two": np.float32(2)}),
    case("softmax", node("Softmax", ["x"], axis=1), {"x": f(2, 3, 4)}),
    case("softmax-opset11-flattens", node("Softmax", ["x"], axis=1), {"x": f(2, 3, 4)}, opset=11),
    case("logsoftmax", node("LogSoftmax", ["x"]), {"x": f(2, 5)}),
    case("clip", node("Clip", ["x", "lo", "hi"]), {"x": f(3, 4)},
         {"lo": np.float32(-0.5), "hi": np.float32(0.7)}),
    case("clip-max-only", node("Clip", ["x", "", "hi"]), {"x": f(3, 4)}, {"hi": np.float32(0.1)}),
    case("clip-opset6-attrs", node("Clip", ["x"], min=-0.2, max=0.3), {"x": f(3, 4)}, opset=6),
    case("where-equal", [node("Equal", ["a", "b"], ("c",)), node("Where", ["c", "x", "z"])],
         {"a": i64(1, 2, 3), "b": i64(1, 0, 3), "x": f(3), "z": f(3)}),
    case("less-greater-cast", [node("Less", ["a", "b"], ("l",)), node("Cast", ["l"], to=1),
                               node("Greater", ["a", "b"], ("g",)), node("Cast", ["g"], ("z",), to=1)],
         {"a": f(5), "b": f(5)}, outputs=("y", "z")),
    # pooling and normalisation
    case("maxpool", node("MaxPool", ["x"], kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1]), {"x": X4}),
    case("maxpool-asym-ceil", node("MaxPool", ["x"], kernel_shape=[2, 3], strides=[2, 2], pads=[0, 1, 1, 0],
                                   ceil_mode=1), {"x": X4}),
    case("maxpool-dilations", node("MaxPool", ["x"], kernel_shape=[2, 2], dilations=[2, 2]), {"x": X4}),
    case("maxpool-same-upper", node("MaxPool", ["x"], kernel_shape=[2, 2], strides=[2, 2],
                                    auto_pad="SAME_UPPER"), {"x": X4}),
    case("maxpool1d", node("MaxPool", ["x"], kernel_shape=[3], strides=[2]), {"x": f(2, 3, 10)}),
    case("avgpool", node("AveragePool", ["x"], kernel_shape=[2, 2], strides=[2, 2]), {"x": X4}),
    case("avgpool-pads-exclude", node("AveragePool", ["x"], kernel_shape=[3, 3], strides=[2, 2],
                                      pads=[1, 0, 0, 2]), {"x": X4}),
    case("avgpool-pads-include", node("AveragePool", ["x"], kernel_shape=[3, 3], strides=[2, 2],
                                      pads=[1, 1, 1, 1], count_include_pad=1), {"x": X4}),
    case("avgpool-ceil", node("AveragePool", ["x"], kernel_shape=[2, 2], strides=[2, 2], ceil_mode=1),
         {"x": X4}),
    case("avgpool-ceil-include-pad", node("AveragePool", ["x"], kernel_shape=[3, 3], strides=[2, 2],
                                          pads=[1, 1, 1, 1], ceil_mode=1, count_include_pad=1), {"x": f(1, 2, 8, 8)}),
    case("avgpool-same-lower", node("AveragePool", ["x"], kernel_shape=[2, 2], auto_pad="SAME_LOWER"),
         {"x": X4}),
    case("avgpool1d-pads", node("AveragePool", ["x"], kernel_shape=[3], strides=[2], pads=[1, 1]),
         {"x": f(2, 3, 10)}),
    case("global-avg-max-pool", [node("GlobalAveragePool", ["x"], ("y",)), node("GlobalMaxPool", ["x"], ("z",))],
         {"x": X4}, outputs=("y", "z")),
    case("batchnorm", node("BatchNormalization", ["x", "s", "b", "m", "v"], epsilon=1e-3), {"x": X4},
         {"s": f(4), "b": f(4), "m": f(4), "v": pos(4)}),
    case("layernorm-last", node("LayerNormalization", ["x", "s", "b"]), {"x": f(2, 3, 8)},
         {"s": f(8), "b": f(8)}),
    case("layernorm-axis1-no-bias", node("LayerNormalization", ["x", "s"], axis=1, epsilon=1e-3),
         {"x": f(2, 3, 4)}, {"s": f(3, 4)}),
    case("reducemean-attr", node("ReduceMean", ["x"], axes=[1, -1], keepdims=0), {"x": f(2, 3, 4)}, opset=13),
    case("reducemean-input", node("ReduceMean", ["x", "axes"]), {"x": f(2, 3, 4)}, {"axes": i64(2)}),
    case("reducemean-all", node("ReduceMean", ["x"]), {"x": f(2, 3, 4)}),
    case("reducesum-noop", node("ReduceSum", ["x"], noop_with_empty_axes=1), {"x": f(2, 3)}),
    case("reducemax-min", [node("ReduceMax", ["x", "axes"], ("y",), keepdims=0),
                           node("ReduceMin", ["x", "axes"], ("z",))], {"x": f(2, 3, 4)}, {"axes": i64(0)},
         outputs=("y", "z")),
    # shapes
    case("reshape-zero-minus-one", node("Reshape", ["x", "s"]), {"x": f(2, 3, 4)}, {"s": i64(0, -1)}),
    case("reshape-tt-modes", node("Reshape", ["x", "s"]), {"x": f(2, 12, 5)}, {"s": i64(0, -1, 4, 5)}),
    case("reshape-allowzero", node("Reshape", ["x", "s"], allowzero=1), {"x": f(0, 3)}, {"s": i64(3, 0)}),
    case("flatten", [node("Flatten", ["x"], ("y",)), node("Flatten", ["x"], ("z",), axis=-1),
                     node("Flatten", ["x"], ("w",), axis=0)], {"x": f(2, 3, 4)}, outputs=("y", "z", "w")),
    case("transpose", [node("Transpose", ["x"], ("y",)), node("Transpose", ["x"], ("z",), perm=[1, 0, 2])],
         {"x": f(2, 3, 4)}, outputs=("y", "z")),
    case("concat", node("Concat", ["a", "b", "c"], axis=1), {"a": f(2, 1, 3), "b": f(2, 4, 3)},
         {"c": f(2, 2, 3)}),
    case("split-sizes-input", node("Split", ["x", "s"], ("y", "z"), axis=1), {"x": f(2, 4)}, {"s": i64(1, 3)},
         outputs=("y", "z")),
    case("split-num-outputs-uneven", node("Split", ["x"], ("y", "z", "w"), num_outputs=3), {"x": f(8, 2)},
         outputs=("y", "z", "w")),
    case("split-equal-opset13", node("Split", ["x"], ("y", "z"), axis=-1), {"x": f(3, 4)}, outputs=("y", "z"),
         opset=13),
    case("split-attr-opset11", node("Split", ["x"], ("y", "z"), split=[3, 1], axis=1), {"x": f(2, 4)},
         outputs=("y", "z"), opset=11),
    case("slice", node("Slice", ["x", "st", "en", "ax", "sp"]), {"x": f(4, 6, 5)},
         {"st": i64(1, -4), "en": i64(I64_MAX, -1), "ax": i64(0, 2), "sp": i64(2, 1)}),
    case("slice-negative-step", node("Slice", ["x", "st", "en", "ax", "sp"]), {"x": f(4, 6)},
         {"st": i64(-1, 4), "en": i64(np.iinfo(np.int64).min, 0), "ax": i64(0, 1), "sp": i64(-1, -2)}),
    case("slice-default-axes", node("Slice", ["x", "st", "en"]), {"x": f(4, 6)}, {"st": i64(1), "en": i64(3)}),
    case("slice-opset9-attrs", node("Slice", ["x"], starts=[1, 0], ends=[3, 10], axes=[1, 0]), {"x": f(4, 6)},
         opset=9),
    case("squeeze", [node("Squeeze", ["x", "ax"], ("y",)), node("Squeeze", ["x"], ("z",))], {"x": f(1, 3, 1, 2)},
         {"ax": i64(-2)}, outputs=("y", "z")),
    case("squeeze-opset11", node("Squeeze", ["x"], axes=[0]), {"x": f(1, 3)}, opset=11),
    case("unsqueeze", node("Unsqueeze", ["x", "ax"]), {"x": f(3, 4)}, {"ax": i64(-1, 0)}),
    case("unsqueeze-opset11", node("Unsqueeze", ["x"], axes=[0, 3]), {"x": f(3, 4)}, opset=11),
    case("pad-constant-value-negative", node("Pad", ["x", "p", "v"]), {"x": f(2, 3, 4)},
         {"p": i64(0, 1, -1, 1, 2, 0), "v": np.float32(1.5)}),
    case("pad-axes-input", node("Pad", ["x", "p", "", "ax"]), {"x": f(2, 3, 4)}, {"p": i64(1, 2, 0, 3),
                                                                                  "ax": i64(-1, 1)}),
    case("pad-reflect", node("Pad", ["x", "p"], mode="reflect"), {"x": X4}, {"p": i64(0, 0, 1, 2, 0, 0, 2, 1)}),
    case("pad-edge", node("Pad", ["x", "p"], mode="edge"), {"x": f(2, 3, 4)}, {"p": i64(0, 1, 2, 0, 2, 1)}),
    case("pad-opset2-attrs", node("Pad", ["x"], pads=[0, 1, 0, 2], value=0.5), {"x": f(2, 3)}, opset=10),
    case("expand", node("Expand", ["x", "s"]), {"x": f(3, 1)}, {"s": i64(2, 1, 4)}),
    case("dropout", [node("Dropout", ["x"], ("y",)), node("Dropout", ["x", "r"], ("z", "mask"))],
         {"x": f(3, 4)}, {"r": np.float32(0.3)}, outputs={"y": 1, "z": 1, "mask": TensorProto.BOOL}),
    case("constants", [helper.make_node("Constant", [], ["c1"], value=helper.make_tensor("t", 1, [2], [1, 2])),
                       helper.make_node("Constant", [], ["c2"], value_float=0.5),
                       helper.make_node("Constant", [], ["c3"], value_ints=[0, -1]),
                       node("Add", ["x", "c1"], ("a",)), node("Mul", ["a", "c2"], ("m",)),
                       node("Reshape", ["m", "c3"])], {"x": f(3, 1, 2)}),
    case("shape-gather-concat-reshape", [
        node("Shape", ["x"], ("s",)), node("Gather", ["s", "zero"], ("n",), axis=0),
        node("Unsqueeze", ["n", "zero1"], ("n1",)), node("Concat", ["n1", "minus1"], ("shape",), axis=0),
        node("Reshape", ["x", "shape"], ("y",)), node("Shape", ["x"], ("z",), start=1, end=-1)],
        {"x": f(2, 3, 4)}, {"zero": np.int64(0), "zero1": i64(0), "minus1": i64(-1)},
        outputs={"y": TensorProto.FLOAT, "z": TensorProto.INT64}),
    case("gather-2d-negative", node("Gather", ["x", "i"], axis=1), {"x": f(2, 5, 3)}, {"i": i64(0, -1, 2, 2)
                                                                                        .reshape(2, 2)}),
    case("cast-roundtrip", [node("Cast", ["x"], ("i",), to=TensorProto.INT64), node("Cast", ["i"], to=1)],
         {"x": f(3, 4) * 3}),
    case("constant-of-shape", [node("Shape", ["x"], ("s",)),
                               node("ConstantOfShape", ["s"], ("c",), value=helper.make_tensor("v", 1, [1], [2.5])),
                               node("Add", ["x", "c"])], {"x": f(2, 3)}),
]


@pytest.mark.parametrize("nodes, inputs, inits, outputs, opset", CASES)
def test_matches_onnxruntime(nodes, inputs, inits, outputs, opset):
    model = make_model(nodes, inputs, outputs, inits, opset)
    expected = run_ort(model, inputs)
    module = OnnxModule(model).eval()
    with torch.no_grad():
        got = module(*[torch.from_numpy(np.asarray(v)) for v in inputs.values()])
    got = got if isinstance(got, tuple) else (got,)
    assert len(got) == len(expected)
    for g, e in zip(got, expected, strict=True):
        assert tuple(g.shape) == e.shape
        np.testing.assert_allclose(g.numpy(), e, rtol=1e-5, atol=1e-5)


def test_unsupported_op_names_type_and_node():
    model = make_model([helper.make_node("TopK", ["x", "k"], ["y", "i"], name="my_topk")], {"x": f(3, 4)},
                       {"y": 1, "i": TensorProto.INT64}, {"k": i64(2)})
    with pytest.raises(UserError, match="TopK.*my_topk"):
        OnnxModule(model)


def test_unsupported_extra_output_is_refused():
    model = make_model([helper.make_node("MaxPool", ["x"], ["y", "idx"], name="pool", kernel_shape=[2, 2])],
                       {"x": X4}, {"y": 1, "idx": TensorProto.INT64})
    with pytest.raises(UserError, match="MaxPool.*'pool'.*first 1 output"):
        OnnxModule(model)


def conv_bn_net() -> onnx.ModelProto:
    """Sub mean -> Conv -> BatchNorm -> Relu -> GlobalAveragePool -> Flatten -> Gemm -> Mul scale,
    weights named with dots."""
    nodes = [node("Sub", ["x", "mean"], ("n",)),
             node("Conv", ["n", "conv.weight", "conv.bias"], ("c",), pads=[1, 1, 1, 1]),
             node("BatchNormalization", ["c", "bn.weight", "bn.bias", "bn.running_mean", "bn.running_var"], ("b",)),
             node("Relu", ["b"], ("r",)), node("GlobalAveragePool", ["r"], ("g",)), node("Flatten", ["g"], ("h",)),
             node("Gemm", ["h", "fc.weight", "fc.bias"], ("z",), transB=1), node("Mul", ["z", "scale"])]
    inits = {"conv.weight": f(6, 3, 3, 3), "conv.bias": f(6), "bn.weight": pos(6), "bn.bias": f(6),
             "bn.running_mean": f(6), "bn.running_var": pos(6), "fc.weight": f(4, 6), "fc.bias": f(4),
             "scale": np.float32(2.0), "mean": f(1, 3, 1, 1)}
    return make_model(nodes, {"x": f(2, 3, 8, 8)}, ["y"], inits)


def test_parameters_are_keyed_by_onnx_name_and_receive_gradients():
    module = OnnxModule(conv_bn_net())
    params = module.onnx_parameters()
    assert set(params) == {"conv.weight", "conv.bias", "bn.weight", "bn.bias", "bn.running_mean",
                           "bn.running_var", "fc.weight", "fc.bias", "scale", "mean"}
    frozen = {name for name, p in params.items() if not p.requires_grad}
    assert frozen == {"bn.running_mean", "bn.running_var", "scale", "mean"}
    module(torch.from_numpy(f(2, 3, 8, 8))).square().sum().backward()
    for name, p in params.items():
        if p.requires_grad:
            assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_write_back_round_trip_after_training_step():
    model = conv_bn_net()
    module = OnnxModule(model)
    x = f(2, 3, 8, 8)
    opt = torch.optim.SGD(module.parameters(), lr=0.1)
    module(torch.from_numpy(x)).sum().backward()
    opt.step()
    trained = write_back(module, model)
    onnx.checker.check_model(trained, full_check=True)
    assert [n.SerializeToString() for n in trained.graph.node] == [n.SerializeToString() for n in model.graph.node]
    assert [i.name for i in trained.graph.initializer] == [i.name for i in model.graph.initializer]
    changed = {a.name for a, b in zip(trained.graph.initializer, model.graph.initializer, strict=True)
               if a.SerializeToString() != b.SerializeToString()}
    assert changed == {"conv.weight", "conv.bias", "bn.weight", "bn.bias", "fc.weight", "fc.bias"}
    with torch.no_grad():
        expected = module.eval()(torch.from_numpy(x)).numpy()
    (got,) = run_ort(trained, {"x": x})
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)


def test_transform_changes_forward_and_is_written_back():
    model = mlp(R)
    module = OnnxModule(model).eval()
    x = torch.from_numpy(f(4, 8))
    module.set_transform("fc1.weight", lambda w: w * 0.5)
    trained = write_back(module, model)
    (got,) = run_ort(trained, {"x": x.numpy()})
    with torch.no_grad():
        np.testing.assert_allclose(got, module(x).numpy(), rtol=1e-5, atol=1e-5)
    module.set_transform("fc1.weight", None)
    with torch.no_grad():
        np.testing.assert_allclose(run_ort(model, {"x": x.numpy()})[0], module(x).numpy(), rtol=1e-5, atol=1e-5)


def test_unsorted_graph_is_sorted():
    nodes = [node("Relu", ["h"]), node("Neg", ["x"], ("h",))]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", 1, [3])],
                              [helper.make_tensor_value_info("y", 1, [3])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    x = f(3)
    np.testing.assert_array_equal(OnnxModule(model)(torch.from_numpy(x)).numpy(), np.maximum(-x, 0))
