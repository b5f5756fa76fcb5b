"""Layer discovery: forms found, canonical weights, and the reasons a layer is not compressible."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from ttcompile.errors import UserError
from ttcompile.graph import load_model
from ttcompile.layers import dense_weight, find_layers

from graphs import conv_model, gemm_model, matmul_model


def _load(tmp_path, proto, name="m.onnx", **save_kw):
    path = tmp_path / name
    onnx.save(proto, path, **save_kw)
    return load_model(path)


def test_gemm_canonical_weight_folds_alpha_and_beta(tmp_path):
    proto = gemm_model(n_in=6, n_out=4, trans_b=0, alpha=2.0, beta=3.0, bias="row")
    model = _load(tmp_path, proto)
    (layer,) = find_layers(model)
    w, b = dense_weight(model, layer)
    raw = {t.name: numpy_helper.to_array(t) for t in proto.graph.initializer}
    assert (layer.out_features, layer.in_features, layer.macs) == (4, 6, 24)
    np.testing.assert_allclose(w, 2.0 * raw["W"].T)
    np.testing.assert_allclose(b, 3.0 * raw["C"].reshape(-1), rtol=1e-6)


def test_matmul_rows_and_conv_macs(tmp_path):
    (mm,) = find_layers(_load(tmp_path, matmul_model(n_in=8, n_out=5, lead=("N", 7))))
    assert (mm.rows, mm.macs, mm.params) == (7, 7 * 8 * 5, 40)
    (cv,) = find_layers(_load(tmp_path, conv_model(c_in=4, c_out=6, kernel=(3, 3), spatial=(9, 9), strides=[2, 2])))
    assert cv.out_spatial == (4, 4) and cv.macs == 4 * 4 * 6 * 4 * 9
    assert cv.params == 6 * 4 * 9 + 6


def test_depthwise_and_grouped_conv_skipped(tmp_path):
    (dw,) = find_layers(_load(tmp_path, conv_model(c_in=8, c_out=8, group=8)))
    (gr,) = find_layers(_load(tmp_path, conv_model(c_in=8, c_out=8, group=2), "g.onnx"))
    assert dw.skip == "depthwise conv"
    assert gr.skip == "grouped conv (group=2)"


def _two_users(weight: np.ndarray) -> onnx.ModelProto:
    nodes = [helper.make_node("MatMul", ["x", "W"], ["a"], name="mm1"),
             helper.make_node("MatMul", ["x", "W"], ["b"], name="mm2"),
             helper.make_node("Add", ["a", "b"], ["y"], name="add")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])],
                              [numpy_helper.from_array(weight, "W")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_shared_weight_skipped(tmp_path):
    layers = find_layers(_load(tmp_path, _two_users(np.eye(4, dtype=np.float32))))
    assert [lay.skip for lay in layers] == ["weight W is shared by 2 nodes (mm1, mm2)"] * 2


def test_integer_weight_and_activation_weight_skipped(tmp_path):
    w = numpy_helper.from_array(np.ones((4, 4), np.int32), "W")
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "W"], ["y"], name="mm"),
                               helper.make_node("MatMul", ["x", "x2"], ["z"], name="act")], "g",
                              [helper.make_tensor_value_info("x", TensorProto.INT32, ["N", 4]),
                               helper.make_tensor_value_info("x2", TensorProto.INT32, [4, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.INT32, ["N", 4]),
                               helper.make_tensor_value_info("z", TensorProto.INT32, ["N", 4])], [w])
    layers = find_layers(_load(tmp_path, helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])))
    assert layers[0].skip == "weight dtype INT32 is not floating point"
    assert layers[1].skip == "no constant weight"


def test_external_data_loaded_and_missing_reported(tmp_path):
    proto = matmul_model(n_in=64, n_out=64)
    expected = numpy_helper.to_array(proto.graph.initializer[0]).T
    model = _load(tmp_path, proto, "ext.onnx", save_as_external_data=True, all_tensors_to_one_file=True,
                  location="ext.data", size_threshold=0)
    (layer,) = find_layers(model)
    w, _ = dense_weight(model, layer)
    np.testing.assert_array_equal(w, expected)
    (tmp_path / "ext.data").unlink()
    with pytest.raises(UserError, match="ext.onnx: missing external data"):
        load_model(tmp_path / "ext.onnx")
