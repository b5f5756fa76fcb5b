"""``--budget latency=F`` against ``--budget macs=F``: predicted vs measured latency, params, accuracy.

    python benchmarks/latency_budget.py [--models lenet5,resnet20] [--batches 1,32] [--fraction 0.5]
                                        [--allocator uniform] [--format tt] [--benches 3] [--calib D]

Per model and batch: ``ttcompile compress MODEL --budget latency=F --batch B --threads 1`` and
``ttcompile compress MODEL --budget macs=F`` (same allocator, TT, no fine-tuning; with ``--calib D`` both
fit their cores to D's outputs and recover layer-wise, calibration only, no labels), then ``--benches``
separate ``ttcompile bench MODEL LAT MACS --data mnist:test --batch B --threads 1`` runs (each: one
session alive at a time, interleaved rounds, medians). Reported per compressed model: params, MNIST test
accuracy (10k, before fine-tuning), the measured fraction of the original's latency (``bench``: compressed
/ original in the same run; median over the runs), and for the latency budget the solver's prediction
(``predicted_ms / T_model``: the closed loop's whole-model timing at compress time) with its ratio to the
measured fraction, and the additive per-layer model's prediction it started from.
All commands run the installed CLI exactly as printed. The latency cache (``$TTCOMPILE_CACHE/latency``)
is emptied first unless ``--keep-cache``, so the measurement time of the table is part of the compress
time. Writes ``benchmarks/results/latency_budget.{md,json}``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from ttcompile.benchmark.plot import Pareto, Point, write_pareto
from ttcompile.models.mnist import cache_dir
from ttcompile.planning.latency import cpu_model

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


class Infeasible(Exception):
    """``compress`` refused the budget as infeasible (exit 2, one line)."""


def ttcompile(*args: str) -> tuple[str, float]:
    """Run ``ttcompile ARGS`` (this interpreter's install); its stdout and wall seconds."""
    cmd = [sys.executable, "-m", "ttcompile.cli", *args]
    start = time.perf_counter()
    done = subprocess.run(cmd, env=ENV, capture_output=True, text=True, cwd=ROOT)
    if done.returncode == 2 and "infeasible" in done.stderr:
        raise Infeasible(done.stderr.strip().splitlines()[-1])
    if done.returncode:
        raise RuntimeError(f"{shlex.join(['ttcompile', *args])} exited {done.returncode}: {done.stderr[-2000:]}")
    return done.stdout, time.perf_counter() - start


def shown(args: list[str], tmp: Path) -> str:
    return shlex.join(["ttcompile", *args]).replace(str(tmp) + "/", "")


def run_case(model: str, batch: int, fraction: float, allocator: str, benches: int, tmp: Path,
             calib: str | None, fmt: str) -> dict:
    src = f"models/{model}_mnist.onnx"
    outs, commands, compress = {}, [], {}
    for metric in ("latency", "macs"):
        out = tmp / f"{model}_b{batch}_{metric}.onnx"
        args = ["compress", src, "-o", str(out), "--format", fmt, "--budget", f"{metric}={fraction}",
                "--allocator", allocator, "--quiet"]
        args += ["--batch", str(batch), "--threads", "1"] if metric == "latency" else []
        args += ["--calib", calib] if calib else []
        commands.append(shown(args, tmp))
        try:
            _, wall = ttcompile(*args)
        except Infeasible as exc:
            compress[metric] = {"infeasible": str(exc)}
            continue
        plan = json.loads(out.with_suffix(".plan.json").read_text())
        outs[metric] = out
        compress[metric] = {"wall_s": wall, "totals": plan["totals"], "budget": plan["settings"]["budget"]}
    runs = []
    for _ in range(benches):
        bench_json = tmp / "bench.json"
        args = ["bench", src, *(str(o) for o in outs.values()), "--data", "mnist:test", "--batch", str(batch),
                "--threads", "1", "--json", str(bench_json)]
        stdout, _ = ttcompile(*args)
        runs.append({"report": json.loads(bench_json.read_text()),
                     "check": [ln for ln in stdout.splitlines() if "latency budget at batch" in ln]})
    commands.append(shown(args, tmp) + f"   (x{benches})")
    rows = {m: {"infeasible": c["infeasible"]} for m, c in compress.items() if "infeasible" in c}
    for i, metric in enumerate(outs, start=1):
        fracs = [1 / next(t["speedup"] for t in r["report"]["timings"] if t["model_index"] == i) for r in runs]
        ms = [next(t["latency_ms"] for t in r["report"]["timings"] if t["model_index"] == i) for r in runs]
        m = runs[0]["report"]["models"][i]
        row = {"params": m["params"], "params_reduction": m["params_reduction"], "macs_reduction": m["macs_reduction"],
               "accuracy": m["accuracy"], "measured_fraction": statistics.median(fracs), "measured_fractions": fracs,
               "measured_ms": statistics.median(ms), "compress_wall_s": compress[metric]["wall_s"]}
        lat = compress[metric]["budget"].get("latency")
        if lat:
            pred = lat["predicted_ms"] / lat["model_ms"]
            row |= {"predicted_fraction": pred, "predicted_ms": lat["predicted_ms"], "model_ms": lat["model_ms"],
                    "pred_over_measured": pred / row["measured_fraction"],
                    "pred_ms_over_measured_ms": lat["predicted_ms"] / row["measured_ms"],
                    "additive_fraction": lat.get("additive_ms", lat["predicted_ms"]) / lat["model_ms"],
                    "closed_loop": lat.get("closed_loop"),
                    "measured_pairs": lat["measured_pairs"], "refused": lat["refused"],
                    "dense_layers": [n for n, p in lat.get("dense_ms", {}).items() if n not in lat["pairs"]]}
        rows[metric] = row
    orig = runs[0]["report"]["models"][0]
    return {"model": model, "batch": batch, "fraction": fraction, "allocator": allocator, "calib": calib, "format": fmt,
            "commands": commands,
            "original": {"params": orig["params"], "accuracy": orig["accuracy"],
                         "latency_ms": statistics.median(next(t["latency_ms"] for t in r["report"]["timings"]
                                                              if t["model_index"] == 0) for r in runs)},
            "rows": rows, "checks": [r["check"] for r in runs]}


def markdown(result: dict) -> str:
    head = ["model", "batch", "budget", "params", "params x", "MACs x", "MNIST acc", "measured latency / original",
            "additive model / original", "predicted / original", "predicted / measured",
            "compress s (timings)"]
    calib = f", calibration-only init/recovery on {result['calib']}" if result.get("calib") else ""
    lines = [f"# Latency budget vs MACs budget ({result.get('format', 'tt')}, allocator {result['allocator']}{calib}, "
             "no fine-tuning)", "",
             result["note"], "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for case in result["cases"]:
        o = case["original"]
        lines.append(f"| {case['model']} | {case['batch']} | original | {o['params']:,} | 1x | 1x | "
                     f"{o['accuracy']:.2%} | 1 ({o['latency_ms']:.3g} ms) | - | - | - | - |")
        for metric, r in case["rows"].items():
            if "infeasible" in r:
                lines.append(f"| {case['model']} | {case['batch']} | {metric}={case['fraction']:g} | "
                             f"infeasible: {r['infeasible'].split('error: ')[-1]} |" + " |" * (len(head) - 4))
                continue
            pred = f"{r['predicted_fraction']:.3f}" if "predicted_fraction" in r else "-"
            loop = r.get("closed_loop")
            if loop:
                pred += f" ({len(loop['rounds'])} rounds{'' if loop['met'] else ', not met'})"
            additive = f"{r['additive_fraction']:.3f}" if "additive_fraction" in r else "-"
            ratio = f"{r['pred_over_measured']:.3f}" if "pred_over_measured" in r else "-"
            spread = ", ".join(f"{f:.3f}" for f in r["measured_fractions"])
            pairs = f" ({r['measured_pairs']})" if "measured_pairs" in r else ""
            lines.append(f"| {case['model']} | {case['batch']} | {metric}={case['fraction']:g} | {r['params']:,} | "
                         f"{r['params_reduction']:.1f}x | {r['macs_reduction']:.2f}x | {r['accuracy']:.2%} | "
                         f"{r['measured_fraction']:.3f} ({spread}) | {additive} | {pred} | {ratio} | "
                         f"{r['compress_wall_s']:.0f}{pairs} |")
    lines += ["", "Commands (paths of the written models shortened), per case, and the script run that ran them:", ""]
    for case in result["cases"]:
        load = f" (load average {case['load_average_after'][0]:.1f} after)" if "load_average_after" in case else ""
        lines += [f"    # {case['model']} batch {case['batch']}: {case.get('script', result['command'])}{load}"]
        lines += [f"    {c}" for c in case["commands"]]
    return "\n".join(lines) + "\n"


def pareto(result: dict) -> Pareto:
    """Test accuracy (no fine-tuning) vs whole-network params per budget kind; one front per model and batch."""
    points = []
    for case in result["cases"]:
        group = f"{case['model']} batch {case['batch']}"
        points.append(Point(case["original"]["params"], 100 * case["original"]["accuracy"], "original", group,
                            case["model"]))
        points += [Point(r["params"], 100 * r["accuracy"], f"{kind} budget", group) for kind, r in case["rows"].items()
                   if "params" in r and "accuracy" in r]
    return Pareto(points, "params (whole network)", "MNIST test accuracy (%, no fine-tuning)",
                  f"Latency vs MAC vs params budgets ({result['format']}, {result['allocator']})",
                  ["one front per model and latency batch size"])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="lenet5,resnet20")
    ap.add_argument("--batches", default="1,32")
    ap.add_argument("--fraction", type=float, default=0.5)
    ap.add_argument("--allocator", default="uniform")
    ap.add_argument("--format", default="tt")
    ap.add_argument("--benches", type=int, default=3)
    ap.add_argument("--calib", help="calibration data for both compressions (data-aware init, layer-wise recovery)")
    ap.add_argument("--keep-cache", action="store_true")
    ap.add_argument("--out", default="latency_budget")
    args = ap.parse_args(argv)
    if not args.keep_cache:
        shutil.rmtree(cache_dir() / "latency", ignore_errors=True)
    load = os.getloadavg()
    result = {"command": shlex.join(["python", "benchmarks/latency_budget.py", *(argv or sys.argv[1:])]),
              "allocator": args.allocator, "format": args.format, "calib": args.calib,
              "cpu": cpu_model(), "python": platform.python_version(),
              "load_average_at_start": load, "cases": []}
    import onnxruntime

    result["note"] = (f"`{result['command']}` on {cpu_model()} (2 vCPUs shared with other engineers' jobs; load "
                      f"average {load[0]:.1f} at the start), onnxruntime {onnxruntime.__version__}, CPU EP, 1 thread. "
                      "Measured latency / original: compressed over original in the same `ttcompile bench` run, "
                      "median of the runs (each run's value in brackets). Additive model / original: T_model - sum D_l "
                      "(1 - c_l/d_l) over T_model (layers timed alone). Predicted / original: the solver's final "
                      "prediction, the whole compressed model timed against the original at compress time (closed "
                      "loop, `ttcompile.planning.latency_loop`; rewrites timed in brackets). "
                      "Accuracy: MNIST test (10k) in ONNX Runtime, before any fine-tuning.")
    RESULTS.mkdir(exist_ok=True)
    previous = RESULTS / f"{args.out}.json"
    if previous.exists():  # resumable: cases of other models/batches are kept
        result["cases"] = json.loads(previous.read_text())["cases"]
    with tempfile.TemporaryDirectory() as tmp:
        for model in args.models.split(","):
            for batch in (int(b) for b in args.batches.split(",")):
                case = run_case(model, batch, args.fraction, args.allocator, args.benches, Path(tmp), args.calib,
                                args.format)
                result["cases"] = [c for c in result["cases"] if (c["model"], c["batch"]) != (model, batch)]
                result["cases"].append(case | {"script": result["command"], "load_average_after": os.getloadavg()})
                print(json.dumps({k: v for k, v in case.items() if k != "checks"}, indent=1), flush=True)
                (RESULTS / f"{args.out}.json").write_text(json.dumps(result, indent=1))
                (RESULTS / f"{args.out}.md").write_text(markdown(result))
                write_pareto(RESULTS / f"{args.out}.png", pareto(result))
    print(markdown(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
