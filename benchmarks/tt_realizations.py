"""TT chains on ONNX Runtime CPU: latency against the dense layer and against the MAC ratio.

For a 1024x1024 Gemm and a 256->256 3x3 Conv (14x14 input) at a few TT ranks, compress the
one-layer model with the realization the cost model picks, then time dense vs TT with
``ttcompile.benchmark.bench`` (one session alive at a time, interleaved rounds, medians), 1 thread,
batch 1 and 32. "eff" = measured speedup / MAC reduction (1.0 = the chain runs as fast as its
MAC count promises).

    python benchmarks/tt_realizations.py [--ranks 4,8,16,32] [--rounds 3] [--threads 1]

Writes benchmarks/results/tt_realizations.{md,json}.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from ttcompile.benchmark.bench import benchmark
from ttcompile.benchmark.tables import align
from ttcompile.graph import load_model, save_model
from ttcompile.layers import find_layers
from ttcompile.passes import get_format
from ttcompile.planning.plan import Plan, layer_plan
from ttcompile.rewrite.compress import apply_plan

RESULTS = Path(__file__).parent / "results"


def gemm_1024() -> onnx.ModelProto:
    w = (np.random.default_rng(0).standard_normal((1024, 1024)) / 32).astype(np.float32)
    node = helper.make_node("Gemm", ["x", "W", "B"], ["y"], name="gemm", transB=1)
    graph = helper.make_graph(
        [node], "gemm1024", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 1024])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 1024])],
        [numpy_helper.from_array(w, "W"), numpy_helper.from_array(np.zeros(1024, np.float32), "B")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def conv_256() -> onnx.ModelProto:
    w = (np.random.default_rng(0).standard_normal((256, 256, 3, 3)) / 48).astype(np.float32)
    node = helper.make_node("Conv", ["x", "W", "B"], ["y"], name="conv", kernel_shape=[3, 3], pads=[1, 1, 1, 1])
    graph = helper.make_graph(
        [node], "conv256", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 256, 14, 14])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 256, 14, 14])],
        [numpy_helper.from_array(w, "W"), numpy_helper.from_array(np.zeros(256, np.float32), "B")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def compress_at_rank(src: Path, dst: Path, rank: int) -> dict:
    """TT at uniform ``rank`` (forced, so a slower-than-dense chain is measured too)."""
    model = load_model(src)
    (layer,) = find_layers(model)
    fmt = get_format("tt")
    modes = fmt.default_modes(layer)
    lp = layer_plan(layer, fmt, fmt.uniform_ranks(layer, modes, rank), modes, force=True)
    apply_plan(model, Plan(str(src), "", {}, [lp]), progress=False)
    save_model(model, dst)
    return {"ranks": lp.ranks, "modes": lp.modes, "options": lp.options, "params": lp.params, "macs": lp.macs,
            "dense_params": layer.params, "dense_macs": layer.macs}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ranks", default="4,8,16,32")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--min-time", type=float, default=0.2)
    args = ap.parse_args()
    ranks = [int(r) for r in args.ranks.split(",")]
    rows, records = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for name, build in (("gemm 1024x1024", gemm_1024), ("conv 256x256x3x3 @14x14", conv_256)):
            dense = Path(tmp) / f"{build.__name__}.onnx"
            onnx.save(build(), dense)
            for rank in ranks:
                tt = Path(tmp) / f"{build.__name__}_tt{rank}.onnx"
                info = compress_at_rank(dense, tt, rank)
                report = benchmark([dense, tt], None, batches=[1, 32], threads=args.threads, rounds=args.rounds,
                                   min_time=args.min_time, progress=False)
                mac_x = info["dense_macs"] / info["macs"]
                rec = {"layer": name, "rank": rank, **info, "mac_reduction": mac_x,
                       "params_reduction": info["dense_params"] / info["params"]}
                for b in (1, 32):
                    rec[f"dense_ms_b{b}"] = report.timing(0, b).latency_ms
                    rec[f"tt_ms_b{b}"] = report.timing(1, b).latency_ms
                    rec[f"speedup_b{b}"] = report.speedup(1, b)
                records.append(rec)
                opt = ",".join(f"{v}" for v in info["options"].values())
                rows.append([name, str(rank), opt, f"{rec['params_reduction']:.1f}x", f"{mac_x:.2f}x",
                             f"{rec['dense_ms_b1']:.3f}", f"{rec['tt_ms_b1']:.3f}", f"{rec['speedup_b1']:.2f}x",
                             f"{rec['speedup_b1'] / mac_x:.2f}", f"{rec['dense_ms_b32']:.2f}",
                             f"{rec['tt_ms_b32']:.2f}", f"{rec['speedup_b32']:.2f}x",
                             f"{rec['speedup_b32'] / mac_x:.2f}"])
                print(" | ".join(rows[-1]), flush=True)
    headers = ["layer", "rank", "realization", "params x", "MACs x", "dense ms b1", "TT ms b1", "speedup b1",
               "eff b1", "dense ms b32", "TT ms b32", "speedup b32", "eff b32"]
    table = "\n".join(align(headers, rows))
    print(table)
    RESULTS.mkdir(exist_ok=True)
    md = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)] + ["| " + " | ".join(r) + " |" for r in rows]
    cmd = f"python benchmarks/tt_realizations.py --ranks {args.ranks} --rounds {args.rounds} --threads {args.threads}"
    (RESULTS / "tt_realizations.md").write_text(f"`{cmd}` (ONNX Runtime CPU, {args.threads} thread)\n\n"
                                               + "\n".join(md) + "\n")
    (RESULTS / "tt_realizations.json").write_text(json.dumps({"command": cmd, "results": records}, indent=1))


if __name__ == "__main__":
    main()
