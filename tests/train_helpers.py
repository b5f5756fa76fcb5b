"""Shared helpers for the trainer tests: build small ONNX graphs and run them in ONNX Runtime."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper


def make_model(nodes: list[onnx.NodeProto], inputs: dict[str, np.ndarray], outputs: dict[str, int] | list[str],
               inits: dict[str, np.ndarray] | None = None, opset: int = 18) -> onnx.ModelProto:
    """A model with graph inputs typed from example arrays; ``outputs`` maps names to element types
    (a list means all float); output shapes come from ONNX shape inference where it finds them."""
    if isinstance(outputs, list):
        outputs = dict.fromkeys(outputs, TensorProto.FLOAT)
    graph = helper.make_graph(
        nodes, "test",
        [helper.make_tensor_value_info(k, helper.np_dtype_to_tensor_dtype(v.dtype), v.shape)
         for k, v in inputs.items()],
        [helper.make_tensor_value_info(k, t, None) for k, t in outputs.items()],
        [numpy_helper.from_array(np.asarray(v), k) for k, v in (inits or {}).items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=10)
    inferred = onnx.shape_inference.infer_shapes(model).graph.output
    for out, typed in zip(model.graph.output, inferred, strict=True):
        out.CopyFrom(typed)
    return model


def run_ort(model: onnx.ModelProto, inputs: dict[str, np.ndarray]) -> list[np.ndarray]:
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    opts.intra_op_num_threads = 1
    session = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    return session.run(None, inputs)


def mlp(rng: np.random.Generator, sizes: tuple[int, ...] = (8, 16, 3)) -> onnx.ModelProto:
    """Gemm-ReLU MLP with a dynamic batch: input ``x`` (N, sizes[0]), output ``logits`` (N, sizes[-1])."""
    nodes, inits, prev = [], {}, "x"
    layers = len(sizes) - 1
    for i, (a, b) in enumerate(zip(sizes, sizes[1:])):
        inits[f"fc{i}.weight"] = rng.normal(0, 1 / np.sqrt(a), (b, a)).astype(np.float32)
        inits[f"fc{i}.bias"] = rng.normal(0, 0.1, b).astype(np.float32)
        y = "logits" if i == layers - 1 else f"z{i}"
        nodes.append(helper.make_node("Gemm", [prev, f"fc{i}.weight", f"fc{i}.bias"], [y], name=f"fc{i}",
                                      transB=1))
        if i < layers - 1:
            prev = f"h{i}"
            nodes.append(helper.make_node("Relu", [y], [prev], name=f"relu{i}"))
    graph = helper.make_graph(
        nodes, "mlp", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", sizes[0]])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", sizes[-1]])],
        [numpy_helper.from_array(v, k) for k, v in inits.items()])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=10)


def perturbed(model: onnx.ModelProto, rng: np.random.Generator, noise: float = 0.5) -> onnx.ModelProto:
    """A copy of ``model`` with Gaussian noise added to every initializer."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    for init in out.graph.initializer:
        w = numpy_helper.to_array(init)
        init.CopyFrom(numpy_helper.from_array((w + rng.normal(0, noise, w.shape)).astype(np.float32), init.name))
    return out


def finetune_files(tmp_path: Path) -> dict[str, Path]:
    """Teacher MLP 8-32-4, a noisy student, 400 labelled train samples and 100 unlabelled val ones, on disk."""
    rng = np.random.default_rng(3)
    teacher = mlp(rng, (8, 32, 4))
    x = rng.standard_normal((500, 8)).astype(np.float32)
    y = run_ort(teacher, {"x": x})[0].argmax(1)
    paths = {name: tmp_path / name for name in ("teacher.onnx", "student.onnx", "train.npz", "val.npz")}
    onnx.save(teacher, paths["teacher.onnx"])
    onnx.save(perturbed(teacher, rng), paths["student.onnx"])
    np.savez(paths["train.npz"], x=x[:400], y=y[:400])
    np.savez(paths["val.npz"], x=x[400:])  # no labels: agreement with the teacher
    return paths


def finetune_args(files: dict[str, Path], out: Path, *extra: str) -> list[str]:
    """``ttcompile finetune`` arguments on ``finetune_files``: fast settings, one thread, no bars."""
    return ["finetune", str(files["student.onnx"]), "--teacher", str(files["teacher.onnx"]),
            "--train", str(files["train.npz"]), "--val", str(files["val.npz"]), "-o", str(out),
            "--lr", "0.01", "--batch-size", "50", "--threads", "1", "--quiet", *extra]


def distillation_task():
    """Teacher MLP 8-32-4, labels = its argmax on Gaussian inputs, a noisy copy as the student:
    (teacher, student, train Dataset of 400, val Dataset of 200)."""
    from ttcompile.models.data import Dataset

    rng = np.random.default_rng(1)
    teacher = mlp(rng, (8, 32, 4))
    x = rng.standard_normal((600, 8)).astype(np.float32)
    y = run_ort(teacher, {"x": x})[0].argmax(1)
    student = perturbed(teacher, rng)
    return teacher, student, Dataset(x[:400], y[:400], "train"), Dataset(x[400:], y[400:], "val")


def weights(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    """Initializers by name."""
    return {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}


def assert_same_run(out: onnx.ModelProto, history, reference: onnx.ModelProto, ref_history) -> None:
    """A resumed run ended where the uninterrupted one did: same epochs, validation scores and weights."""
    assert [e.epoch for e in history.epochs] == [e.epoch for e in ref_history.epochs]
    assert [e.val for e in history.epochs] == [e.val for e in ref_history.epochs]
    assert history.initial_val == ref_history.initial_val
    for name, w in weights(out).items():
        np.testing.assert_allclose(w, weights(reference)[name], rtol=1e-5, atol=1e-6, err_msg=name)
