"""``ttcompile demo``: the end-to-end run on the embedded LeNet-5, offline, in about a minute.

It runs the same commands a user would (printed before each step): LWIQ analysis on the embedded
MNIST calibration sample, TR compression (``--format``) at a parameter budget with data-aware init and layer-wise
recovery on that sample (its labels are not used; ``--recover none`` gives the weight-only rewrite),
a short distillation fine-tune on that sample (when torch is installed), and a benchmark of original
vs compressed on the embedded 2 000-image MNIST test sample, one ONNX Runtime session at a time.
"""

from __future__ import annotations

import argparse
import importlib.util
import shlex
import time
from pathlib import Path


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("-o", "--out-dir", default="ttcompile-demo", help="where the files go (default ./ttcompile-demo)")
    p.add_argument("--format", default="tr", help="decomposition format (default tr: on LeNet-5 a TT budget is "
                                                  "capped by the MACs of its 1250->320 layer)")
    p.add_argument("--budget", default="params=0.05", help="compression budget (default params=0.05)")
    p.add_argument("--recover", choices=["none", "layer"], default="layer",
                   help="layer: data-aware init + layer-wise recovery on the calibration sample (default); none: "
                        "cores from the weights only")
    p.add_argument("--finetune-epochs", type=int, default=8, help="distillation epochs on the sample (0: none)")
    p.add_argument("--repeats", type=int, default=3, help="interleaved benchmark rounds")


def _step(title: str, argv: list[str]) -> None:
    """Print and run one ttcompile command in this process."""
    from ttcompile.cli import build_parser

    print(f"\n== {title}\n$ ttcompile {shlex.join(argv)}", flush=True)
    args = build_parser().parse_args(argv)
    importlib.import_module(args._module).run(args)


def run(args: argparse.Namespace) -> int:
    from ttcompile.models.data import embedded

    start = time.perf_counter()
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model, calib, test = (str(embedded(n)) for n in ("lenet5_mnist.onnx", "mnist_calib.npz", "mnist_test_sample.npz"))
    compressed, tuned = out / f"lenet5_{args.format}.onnx", out / f"lenet5_{args.format}_ft.onnx"
    _step("LWIQ analysis", ["analyze", model, "--calib", calib, "--format", args.format, "-o",
                            str(out / "analysis.json")])
    calibration = (["--calib", calib] if args.recover == "layer" else [])
    what = ("data-aware init + layer-wise recovery on the calibration sample (labels not used)"
            if calibration else "cores from the weights")
    _step(f"compress with {args.format} at {args.budget}: {what}",
          ["compress", model, "-o", str(compressed), "--format", args.format, "--budget", args.budget,
           "--analysis", str(out / "analysis.json"), *calibration, "--data", test, "--quiet"])
    models = [model, str(compressed)]
    if args.finetune_epochs > 0 and importlib.util.find_spec("torch") is not None:
        _step("distillation fine-tune on the calibration sample",
              ["finetune", str(compressed), "--teacher", model, "--train", calib, "-o", str(tuned),
               "--epochs", str(args.finetune_epochs), "--threads", "1", "--quiet"])
        models.append(str(tuned))
    _step("benchmark on the MNIST test sample (ONNX Runtime CPU, 1 thread)",
          ["bench", *models, "--data", test, "--batch", "1,32", "--threads", "1", "--repeats", str(args.repeats),
           "--json", str(out / "bench.json")])
    print(f"\nfiles in {out}/: {', '.join(sorted(p.name for p in out.iterdir() if not p.name.endswith('.ckpt')))}")
    print(f"demo finished in {time.perf_counter() - start:.0f} s")
    return 0
