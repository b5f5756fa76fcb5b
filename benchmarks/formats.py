"""Every format at the same per-layer parameter ratios on trained MNIST models, before any fine-tuning.

For each model (LeNet-5, and ResNet-20 when ``models/resnet20_mnist.onnx`` exists), ratio r in 1/5, 1/10,
1/20 and format (tt, tr, tucker, cp, svd, stt, str, sttu, auto): ``make_plan(..., ratio=r,
allow_more_macs=True)`` (``make_auto_plan`` for auto) picks each layer's largest uniform rank whose chain
fits r x the layer's params; layers where the format cannot save parameters (or cannot handle the layer)
stay dense and are listed. Reported: whole-network params of the written ONNX file, mean relative
reconstruction error ``||W - W_hat|| / ||W||`` over the compressed layers (``apply_plan``), ONNX Runtime
top-1 accuracy on the MNIST test set (10k) with the decomposed weights as they are (no fine-tuning),
ONNX Runtime CPU latency at batch 1 and 32 with 1 thread (``ttcompile.benchmark.bench.benchmark``, every
compressed model of one ratio interleaved with the original, whose latency the speedups divide), and
compression wall time (planning + decomposition + rewrite + check + save).

STT's default factor is t = 1 (plain TT) wherever t = 2 does not divide the first TT mode, which is every
LeNet-5 layer; so two more rows put t = 2 to work: ``stt/t=2`` on TT's factor lists reordered so that 2
divides the first mode (``stt_modes``), and ``tt/stt-modes``, plain TT on the same reordered lists.

    OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 python benchmarks/formats.py [--models lenet5,resnet20]

Writes ``benchmarks/results/formats.{md,json}``.
"""

from __future__ import annotations

import argparse
import json
import shlex
import statistics
import sys
import tempfile
import time
from fractions import Fraction
from itertools import permutations, product
from pathlib import Path

import numpy as np

from ttcompile.benchmark.bench import benchmark
from ttcompile.benchmark.plot import Pareto, Point, write_pareto
from ttcompile.benchmark.tables import align
from ttcompile.errors import UserError
from ttcompile.graph import load_model, to_proto
from ttcompile.layers import Layer, find_layers
from ttcompile.models.data import Dataset, load_dataset
from ttcompile.passes import get_format
from ttcompile.planning.auto_format import make_auto_plan
from ttcompile.planning.plan import Plan, make_plan, ranks_for_ratio
from ttcompile.rewrite.counting import count_params
from ttcompile.rewrite.pipeline import compress_in_memory, save_pair

MODELS = {"lenet5": Path("models/lenet5_mnist.onnx"), "resnet20": Path("models/resnet20_mnist.onnx")}
STT_T = 2
FORMATS = ("tt", "tr", "tucker", "cp", "svd", "stt", "str", "sttu", "auto", "tt/stt-modes", f"stt/t={STT_T}")
RATIOS = (Fraction(1, 5), Fraction(1, 10), Fraction(1, 20))
PAIRS = (("stt", "tt"), ("str", "tr"), (f"stt/t={STT_T}", "tt/stt-modes"))
RESULTS = Path("benchmarks/results")
ANSWER = """\
**No: at equal parameters STT/STR do not beat TT/TR here; they tie exactly.** Every pair above has the same
parameter count, the same reconstruction error and the same test accuracy to the last digit; they emit
the same ONNX graph, so their latency gaps (up to 2x at batch 32) only measure how loaded the machine
was. That is structural, not luck: as passes/stp.py derives, ``(G ⊗ I_t)`` lets the
fast sub-index ride along the chain, so an STT/STR with nominal ranks R is the TT/TR with ranks R/t over
the same modes, with the same number of weights; the STP rank search at a parameter budget therefore ends
on the same chain the TT/TR search finds (STR runs with t = 2; STT's default is t = 2 on ResNet-20 but
t = 1 on every LeNet-5 layer, whose first TT modes are odd, hence the ``stt/t=2`` vs ``tt/stt-modes``
rows, equal again). The semi-tensor paper's saving is at equal *nominal* rank (the middle cores shrink
by t^2), which is the same as TT at a t-times smaller rank, not a better approximation per parameter.
Semi-tensor Tucker (sttu), which is not a re-parametrised Tucker-2, is not better either: higher
reconstruction error than tucker at every ratio on both models. Before fine-tuning no format keeps
useful accuracy at 5x or more on these trained networks (mean relative errors 0.67-0.97; ResNet-20 is
at chance everywhere, though its tucker/tt/str rewrites at full rank are exact: 99.6 % on 1k samples);
the lowest errors come from cp and auto (auto takes 16-aligned ranks, so it is not always lowest)."""


def stt_modes(layers: list[Layer], t: int = STT_T) -> dict[str, dict]:
    """Per layer, TT's default factor lists reordered (first fitting permutation) so that ``t`` divides
    the first TT mode, with ``t`` set; layers where no order fits keep the defaults and t = 1."""
    stt = get_format("stt")
    out = {}
    for layer in layers:
        base = get_format("tt").default_modes(layer) if stt.supports(layer) is None else None
        if base is None:
            continue
        out[layer.name] = {**base, "t": 1}
        for ins, outs in product(dict.fromkeys(permutations(base["in"])), dict.fromkeys(permutations(base["out"]))):
            modes = {**base, "in": list(ins), "out": list(outs), "t": t}
            try:
                stt.check_t(layer, modes)
            except ValueError:
                continue
            out[layer.name] = modes
            break
    return out


def plan_for(model_path: Path, variant: str, ratio: float) -> tuple[object, Plan]:
    """``variant``: a format name, auto, or ``tt/stt-modes`` and ``stt/t=2`` (both on ``stt_modes``)."""
    model = load_model(model_path)
    layers = find_layers(model)
    if variant == "auto":
        return model, make_auto_plan(model, layers, ratio=ratio, allow_more_macs=True, model_path=model_path)
    fmt, _, tag = variant.partition("/")
    modes = None
    if tag:
        modes = stt_modes(layers)
        if fmt == "tt":
            modes = {name: {k: v for k, v in m.items() if k != "t"} for name, m in modes.items()}
    return model, make_plan(layers, fmt, model_path=model_path, ratio=ratio, allow_more_macs=True, modes=modes)


def compress_row(model_path: Path, fmt: str, ratio: Fraction, out: Path) -> dict:
    """Plan, rewrite and save one (format, ratio); the row without the ORT figures."""
    began = time.perf_counter()
    model, plan = plan_for(model_path, fmt, float(ratio))
    row = {"format": fmt, "ratio": str(ratio)}
    try:
        _, proto = compress_in_memory(model, plan, progress=False)
        save_pair(proto, plan, out)
    except UserError as exc:
        return {**row, "failed": str(exc)}
    compressed = [lp for lp in plan.layers if lp.action == "compress"]
    return {
        **row,
        "compress_s": time.perf_counter() - began,
        "params": count_params(proto),
        "mean_rel_err": statistics.fmean(lp.error for lp in compressed),
        "compressed": {lp.name: {"format": lp.format, "ranks": lp.ranks, "params": lp.params,
                                 "dense_params": lp.layer.params, "rel_err": lp.error} for lp in compressed},
        "dense": {lp.name: lp.reason for lp in plan.layers if lp.action != "compress"},
        "file": str(out),
    }


def measure(model_path: Path, rows: list[dict], data: Dataset, args: argparse.Namespace) -> dict:
    """Accuracy and latency of the original and every written row (one interleaved benchmark)."""
    done = [r for r in rows if "file" in r]
    report = benchmark([model_path, *(r["file"] for r in done)], data, batches=args.batches, threads=1,
                       rounds=args.rounds, min_time=args.min_time, min_runs=5, progress=False)
    for i, r in enumerate(done, start=1):
        r["accuracy"] = report.models[i].accuracy
        r["latency_ms"] = {str(b): report.timing(i, b).latency_ms for b in args.batches}
        r["speedup"] = {str(b): report.speedup(i, b) for b in args.batches}
        del r["file"]
    return {"accuracy": report.models[0].accuracy,
            "latency_ms": {str(b): report.timing(0, b).latency_ms for b in args.batches}}


def cp_large_kernel_seconds(ratio: float = 0.1) -> dict:
    """Wall time of the cp format's decomposition of a random 256x256x3x3 kernel at ``ratio`` of its params."""
    attrs = {"strides": [1, 1], "pads": [1] * 4, "dilations": [1, 1], "auto_pad": "NOTSET", "group": 1}
    layer = Layer("c", "conv", "Conv", "w", (256, 256, 3, 3), 256, 256, kernel=(3, 3), in_spatial=(8, 8),
                  out_spatial=(8, 8), params=256 * 256 * 9, macs=256 * 256 * 9 * 64, attrs=attrs)
    fmt = get_format("cp")
    modes = fmt.default_modes(layer)
    ranks = ranks_for_ratio(fmt, layer, modes, ratio)
    weight = np.random.default_rng(0).standard_normal(layer.dense_shape) / 48
    began = time.perf_counter()
    fmt.decompose(weight, layer, modes, ranks)
    return {"ratio": ratio, "ranks": ranks, "seconds": time.perf_counter() - began}


def stp_comparison(model: str, rows: list[dict]) -> list[str]:
    """One line per (STP format, its plain counterpart) and ratio: params, error, accuracy side by side."""
    by = {(r["format"], r["ratio"]): r for r in rows if "accuracy" in r}
    lines = []
    for stp, plain in PAIRS:
        for ratio in RATIOS:
            a, b = by.get((stp, str(ratio))), by.get((plain, str(ratio)))
            if a is None or b is None:
                continue
            lines.append(
                f"- {model} r={ratio}: {stp} {a['params']} params, err {a['mean_rel_err']:.3f}, "
                f"acc {100 * a['accuracy']:.2f} % | {plain} {b['params']} params, err {b['mean_rel_err']:.3f}, "
                f"acc {100 * b['accuracy']:.2f} %")
    return lines


def markdown(result: dict) -> str:
    headers = ["model", "ratio", "format", "params", "P x", "mean rel.err", "acc %", "b1 ms (x)", "b32 ms (x)",
               "compress s", "left dense"]
    table, notes = [], []
    for name, m in result["models"].items():
        for ratio, base in m["original"].items():
            lat = base["latency_ms"]
            table.append([name, ratio, "original", str(m["params"]), "1", "-", f"{100 * base['accuracy']:.2f}",
                          *(f"{lat[b]:.3f}" if b in lat else "-" for b in ("1", "32")), "-", ""])
            for r in m["rows"]:
                if r["ratio"] != ratio:
                    continue
                if "failed" in r:
                    table.append([name, ratio, r["format"], "-", "-", "-", "-", "-", "-", "-", r["failed"]])
                    continue
                lat, sp = r["latency_ms"], r["speedup"]
                table.append([
                    name, ratio, r["format"], str(r["params"]), f"{m['params'] / r['params']:.1f}",
                    f"{r['mean_rel_err']:.3f}", f"{100 * r['accuracy']:.2f}",
                    *(f"{lat[b]:.3f} ({sp[b]:.2f})" if b in lat else "-" for b in ("1", "32")),
                    f"{r['compress_s']:.1f}", ", ".join(r["dense"]) or "-"])
        notes += stp_comparison(name, m["rows"])
    cp = result["cp_256x256x3x3"]
    return "\n".join([
        "# Formats at equal per-layer parameter ratios (no fine-tuning)", "",
        *(f"Command ({name}, {m['data']} {m['samples']} samples, {m['rounds']} latency rounds): `{m['command']}`\n"
          for name, m in result["models"].items()),
        *(para.replace("\n", " ") + "\n" for para in __doc__.split("\n\n")[1:3]),
        "Latency: median over the rounds of each round's 10th-percentile run, ONNX Runtime CPU, 1 thread, "
        "on a shared 2-core machine "
        "(other jobs running); (x) = speedup over the original measured in the same interleaved run. "
        "`params` counts the whole network; `P x` = original / compressed. `left dense`: layers the format "
        "kept dense (reasons in formats.json). auto = per layer the lowest-error format "
        "(ttcompile.planning.auto_format).",
        "", *align(headers, table), "",
        *([f"Not run: {', '.join(result['missing'])}", ""] if result.get("missing") else []),
        f"CP decomposition of a random 256x256x3x3 kernel at 1/10 of its params (rank {cp['ranks'][0]}): "
        f"{cp['seconds']:.1f} s (1 thread, loaded machine).", "",
        "## STT/STR vs TT/TR at equal parameter ratio", "",
        *notes, "", ANSWER, ""])


def pareto(result: dict) -> Pareto:
    """Test accuracy (no fine-tuning) vs whole-network params per format; one front per model."""
    points = []
    for name, entry in result["models"].items():
        accuracy = next(iter(entry["original"].values()))["accuracy"]
        points.append(Point(entry["params"], 100 * accuracy, "original", name, name))
        points += [Point(r["params"], 100 * r["accuracy"], r["format"], name) for r in entry["rows"]
                   if "accuracy" in r and "params" in r]
    return Pareto(points, "params (whole network)", "MNIST test accuracy (%, no fine-tuning)",
                  "Formats at the same params ratios", [", ".join(result["models"]) + "; one front per model"])


def write_results(result: dict) -> None:
    """formats.md and formats.png from ``result`` (the contents of formats.json)."""
    (RESULTS / "formats.md").write_text(markdown(result))
    write_pareto(RESULTS / "formats.png", pareto(result))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", default=",".join(MODELS), help=f"comma-separated subset of {', '.join(MODELS)}")
    p.add_argument("--formats", default=",".join(FORMATS))
    p.add_argument("--batches", default="1,32", help="latency batch sizes (default 1,32)")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--min-time", type=float, default=0.1, help="seconds timed per batch size and round")
    p.add_argument("--samples", type=int, default=10000, help="test samples for accuracy (default all 10k)")
    p.add_argument("--render", action="store_true", help="only rewrite formats.md and .png from formats.json")
    args = p.parse_args()
    if args.render:
        write_results(json.loads((RESULTS / "formats.json").read_text()))
        return 0
    args.batches = [int(b) for b in args.batches.split(",")]
    test = load_dataset("mnist:test")
    data = Dataset(test.x[: args.samples], test.y[: args.samples], test.name)
    wanted = args.models.split(",")
    json_path = RESULTS / "formats.json"
    result = json.loads(json_path.read_text()) if json_path.exists() else {"models": {}}
    command = "OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 python " + shlex.join(sys.argv)
    RESULTS.mkdir(parents=True, exist_ok=True)
    result["cp_256x256x3x3"] = cp_large_kernel_seconds()
    with tempfile.TemporaryDirectory() as tmp:
        for name in wanted:
            path = MODELS[name]
            if not path.exists():
                print(f"{name}: {path} not found, skipped", flush=True)
                continue
            entry = {"path": str(path), "command": command, "data": data.name, "samples": len(data.x),
                     "rounds": args.rounds, "batches": args.batches,
                     "params": count_params(to_proto(load_model(path))), "original": {}, "rows": []}
            for ratio in RATIOS:
                rows = []
                for fmt in args.formats.split(","):
                    out = Path(tmp) / f"{name}_{fmt.replace('/', '_')}_{ratio.denominator}.onnx"
                    rows.append(compress_row(path, fmt, ratio, out))
                    r = rows[-1]
                    print(f"{name} r={ratio} {fmt}: " + (r.get("failed") or f"{r['params']} params, "
                          f"err {r['mean_rel_err']:.3f}, {r['compress_s']:.1f} s, dense {list(r['dense'])}"),
                          flush=True)
                entry["original"][str(ratio)] = measure(path, rows, data, args)
                entry["rows"] += rows
                print(f"{name} r={ratio}: measured", flush=True)
            result["models"][name] = entry
            result["missing"] = [m for m in MODELS if m not in result["models"]]
            json_path.write_text(json.dumps(result, indent=1) + "\n")
            write_results(result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
