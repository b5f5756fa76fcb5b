"""LWIQ on real pretrained third-party models: a CTC text recogniser (sequence output) and a text detector
(probability map: k-means pseudo-classes), with realistic generated inputs and no labels.

    python benchmarks/lwiq_real.py [--models ocr_rec,ocr_det] [--samples 200] [--formats tt]

Models and inputs come from ``benchmarks/zoo.py`` (pinned PyPI wheels, SHA-256 checked; rendered text
lines for the recogniser, synthetic document pages for the detector, each preprocessed as rapidocr does).
Per model: the LWIQ analysis (targets, proxy accuracy per layer, marginal gain, score, and the sensitivity
curves in ``--formats``), its wall time, written to ``benchmarks/results/lwiq_real.{md,json}``.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import zoo  # noqa: E402

from ttcompile.analysis.lwiq import analyze  # noqa: E402
from ttcompile.atomic import write_bytes_atomic  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
SIZES = {"ocr_det": 320}  # the detector is fully convolutional: smaller pages keep the run short


def run(name: str, samples: int, formats: list[str], pseudo: int) -> dict:
    model = zoo.ZOO[name]
    shapes = dict(model.input_shapes)
    if name in SIZES:
        inputs = zoo.det_inputs(samples, seed=0, size=SIZES[name])
        shapes = {k: (*v[:2], SIZES[name], SIZES[name]) for k, v in shapes.items()}
    else:
        inputs = model.inputs(samples, seed=0)
    (x,) = inputs.values()
    with tempfile.TemporaryDirectory() as d:
        calib = Path(d) / "calib.npz"
        np.savez(calib, x=x.astype(np.float32))
        a = analyze(model.path(), str(calib), formats=formats, pseudo_classes=pseudo, batch=16, input_shapes=shapes,
                    progress=True)
    layers = [{"layer": ls.layer.name, "kind": ls.layer.kind, "params": ls.layer.params,
               "acc": ls.proxy_accuracy, "gain": ls.gain, "score": ls.score,
               "curve": {f: [[max(p.ranks), round(p.drop, 4)] for p in a.curves[f][ls.layer.name].points]
                         for f in a.curves if ls.layer.name in a.curves[f]},
               "transfer": {f: round(a.curves[f][ls.layer.name].transfer, 3)
                            for f in a.curves if ls.layer.name in a.curves[f]}} for ls in a.layers]
    return {"model": name, "file": str(model.path()), "samples": samples, "input": list(x.shape[1:]),
            "targets": a.targets, "labels": a.calibration["labels"], "input_accuracy": a.input_accuracy,
            "time_s": a.time_s, "layers": layers}


def markdown(results: list[dict], command: str) -> str:
    lines = ["# LWIQ on real pretrained models (no labels)", "", f"Command: `{command}`", ""]
    for r in results:
        lines += [f"## {r['model']}: {r['samples']} generated inputs {tuple(r['input'])}, {r['labels']}",
                  "", f"Analysis {r['time_s']:.0f} s; proxy accuracy on the pooled input {r['input_accuracy']:.3f}.",
                  "",
                  "| layer | kind | params | proxy acc | gain | score | t_l | candidates (max rank: d) |",
                  "|---|---|---|---|---|---|---|---|"]
        for ls in r["layers"]:
            curve = "; ".join(f"{f}: " + ", ".join(f"{k}:{d:.2f}" for k, d in pts[:: max(1, len(pts) // 5)])
                              for f, pts in ls["curve"].items())
            transfer = ", ".join(f"{t:.2f}" for t in ls.get("transfer", {}).values()) or "-"
            lines.append(f"| {ls['layer']} | {ls['kind']} | {ls['params']:,} | {ls['acc']:.3f} | {ls['gain']:+.3f} "
                         f"| {ls['score']:.3f} | {transfer} | {curve} |")
        lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", default="ocr_rec,ocr_det")
    p.add_argument("--samples", type=int, default=200)
    p.add_argument("--formats", default="tt", help="formats to measure curves in ('' for scores only)")
    p.add_argument("--pseudo-classes", type=int, default=10)
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "lwiq_real"))
    args = p.parse_args(argv)
    formats = [f for f in args.formats.split(",") if f]
    results = [run(name, args.samples, formats, args.pseudo_classes) for name in args.models.split(",")]
    out = Path(args.out)
    command = " ".join(["python", *sys.argv])
    write_bytes_atomic(out.with_suffix(".json"), (json.dumps(results, indent=1) + "\n").encode())
    write_bytes_atomic(out.with_suffix(".md"), markdown(results, command).encode())
    print(markdown(results, command))
    return 0


if __name__ == "__main__":
    sys.exit(main())
