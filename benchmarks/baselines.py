"""Accuracy of the committed MNIST models on the full 10k MNIST test set with ONNX Runtime CPU.

    python benchmarks/baselines.py

Prints a markdown table and writes benchmarks/results/baselines.{json,md}. ``params`` counts every
float stored in the graph's initializers; ``layer params`` only the weights and biases of the
Conv/Gemm/MatMul nodes (what ttcompile compresses). ``command`` is the training command from the
model's metrics JSON; ``train time`` its wall-clock training time (on a shared 2-vCPU machine, so
only indicative).
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np
import onnx

from ttcompile.atomic import atomic_path
from ttcompile.benchmark.plot import Pareto, Point, write_pareto
from ttcompile.models.data import load_dataset
from ttcompile.runtime import make_session

ROOT = Path(__file__).resolve().parent.parent
MODELS = {
    "LeNet-5": ROOT / "models" / "lenet5_mnist.onnx",
    "LeNet-300-100": ROOT / "models" / "lenet300_mnist.onnx",
    "ResNet-20": ROOT / "models" / "resnet20_mnist.onnx",
    "ResNet-56": ROOT / "models" / "resnet56_mnist.onnx",
}
RESULTS = ROOT / "benchmarks" / "results"
LAYER_OPS = ("Conv", "Gemm", "MatMul")
BATCH = 1000


def count_params(model: onnx.ModelProto) -> tuple[int, int]:
    """(floats in all initializers, floats in Conv/Gemm/MatMul weight and bias initializers)."""
    floats = {init.name: int(np.prod(init.dims)) for init in model.graph.initializer
              if init.data_type in (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.DOUBLE)}
    layer = {name for node in model.graph.node if node.op_type in LAYER_OPS for name in node.input[1:]}
    return sum(floats.values()), sum(n for name, n in floats.items() if name in layer)


def evaluate(path: Path) -> dict:
    """Test accuracy on MNIST test (10k) and size figures of one ONNX model."""
    model = onnx.load(path)
    params, layer_params = count_params(model)
    (inp,) = model.graph.input
    sample_shape = tuple(d.dim_value for d in inp.type.tensor_type.shape.dim[1:])
    test = load_dataset("mnist:test", image_shape=sample_shape)
    session = make_session(str(path), "cpu")
    start = time.perf_counter()
    logits = [session.run(None, {inp.name: test.x[i:i + BATCH]})[0] for i in range(0, len(test.x), BATCH)]
    seconds = time.perf_counter() - start
    acc = float((np.concatenate(logits).argmax(1) == test.y).mean())
    metrics = json.loads(path.with_suffix(".json").read_text())
    return {
        "file": str(path.relative_to(ROOT)),
        "file_bytes": path.stat().st_size,
        "params": params,
        "layer_params": layer_params,
        "test_acc": acc,
        "n_test": len(test.y),
        "torch_test_acc": metrics["test_acc"],
        "eval_seconds": round(seconds, 2),
        "train_seconds": metrics["train_seconds"],
        "command": metrics["command"],
    }


def pareto(results: dict[str, dict]) -> Pareto:
    """Test accuracy vs params of the committed models, one front across them."""
    points = [Point(r["params"], 100 * r["test_acc"], name, label=name) for name, r in results.items()]
    return Pareto(points, "params (whole network)", "MNIST test accuracy (%, ONNX Runtime)",
                  "Baselines: committed MNIST models")


def markdown(results: dict[str, dict]) -> str:
    lines = ["| model | params | layer params | MNIST test acc (ORT CPU, 10k) | file | train time | command |",
             "|---|---:|---:|---:|---:|---:|---|"]
    for name, r in results.items():
        lines.append(f"| {name} | {r['params']:,} | {r['layer_params']:,} | {100 * r['test_acc']:.2f} % | "
                     f"{r['file_bytes'] / 1e6:.2f} MB | {r['train_seconds'] / 60:.1f} min | `{r['command']}` |")
    return "\n".join(lines) + "\n"


def main() -> int:
    results = {name: evaluate(path) for name, path in MODELS.items()}
    table = markdown(results)
    print(table, end="")
    RESULTS.mkdir(parents=True, exist_ok=True)
    with atomic_path(RESULTS / "baselines.json") as tmp:
        tmp.write_text(json.dumps(results, indent=2) + "\n")
    with atomic_path(RESULTS / "baselines.md") as tmp:
        tmp.write_text("# Baselines: committed MNIST models\n\n"
                       "Produced by `python benchmarks/baselines.py`.\n\n" + table)
    write_pareto(RESULTS / "baselines.png", pareto(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
