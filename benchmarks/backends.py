"""Fine-tuning backends side by side: torch vs onnxruntime-training on the same compressed LeNet-5.

The student is LeNet-5 with every layer TR at uniform rank 15 (TR-SVD of the trained weights, the plan of
``benchmarks/lenet5_mnist.py``'s ``trn15`` row, without its core-space training). Each backend runs
``ttcompile finetune STUDENT --teacher models/lenet5_mnist.onnx --train <first 20,000 mnist:train images>
--val mnist:val --epochs 1 --threads 1 --backend B`` in its own environment: torch in this one, ort in
the torch-free venv given by ``--ort-python`` (``import torch`` is shown to fail there). Measured per run:
wall time and peak RSS of the child process (``/usr/bin/time``), and the test accuracy of the written model
(ONNX Runtime on the 10k MNIST test set). Writes ``benchmarks/results/backends.{md,json}``.

    OMP_NUM_THREADS=1 python benchmarks/backends.py [--ort-python /work/venvs/ort/bin/python]
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import onnx
from lenet5_mnist import MODEL, RESULTS, invocation, test_accuracy, uniform_plan

from ttcompile.benchmark.tables import align
from ttcompile.graph import load_model, to_proto
from ttcompile.models.data import load_dataset
from ttcompile.rewrite.compress import apply_plan
from ttcompile.rewrite.counting import count_params

THREAD_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")
VERSIONS = ("import importlib.metadata as m\nfor p in ('torch', 'onnxruntime', 'onnxruntime-training-cpu', 'onnx'):\n"
            "    try: print(p, m.version(p))\n    except m.PackageNotFoundError: pass")


def build_inputs(work: Path, train_size: int) -> tuple[Path, Path]:
    """The TR r=15 student (no training) and the first ``train_size`` mnist:train samples as .npz."""
    model = load_model(MODEL)
    apply_plan(model, uniform_plan(model, 15), progress=False)
    student = work / "lenet5_tr15.onnx"
    onnx.save(to_proto(model), student)
    train = load_dataset("mnist:train")
    data = work / f"mnist_train_{train_size}.npz"
    np.savez(data, x=train.x[:train_size], y=train.y[:train_size])
    return student, data


def run_child(cmd: list[str], env: dict[str, str], log: Path) -> dict:
    """Run ``cmd`` under ``/usr/bin/time`` (a small parent: a child forked from this process would report
    this process's RSS as its peak); its wall time, peak RSS (MiB) and exit code."""
    stats = log.with_suffix(".time")
    load_before = os.getloadavg()[0]
    with log.open("wb") as out:
        rc = subprocess.run(["/usr/bin/time", "-f", "%M %e", "-o", str(stats), *cmd], stdout=out,
                            stderr=subprocess.STDOUT, env=env).returncode
    rss_kib, wall = stats.read_text().split()[-2:]
    return {"wall_s": float(wall), "peak_rss_mib": round(int(rss_kib) / 1024, 1), "rc": rc,
            "load_avg_1min": [round(load_before, 1), round(os.getloadavg()[0], 1)],
            "output": log.read_text().strip().splitlines()[-4:]}


def probe(python: str, code: str) -> tuple[int, str]:
    done = subprocess.run([python, "-c", code], capture_output=True, text=True)
    return done.returncode, (done.stdout + done.stderr).strip()


def markdown(doc: dict) -> str:
    rows = [[r["backend"], r["python"], f"{100 * r['test_acc']:.2f}", f"{r['wall_s']:.1f}", f"{r['peak_rss_mib']:.0f}",
             f"{r['val_acc']}", " -> ".join(map(str, r["load_avg_1min"]))] for r in doc["rows"]]
    torch_check = doc["ort_torch_import"]
    return "\n".join([
        "# Fine-tuning backends: torch vs onnxruntime-training", "",
        f"`{doc['command']}`", "",
        f"Student: LeNet-5, every layer TR r=15 (TR-SVD, plan of lenet5_mnist.py's trn15 row, {doc['params']} params, "
        f"test accuracy before fine-tuning {100 * doc['student_test_acc']:.2f} %). Each backend: "
        f"`ttcompile finetune` 1 epoch on the first {doc['train_size']} mnist:train images (distillation from "
        "the original, T = 4, kd weight 0.9, AdamW lr 1e-3 cosine to 0, batch 128), validation on mnist:val "
        "before and after the epoch; test accuracy = ONNX Runtime on the 10k MNIST test set from the written "
        "file. Wall time and peak RSS are the whole child process (data loading, teacher inference, "
        "artifact generation, training, validation, writing). 1 thread (OMP/OPENBLAS/MKL_NUM_THREADS=1, "
        "--threads 1) on a 2-core machine shared with other jobs (its 1-minute load average at the start and end "
        "of each run is in the table): wall times include that contention.", "",
        *align(["backend", "environment", "test acc (%)", "wall (s)", "peak RSS (MiB)", "val acc after",
                "load avg (start -> end)"], rows), "",
        f"The ort environment has no torch: `{torch_check['command']}` exits {torch_check['rc']}: "
        f"`{torch_check['last_line']}`.", "",
        "Versions: " + "; ".join(f"{k}: {v}" for k, v in doc["versions"].items()), "",
        "Commands (run from the repository root; STUDENT, TRAIN and the outputs are in a temporary directory TMP):", "",
        *[f"- {r['backend']}: `{r['command']}`" for r in doc["rows"]], ""])


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--ort-python", default="/work/venvs/ort/bin/python", help="python of the torch-free venv")
    p.add_argument("--train-size", type=int, default=20000)
    args = p.parse_args()
    env = {**os.environ, **dict.fromkeys(THREAD_VARS, "1")}
    pythons = {"torch": sys.executable, "ort": args.ort_python}
    with tempfile.TemporaryDirectory(prefix="ttcompile-backends-") as tmp:
        work = Path(tmp)
        student, data = build_inputs(work, args.train_size)
        rows = []
        for backend, python in pythons.items():
            out = work / f"tuned_{backend}.onnx"
            cmd = [str(Path(python).parent / "ttcompile"), "finetune", str(student), "--teacher", str(MODEL),
                   "--train", str(data), "--val", "mnist:val", "-o", str(out), "--epochs", "1", "--threads", "1",
                   "--backend", backend, "--quiet"]
            print(f"{backend}: {shlex.join(cmd)}", flush=True)
            result = run_child(cmd, env, work / f"{backend}.log")
            if result["rc"]:
                print("\n".join(result["output"]), file=sys.stderr)
                return 1
            shown = (shlex.join(cmd).replace(str(student), "STUDENT").replace(str(data), "TRAIN")
                     .replace(str(work), "TMP"))
            val = next((line.split("val accuracy ")[1].split()[0] for line in result["output"]
                        if line.startswith("epoch 1/1")), "-")
            rows.append({"backend": backend, "python": python, "command": shown, "val_acc": val,
                         "test_acc": test_accuracy(onnx.load(out), 1), **result})
            print(f"{backend}: test {rows[-1]['test_acc']:.4f}, {result['wall_s']} s, {result['peak_rss_mib']} MiB",
                  flush=True)
        rc, text = probe(args.ort_python, "import torch")
        versions = {name: probe(python, VERSIONS)[1].replace("\n", ", ") for name, python in pythons.items()}
        doc = {"command": invocation(), "train_size": args.train_size, "params": count_params(onnx.load(student)),
               "student_test_acc": test_accuracy(onnx.load(student), 1), "rows": rows, "versions": versions,
               "ort_torch_import": {"command": f"{args.ort_python} -c 'import torch'", "rc": rc,
                                    "last_line": text.splitlines()[-1] if text else ""}}
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "backends.json").write_text(json.dumps(doc, indent=1) + "\n")
    (RESULTS / "backends.md").write_text(markdown(doc))
    print(markdown(doc))
    return 0


if __name__ == "__main__":
    sys.exit(main())
