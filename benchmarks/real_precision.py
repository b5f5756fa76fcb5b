"""FP16 and int8-quantized versions of real zoo models: compressed like the float32 originals?

For each zoo classifier/recogniser (``--models``), four variants of the same pretrained model:
``float32`` (as shipped), ``float16`` (``ttcompile.models.fp16.to_fp16``: weights, inputs and outputs in
float16), ``int8-qdq`` (``onnxruntime.quantization.quantize_static``, QDQ format, per-channel, calibrated
on 8 realistic inputs of another seed) and ``int8-dynamic`` (``quantize_dynamic``, int8 weights). Each
variant is compressed with each format at full rank (``--rank 4096 --force``: the rewrite itself) and at
``--ratio 0.5``, and compared with *its own* original on the zoo's realistic inputs (seed 0; cast to
float16 for the float16 variant): relative error of the first output (and against the shipped
float32 model's output), model-level agreement (top-1, or
identical CTC text), weight precision of the rewritten layers, size of the input and output files. No
fine-tuning. The question is whether the rows of one format agree across variants (the chains are
float32 for quantized models and float16 for the float16 one).

    OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 python benchmarks/real_precision.py [--models ocr_cls,orientation]

Writes ``benchmarks/results/real_precision.{md,json}``.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx

sys.path.insert(0, str(Path(__file__).resolve().parent))

from real_models import RESULTS, agreement, first_output  # noqa: E402
from zoo import ZOO, ZooModel  # noqa: E402

from ttcompile.atomic import write_bytes_atomic  # noqa: E402
from ttcompile.benchmark.plot import Pareto, Point, write_pareto  # noqa: E402
from ttcompile.benchmark.tables import align  # noqa: E402
from ttcompile.feeds import split_feeds  # noqa: E402
from ttcompile.graph import load_model  # noqa: E402
from ttcompile.layers import find_layers  # noqa: E402
from ttcompile.models.fp16 import to_fp16  # noqa: E402
from ttcompile.planning.plan import make_plan  # noqa: E402
from ttcompile.rewrite.pipeline import compress_in_memory, save_pair  # noqa: E402
from ttcompile.rewrite.quant import precision_summary  # noqa: E402
from ttcompile.rewrite.verify import run_errors, run_split  # noqa: E402

FORMATS = ["svd", "tt", "tucker"]
SETTINGS = {"full rank": {"rank": 4096, "force": True}, "ratio 0.5": {"ratio": 0.5}}
SAMPLES = {"ocr_cls": 32, "orientation": 16, "ocr_rec": 12}


def variants(model: ZooModel, folder: Path) -> dict[str, Path]:
    """float32 / float16 / int8-qdq / int8-dynamic files of ``model`` in ``folder``."""
    from onnxruntime.quantization import (
        CalibrationDataReader,
        QuantFormat,
        QuantType,
        quantize_dynamic,
        quantize_static,
    )

    calib = model.inputs(8, seed=1)

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.batches = iter([{k: v[i:i + 1] for k, v in calib.items()} for i in range(8)])

        def get_next(self):
            return next(self.batches, None)

    src = model.path()
    out = {"float32": src, "float16": folder / "fp16.onnx", "int8-qdq": folder / "qdq.onnx",
           "int8-dynamic": folder / "dyn.onnx"}
    onnx.save(to_fp16(onnx.load(str(src))), out["float16"])
    quantize_static(str(src), str(out["int8-qdq"]), Reader(), quant_format=QuantFormat.QDQ, per_channel=True)
    quantize_dynamic(str(src), str(out["int8-dynamic"]), weight_type=QuantType.QInt8)
    return out


def bench_model(model: ZooModel, formats: list[str], folder: Path) -> list[dict]:
    feeds32 = model.inputs(SAMPLES[model.name], seed=0)
    rows = []
    shipped = onnx.load(str(model.path()))
    ref32 = run_split(shipped, split_feeds(shipped, feeds32))
    for variant, path in variants(model, folder).items():
        original = onnx.load(str(path))
        feeds = {k: v.astype(np.float16) for k, v in feeds32.items()} if variant == "float16" else feeds32
        ref = run_split(original, split_feeds(original, feeds))
        for fmt in formats:
            for setting, kwargs in SETTINGS.items():
                t0 = time.perf_counter()
                ir_model = load_model(path)
                plan = make_plan(find_layers(ir_model, model.input_shapes), fmt, model_path=path, **kwargs)
                out = folder / f"{variant}_{fmt}.onnx"
                results, proto = compress_in_memory(ir_model, plan, progress=False)
                save_pair(proto, plan, out)
                got = run_split(proto, split_feeds(proto, feeds))
                rewritten = [lp.layer for lp in plan.layers if lp.action == "compress"]
                rows.append({
                    "model": model.name, "variant": variant, "format": fmt, "setting": setting,
                    "weights": precision_summary(rewritten), "compressed": sum(r.rewritten for r in results),
                    "output_error": run_errors(ref, got)[original.graph.output[0].name],
                    "error_vs_float32": run_errors(ref32, got)[original.graph.output[0].name],
                    "agreement": agreement(model, first_output(ref, original), first_output(got, proto)),
                    "metric": model.metric, "in_kib": round(path.stat().st_size / 1024, 1),
                    "out_kib": round(out.stat().st_size / 1024, 1), "seconds": round(time.perf_counter() - t0, 2),
                })
                print(_row(rows[-1]), flush=True)
    return rows


def _row(r: dict) -> list[str]:
    return [r["model"], r["variant"], r["format"], r["setting"], r["weights"], str(r["compressed"]),
            f"{r['output_error']:.3g}", f"{r['error_vs_float32']:.3g}", f"{100 * r['agreement']:.1f}% {r['metric']}",
            f"{r['in_kib']:.0f}",
            f"{r['out_kib']:.0f}", f"{r['seconds']:.1f}"]


HEADERS = ["model", "variant", "format", "setting", "rewritten weights", "layers", "out.err", "vs f32", "agree",
           "in KiB", "out KiB", "s"]


def pareto(doc: dict) -> Pareto:
    """Agreement with the variant's own uncompressed model vs file size per weight precision; one front per
    model. The ``full rank`` rows (a check of the rewrite) are left out."""
    points = [Point(r["out_kib"], 100 * r["agreement"], r["variant"], r["model"]) for r in doc["rows"]
              if r.get("agreement") is not None and r.get("out_kib") and r["setting"] != "full rank"]
    return Pareto(points, "compressed file size (KiB)", "agreement with the uncompressed variant (%)",
                  "Real models across weight precisions (svd / tt / tucker, no fine-tuning)",
                  [", ".join(dict.fromkeys(r["model"] for r in doc["rows"])) + "; one front per model"])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", default="ocr_cls,orientation")
    p.add_argument("--formats", default=",".join(FORMATS))
    args = p.parse_args(argv)
    t0 = time.perf_counter()
    rows = []
    for name in args.models.split(","):
        with tempfile.TemporaryDirectory() as tmp:
            rows += bench_model(ZOO[name], args.formats.split(","), Path(tmp))
    wall = time.perf_counter() - t0
    command = "OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 python " + shlex.join(["benchmarks/real_precision.py",
                                                                               *(argv or sys.argv[1:])])
    md = ["# Real models in float32, float16, int8 QDQ and int8 dynamic: the same compression (no fine-tuning)",
          "", f"`{command}` ({wall:.0f} s wall, 1 thread)", "",
          "`out.err` and `agree` are against each variant's own uncompressed model, `vs f32` against the "
          "shipped float32 one. The chains of quantized models are float32 and drop the quantization of "
          "the rewritten layers' activations (dynamic) or keep the surrounding Q/DQ pairs (QDQ).", "", "```",
          *align(HEADERS, [_row(r) for r in rows]), "```", ""]
    RESULTS.mkdir(exist_ok=True)
    write_bytes_atomic(RESULTS / "real_precision.md", "\n".join(md).encode())
    doc = {"command": command, "wall_seconds": round(wall, 1), "rows": rows}
    write_pareto(RESULTS / "real_precision.png", pareto(doc))
    write_bytes_atomic(RESULTS / "real_precision.json", (json.dumps(doc, indent=1) + "\n").encode())
    print("\n".join(md))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
