"""Every format on the real pretrained models of ``benchmarks/zoo.py``, judged on their realistic inputs.

For each zoo model (OCR detector / recogniser / direction classifier, document orientation, silero-vad
in its fixed-batch-1 and its opset-15 export) and each format: ``find_layers`` at the zoo's input
shapes, ``make_plan(format, ratio=R)`` (default R = 0.5: each layer keeps about half its parameters;
layers where the chain would not save parameters, or would need more MACs than dense, stay dense; one
more row per model: svd at full rank, forced, which must reproduce the model),
``compress_in_memory`` + ``save_pair`` (rewrite + onnx.checker + atomic save), then the original and the compressed file
run in ONNX Runtime (1 thread) on the same realistic inputs, in runs of what the model's input allows
(``ttcompile.feeds.split_feeds``). No fine-tuning: this is the decomposition at initialisation.

Columns: layers found / compressed / skipped (cannot be rewritten, with the reasons counted) / dense
(would not pay); params of the compressible layers before and after (plan totals); relative output
error of the first output ``||y - y_ref|| / ||y_ref||`` (the worst over all outputs in the JSON); the
model-level agreement (top-1 for classifiers, identical CTC-decoded text for the recogniser, agreement
of the thresholded map / speech decision for detector and VAD); compression wall time.

    OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 python benchmarks/real_models.py [--models a,b] [--formats x,y]

Writes ``benchmarks/results/real_models.{md,json}``.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import numpy as np
import onnx

sys.path.insert(0, str(Path(__file__).resolve().parent))

from zoo import ZOO, ZooModel, ctc_decode  # noqa: E402

from ttcompile.atomic import write_bytes_atomic  # noqa: E402
from ttcompile.benchmark.plot import Pareto, Point, write_pareto  # noqa: E402
from ttcompile.benchmark.tables import align, count  # noqa: E402
from ttcompile.feeds import split_feeds  # noqa: E402
from ttcompile.graph import load_model  # noqa: E402
from ttcompile.layers import find_layers  # noqa: E402
from ttcompile.planning.plan import make_plan  # noqa: E402
from ttcompile.rewrite.pipeline import compress_in_memory, save_pair  # noqa: E402
from ttcompile.rewrite.verify import run_errors, run_split  # noqa: E402

FORMATS = ["tt", "tr", "tucker", "cp", "svd", "stt", "str", "sttu"]
SAMPLES = {"ocr_rec": 32, "ocr_cls": 64, "ocr_det": 3, "orientation": 32, "vad": 200, "vad_op15": 200}
RESULTS = Path(__file__).resolve().parent / "results"


def first_output(runs: list[dict[str, np.ndarray]], proto: onnx.ModelProto) -> np.ndarray:
    name = proto.graph.output[0].name
    return np.concatenate([r[name] for r in runs])


def agreement(model: ZooModel, ref: np.ndarray, got: np.ndarray) -> float:
    """Model-level agreement of the compressed model's first output with the original's (see module doc)."""
    if model.metric == "top1":
        return float(np.mean(ref.argmax(axis=1) == got.argmax(axis=1)))
    if model.metric == "ctc":
        return float(np.mean([a == b for a, b in zip(ctc_decode(ref), ctc_decode(got))]))
    return float(np.mean((ref > model.threshold) == (got > model.threshold)))


def bench_model(model: ZooModel, formats: list[str], ratio: float, out_dir: Path) -> list[dict]:
    path = model.path()
    original = onnx.load(str(path))
    feeds = model.inputs(SAMPLES[model.name], seed=0)
    ref = run_split(original, split_feeds(original, feeds))
    rows = []
    runs = [("svd", "full rank", {"rank": 1 << 20, "force": True})] + [(f, f"ratio {ratio}", {"ratio": ratio})
                                                                      for f in formats]
    for fmt, setting, kwargs in runs:
        t0 = time.perf_counter()
        ir_model = load_model(path)
        layers = find_layers(ir_model, model.input_shapes or None)
        plan = make_plan(layers, fmt, model_path=path, **kwargs)
        results, proto = compress_in_memory(ir_model, plan, progress=False)
        save_pair(proto, plan, out_dir / f"{model.name}_{fmt}.onnx")
        seconds = time.perf_counter() - t0
        got = run_split(proto, split_feeds(proto, feeds))
        errors = run_errors(ref, got)
        totals = plan.totals()
        skipped = [lp.reason for lp in plan.layers if lp.action == "skip"]
        rows.append({
            "model": model.name, "format": fmt, "setting": setting, "layers": len(plan.layers),
            "compressed": sum(r.rewritten for r in results),
            "rewrite_failed": [f"{r.name}: {r.reason}" for r in results if not r.rewritten],
            "skipped": len(skipped), "skip_reasons": dict(Counter(_reason_class(r) for r in skipped)),
            "dense": sum(lp.action == "dense" for lp in plan.layers),
            "params_before": totals["params_before"], "params_after": totals["params_after"],
            "output_error": errors[original.graph.output[0].name], "worst_output_error": max(errors.values()),
            "metric": model.metric,
            "agreement": agreement(model, first_output(ref, original), first_output(got, proto)),
            "samples": SAMPLES[model.name], "seconds": round(seconds, 2),
        })
        print(_row(rows[-1]), flush=True)
    return rows


def _reason_class(reason: str) -> str:
    """Group reasons that differ only in names/sizes, e.g. 'depthwise conv', 'no constant weight'."""
    return reason.split(" (")[0] if "shared by" not in reason else "weight shared by several nodes"


def _row(r: dict) -> list[str]:
    return [r["model"], r["format"], r["setting"], str(r["layers"]), str(r["compressed"]), str(r["skipped"]),
            str(r["dense"]),
            count(r["params_before"]), count(r["params_after"]), f"{r['output_error']:.3g}",
            f"{100 * r['agreement']:.1f}% {r['metric']}", f"{r['seconds']:.1f}"]


HEADERS = ["model", "format", "setting", "layers", "compressed", "skipped", "dense", "params", "params'", "out.err",
           "agree", "s"]


def pareto(doc: dict) -> Pareto:
    """Agreement with the original vs params after (% of before) per format; one front per model. The
    ``full rank`` rows (a check of the rewrite, more params than dense) are left out."""
    points = [Point(100 * r["params_after"] / r["params_before"], 100 * r["agreement"], r["format"], r["model"])
              for r in doc["rows"]
              if r.get("agreement") is not None and r.get("params_before") and r["setting"] != "full rank"]
    return Pareto(points, "params after compression (% of the original)",
                  "agreement with the original (%, top-1 or per model metric)", "Real models, no fine-tuning",
                  [", ".join(dict.fromkeys(r["model"] for r in doc["rows"])) + "; one front per model"])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", default=",".join(ZOO))
    p.add_argument("--formats", default=",".join(FORMATS))
    p.add_argument("--ratio", type=float, default=0.5)
    args = p.parse_args(argv)
    t0 = time.perf_counter()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models.split(","):
            rows += bench_model(ZOO[name], args.formats.split(","), args.ratio, Path(tmp))
    wall = time.perf_counter() - t0
    command = "OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 python " + shlex.join(["benchmarks/real_models.py",
                                                                               *(argv or sys.argv[1:])])
    reasons = Counter()
    for r in rows:
        if r["format"] == "tt":
            reasons.update({f"{r['model']}: {k}": v for k, v in r["skip_reasons"].items()})
    md = [f"# Real pretrained models, every format at ratio {args.ratio} (no fine-tuning)", "",
          f"`{command}` ({wall:.0f} s wall, 1 thread, {sys.platform})", "", "```",
          *align(HEADERS, [_row(r) for r in rows]), "```", "",
          "The `full rank` row (svd at every layer's rank cap, forced) checks the rewrite itself.", "",
          "Skipped layers (tt plan; the same layers in every format unless listed below):", "",
          *[f"- {k}: {v}" for k, v in sorted(reasons.items())],
          *[f"- rewrite failed, {r['model']} {r['format']}: {f}" for r in rows for f in r["rewrite_failed"]], ""]
    RESULTS.mkdir(exist_ok=True)
    write_bytes_atomic(RESULTS / "real_models.md", "\n".join(md).encode())
    doc = {"command": command, "wall_seconds": round(wall, 1), "ratio": args.ratio, "rows": rows}
    write_pareto(RESULTS / "real_models.png", pareto(doc))
    write_bytes_atomic(RESULTS / "real_models.json", (json.dumps(doc, indent=1) + "\n").encode())
    print("\n".join(md))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
