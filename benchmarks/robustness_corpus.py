"""The hostile input files of ``benchmarks/robustness.py``: models (damaged, odd types, odd graphs),
external data, plans, analyses and data files, written into a folder (``robustness_cases`` makes the
runs that use them)."""

from __future__ import annotations

import json
import os
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

ANY = (0, 2, 3)  # clean exits: success, bad input, failed verification


@dataclass
class Case:
    name: str
    kind: str  # class of hostile input
    argv: list[str]
    expect: tuple[int, ...] = ANY
    interrupt_after: float | None = None  # seconds, then SIGINT (run as a subprocess)
    outputs: list[str] = field(default_factory=list)  # files a successful run may leave in {out}


def _model(nodes, inputs, outputs, inits, opset=17, ir=8, domains=()) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, "g", inputs, outputs, [numpy_helper.from_array(a, n) for n, a in inits.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset),
                                                    *(helper.make_opsetid(d, 1) for d in domains)])
    model.ir_version = ir
    return model


def mlp(seed=0, dtype=np.float32, batch="N", n_in=64) -> onnx.ModelProto:
    """x (N, 64) -> Gemm 64->96 -> Relu -> MatMul 96->32 -> y."""
    rng = np.random.default_rng(seed)
    inits = {"W1": (rng.standard_normal((96, n_in)) / 8).astype(dtype), "B1": np.zeros(96, dtype),
             "W2": (rng.standard_normal((96, 32)) / 10).astype(dtype)}
    et = helper.np_dtype_to_tensor_dtype(np.dtype(dtype))
    nodes = [helper.make_node("Gemm", ["x", "W1", "B1"], ["h"], name="fc1", transB=1),
             helper.make_node("Relu", ["h"], ["r"], name="relu"),
             helper.make_node("MatMul", ["r", "W2"], ["y"], name="fc2")]
    return _model(nodes, [helper.make_tensor_value_info("x", et, [batch, n_in])],
                  [helper.make_tensor_value_info("y", et, [batch, 32])], inits)


def conv(dtype=np.float32, bias="const", spatial=(8, 8), batch="N") -> onnx.ModelProto:
    rng = np.random.default_rng(0)
    et = helper.np_dtype_to_tensor_dtype(np.dtype(dtype))
    inits, names, inputs = {"W": (rng.standard_normal((16, 8, 3, 3)) / 8).astype(dtype)}, ["x", "W"], []
    if bias == "const":
        inits["B"] = rng.standard_normal(16).astype(dtype)
        names.append("B")
    elif bias == "input":
        inputs.append(helper.make_tensor_value_info("B", et, [16]))
        names.append("B")
    node = helper.make_node("Conv", names, ["y"], name="conv", kernel_shape=[3, 3], pads=[1, 1, 1, 1])
    x = helper.make_tensor_value_info("x", et, [batch, 8, *spatial])
    return _model([node], [x, *inputs], [helper.make_tensor_value_info("y", et, [batch, 16, *spatial])], inits)


def _with(model: onnx.ModelProto, edit) -> onnx.ModelProto:
    m = onnx.ModelProto.FromString(model.SerializeToString())
    edit(m)
    return m


def _set_weight(m: onnx.ModelProto, name: str, fn) -> None:
    for t in m.graph.initializer:
        if t.name == name:
            t.CopyFrom(numpy_helper.from_array(fn(numpy_helper.to_array(t).copy()), name))


def _poke(value):
    def fn(a):
        a.flat[7] = value
        return a
    return fn


def models() -> dict[str, bytes | onnx.ModelProto]:
    base = mlp()
    good = base.SerializeToString()
    rng = np.random.default_rng(1)
    out: dict[str, bytes | onnx.ModelProto] = {"good.onnx": base, "conv.onnx": conv()}
    out["empty.onnx"] = b""
    out["text.onnx"] = b"this is not an onnx model\n"
    out["random.onnx"] = rng.integers(0, 256, 4096, dtype=np.uint8).tobytes()
    out["json.onnx"] = b'{"graph": null}'
    for i, frac in enumerate((0.01, 0.1, 0.3, 0.5, 0.7, 0.9, 0.99)):
        out[f"truncated{i}.onnx"] = good[: int(len(good) * frac)]
    for i in range(12):  # one bit flipped in the serialized model (names, dims, types, weights)
        data = bytearray(good)
        pos = int(rng.integers(0, min(len(data), 600))) if i < 8 else int(rng.integers(0, len(data)))
        data[pos] ^= 1 << int(rng.integers(0, 8))
        out[f"bitflip{i}.onnx"] = bytes(data)
    out["no_nodes.onnx"] = _with(base, lambda m: m.graph.ClearField("node"))
    out["no_layers.onnx"] = _model([helper.make_node("Relu", ["x"], ["y"], name="r")],
                                   [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
                                   [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])], {})
    out["nan_weight.onnx"] = _with(base, lambda m: _set_weight(m, "W1", _poke(np.nan)))
    out["inf_weight.onnx"] = _with(base, lambda m: _set_weight(m, "W2", _poke(np.inf)))
    out["nan_all.onnx"] = _with(out["nan_weight.onnx"], lambda m: _set_weight(m, "W2", _poke(np.nan)))
    out["float64.onnx"] = mlp(dtype=np.float64)
    out["float64_conv.onnx"] = conv(dtype=np.float64)
    out["float16.onnx"] = mlp(dtype=np.float16)
    out["conv_bias_input.onnx"] = conv(bias="input")
    out["conv_dynamic_hw.onnx"] = conv(spatial=("H", "W"))
    out["dims_1e12.onnx"] = mlp(batch=10**12)
    out["batch_1.onnx"] = mlp(batch=1)
    out["custom_domain.onnx"] = _with(base, lambda m: (
        m.graph.node.append(helper.make_node("Mystery", ["y"], ["z"], name="myst", domain="com.acme")),
        m.opset_import.append(helper.make_opsetid("com.acme", 1)),
        m.graph.output[0].CopyFrom(helper.make_tensor_value_info("z", TensorProto.FLOAT, ["N", 32]))))
    out["opset30.onnx"] = _with(base, lambda m: m.opset_import[0].__setattr__("version", 30))
    out["ir_version_99.onnx"] = _with(base, lambda m: m.__setattr__("ir_version", 99))
    out["duplicate_names.onnx"] = _with(base, lambda m: m.graph.node[2].__setattr__("name", "fc1"))
    out["bfloat16_input.onnx"] = _with(base, lambda m: (
        m.graph.node.insert(0, helper.make_node("Cast", ["xb"], ["x"], name="cast", to=TensorProto.FLOAT)),
        m.graph.input[0].CopyFrom(helper.make_tensor_value_info("xb", TensorProto.BFLOAT16, ["N", 64]))))
    out["bad_utf8_name.onnx"] = good.replace(b"fc1", b"f\xff1")
    out["shared_weight.onnx"] = _with(base, lambda m: (
        m.graph.node.append(helper.make_node("MatMul", ["r", "W2"], ["y2"], name="fc3")),
        m.graph.output.append(helper.make_tensor_value_info("y2", TensorProto.FLOAT, ["N", 32]))))
    out["weight_is_input.onnx"] = _with(base, lambda m: m.graph.input.append(
        helper.make_tensor_value_info("W2", TensorProto.FLOAT, [96, 32])))
    return out


def external(folder: Path) -> list[str]:
    """A model with its weights in ``w.bin``, and copies whose external-data entries point elsewhere."""
    model = mlp()
    onnx.save(model, folder / "ext_ok.onnx", save_as_external_data=True, all_tensors_to_one_file=True,
              location="ext_ok.bin", size_threshold=0)
    proto = onnx.load(folder / "ext_ok.onnx", load_external_data=False)
    (folder / "outside").mkdir(exist_ok=True)
    (folder / "outside" / "secret.bin").write_bytes(os.urandom(64 * 96 * 4 + 4096))
    os.symlink(folder / "outside" / "secret.bin", folder / "link_out.bin")
    (folder / "ext_dir.bin").mkdir(exist_ok=True)
    variants = {
        "ext_parent": {"location": "../in/outside/secret.bin"},
        "ext_absolute": {"location": str(folder / "outside" / "secret.bin")},
        "ext_symlink_out": {"location": "link_out.bin"},
        "ext_missing": {"location": "no_such.bin"},
        "ext_directory": {"location": "ext_dir.bin"},
        "ext_offset_past_end": {"offset": str(10**9)},
        "ext_length_past_end": {"length": str(10**9)},
        "ext_negative_offset": {"offset": "-5"},
        "ext_devnull": {"location": "/dev/zero"},
    }
    names = ["ext_ok.onnx"]
    for name, change in variants.items():
        p = onnx.ModelProto.FromString(proto.SerializeToString())
        t = p.graph.initializer[0]
        entries = {e.key: e.value for e in t.external_data}
        entries.update(change)
        del t.external_data[:]
        for k, v in entries.items():
            t.external_data.add(key=k, value=v)
        (folder / f"{name}.onnx").write_bytes(p.SerializeToString())
        names.append(f"{name}.onnx")
    return names


def npz(folder: Path) -> list[str]:
    rng = np.random.default_rng(0)
    x = rng.standard_normal((320, 64)).astype(np.float32)
    files = {
        "data_ok.npz": {"x": x, "y": np.arange(320) % 32},
        "data_no_x.npz": {"z": x},
        "data_strings.npz": {"x": np.array(["a", "b"])},
        "data_empty.npz": {"x": np.zeros((0, 64), np.float32)},
        "data_nan.npz": {"x": np.full((4, 64), np.nan, np.float32)},
        "data_y_shape.npz": {"x": x, "y": np.zeros((3, 2), np.int64)},
        "data_y_float.npz": {"x": x, "y": np.zeros(320)},
        "data_wrong_shape.npz": {"x": rng.standard_normal((8, 5)).astype(np.float32)},
        "data_scalar.npz": {"x": np.float32(3.0)},
    }
    for name, arrays in files.items():
        np.savez(folder / name, **arrays)
    np.save(folder / "data_single.npy", x)
    (folder / "data_not_zip.npz").write_bytes(b"PK\x03\x04 but not really a zip")
    with zipfile.ZipFile(folder / "data_object.npz", "w") as zf:  # a pickled object array
        with zf.open("x.npy", "w") as f:
            np.lib.format.write_array(f, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with zipfile.ZipFile(folder / "data_header_1e9.npz", "w") as zf:  # claims 10^9 samples, holds 64 values
        with zf.open("x.npy", "w") as f:
            np.lib.format.write_array_header_1_0(f, {"descr": "<f4", "fortran_order": False, "shape": (10**9, 64)})
            f.write(bytes(256))
    shape = (1200 * 1024 * 1024 // 256, 64)  # 1.2 GB of zeros in about 5 MB
    with zipfile.ZipFile(folder / "data_bomb.npz", "w", compression=zipfile.ZIP_DEFLATED, compresslevel=1) as zf:
        with zf.open("x.npy", "w", force_zip64=True) as f:
            np.lib.format.write_array_header_1_0(f, {"descr": "<f4", "fortran_order": False, "shape": shape})
            chunk, left = bytes(1 << 22), shape[0] * 256
            while left > 0:
                f.write(chunk[: min(left, len(chunk))])
                left -= len(chunk)
    return [*files, "data_single.npy", "data_not_zip.npz", "data_object.npz", "data_header_1e9.npz",
            "data_bomb.npz"]


def plans(folder: Path, plan: dict) -> list[str]:
    """``plan`` is a valid plan of good.onnx; every file below breaks it in one way."""
    def edit(fn):
        p = json.loads(json.dumps(plan))
        fn(p)
        return json.dumps(p)

    def lay(key, value, i=0):
        return edit(lambda p: p["layers"][i].__setitem__(key, value))

    def attr(key, value, i=0):
        return edit(lambda p: p["layers"][i]["layer"].__setitem__(key, value))

    texts = {
        "null": "null", "list": "[]", "object": "{}", "string": '"plan"', "number": "5", "true": "true",
        "deep_list": "[" * 100000 + "]" * 100000, "deep_object": '{"a":' * 100000 + "1" + "}" * 100000,
        "not_json": "{version: 1", "nan_literal": json.dumps(plan).replace('"version": 1', '"version": NaN'),
        "version2": edit(lambda p: p.__setitem__("version", 2)),
        "layers_null": edit(lambda p: p.__setitem__("layers", None)),
        "layers_dict": edit(lambda p: p.__setitem__("layers", {})),
        "settings_list": edit(lambda p: p.__setitem__("settings", [])),
        "layer_list": lay("layer", []), "layer_missing": edit(lambda p: p["layers"][0].pop("layer")),
        "ranks_string": lay("ranks", "x"), "ranks_float": lay("ranks", [1.5, 2.0]), "ranks_zero": lay("ranks", [0]),
        "ranks_huge": lay("ranks", [10**9] * 3), "ranks_nested": lay("ranks", [[1]]),
        "ranks_bool": lay("ranks", [True, True, True]),
        "modes_null": lay("modes", None), "modes_garbage": lay("modes", {"in": "x", "out": [0]}),
        "modes_wrong_product": lay("modes", {"in": [7, 9], "out": [8, 12]}),
        "action_bogus": lay("action", "explode"), "format_bogus": lay("format", "nope"),
        "format_null": lay("format", None), "format_number": lay("format", 3),
        "options_garbage": lay("options", {"direction": "sideways", "merge": 99}), "options_list": lay("options", []),
        "params_string": lay("params", "many"), "error_string": lay("error", "small"),
        "alpha_1000": edit(lambda p: p["layers"][0]["layer"]["attrs"].__setitem__("alpha", 1000.0)),
        "transB_flipped": edit(lambda p: p["layers"][0]["layer"]["attrs"].__setitem__("transB", 0)),
        "attrs_null": attr("attrs", None), "weight_shape_changed": attr("weight_shape", [64, 96]),
        "weight_shape_string": attr("weight_shape", "abc"), "name_unknown": attr("name", "nope"),
        "name_number": attr("name", 17), "in_features_edited": attr("in_features", 32),
        "extra_key": attr("surprise", 1), "rows_edited": attr("rows", 3),
        "huge_number": json.dumps(plan).replace('"version": 1', '"version": 1e400'),
    }
    names = []
    for name, text in texts.items():
        (folder / f"plan_{name}.json").write_text(text)
        names.append(f"plan_{name}.json")
    (folder / "plan_bad_utf8.json").write_bytes(json.dumps(plan).encode().replace(b"fc1", b"f\xfe1"))
    return [*names, "plan_bad_utf8.json"]


def analyses(folder: Path, analysis: dict) -> list[str]:
    def edit(fn):
        a = json.loads(json.dumps(analysis))
        fn(a)
        return json.dumps(a)

    texts = {"null": "null", "list": "[]", "deep": "[" * 100000 + "]" * 100000, "string": '"x"',
             "kind_wrong": edit(lambda a: a.__setitem__("kind", "plan")),
             "layers_null": edit(lambda a: a.__setitem__("layers", None)),
             "score_string": edit(lambda a: a["layers"][0].__setitem__("score", "high")),
             "layer_list": edit(lambda a: a["layers"][0].__setitem__("layer", [])),
             "sha_other": edit(lambda a: a.__setitem__("model_sha256", "0" * 64)),
             "calibration_list": edit(lambda a: a.__setitem__("calibration", []))}
    for name, text in texts.items():
        (folder / f"analysis_{name}.json").write_text(text)
    return [f"analysis_{n}.json" for n in texts]
