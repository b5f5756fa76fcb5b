"""``ttcompile demo``: compress the embedded LeNet-5, verify it, benchmark it against the original.

Everything it needs ships with the package (trained LeNet-5 ONNX, an MNIST calibration sample and
a 2 000-image MNIST test sample), so it runs offline in about a minute on 2 CPU cores.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from ttcompile.cli_options import plan_table
from ttcompile.cmd_compress import compress_to_file
from ttcompile.graph import load_model
from ttcompile.layers import find_layers
from ttcompile.plan import make_plan
from ttcompile.report import format_table, write_json


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("-o", "--out-dir", default="ttcompile-demo", help="where the files go (default ./ttcompile-demo)")
    p.add_argument("--format", default="tt", help="decomposition format (default tt)")
    p.add_argument("--ratio", type=float, default=0.1, help="fraction of each layer's parameters to keep")
    p.add_argument("--batch", default="1,32", help="benchmark batch sizes")
    p.add_argument("--repeats", type=int, default=5, help="interleaved benchmark rounds")


def run(args: argparse.Namespace) -> int:
    from ttcompile.bench import benchmark
    from ttcompile.models.data import embedded, load_npz

    start = time.perf_counter()
    out_dir = Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    original = embedded("lenet5_mnist.onnx")
    test = load_npz(embedded("mnist_test_sample.npz"))
    print(f"[1/3] planning {args.format} at {args.ratio:g} of each layer's parameters for {original.name}")
    model = load_model(original)
    plan = make_plan(find_layers(model), args.format, model_path=original, ratio=args.ratio)
    compressed = out_dir / f"lenet5_{args.format}.onnx"
    print("[2/3] rewriting and checking")
    compress_to_file(model, plan, compressed)
    print(plan_table(plan))
    print(f"[3/3] benchmarking on ONNX Runtime CPU, 1 thread, {len(test.x)} MNIST test images")
    report = benchmark([original, compressed], test, batches=[int(b) for b in args.batch.split(",")],
                       threads=1, rounds=args.repeats)
    print(format_table(report))
    write_json(report, out_dir / "bench.json")
    print(f"\nfiles: {compressed}, {compressed.with_suffix('.plan.json')}, {out_dir / 'bench.json'}")
    print(f"demo finished in {time.perf_counter() - start:.0f} s")
    return 0
