"""``ttcompile analyze MODEL --calib D -o analysis.json``: LWIQ significance score of every layer."""

from __future__ import annotations

import argparse

import ttcompile
from ttcompile.analysis.sensitivity import CURVE_SAMPLES, TRANSFER_FORMULA
from ttcompile.analysis.spans import READOUTS
from ttcompile.benchmark.tables import align, count
from ttcompile.cli.argtypes import batch_int, float_in, int_in
from ttcompile.cli.cli_options import parse_mode_overrides
from ttcompile.paths import check_outputs
from ttcompile.shapes import parse_input_shapes


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", help="ONNX model to analyse (never modified)")
    p.add_argument("--calib", required=True, help="calibration data: .npz with x (and optional y), or a dataset "
                                                  "spec such as mnist:val; without y the model's top-1 is used")
    p.add_argument("-o", "--output", required=True, help="analysis JSON to write (input of compress --analysis)")
    p.add_argument("--batch", type=batch_int, default=256, help="samples per ORT run (memory stays bounded)")
    p.add_argument("--holdout", type=float_in(0.0, 1.0, low_open=False), default=0.5,
                   help="fraction of samples held out for proxy accuracy")
    p.add_argument("--seed", type=int, default=0, help="seed of the imprint/held-out split")
    p.add_argument("--format", default="tt", help="format(s) to measure rank-sensitivity curves in, comma "
                                                  "separated (default tt); compress --format must be one of them")
    p.add_argument("--modes", action="append", metavar="LAYER=IN:OUT", help="factorisation override, as compress")
    p.add_argument("--pseudo-classes", type=int, default=10,
                   help="classes for k-means pseudo-labels when the model output is no class score (default 10)")
    p.add_argument("--readout", choices=READOUTS, default="next",
                   help="classify a layer's rank candidates at the next layer's probe (default) or its own")
    p.add_argument("--curve-samples", type=int_in(1, 1 << 20), default=CURVE_SAMPLES,
                   help=f"held-out samples each rank candidate is judged on (default {CURVE_SAMPLES})")
    p.add_argument("--input-shape", action="append", metavar="NAME=DxD..", help="fix dynamic input dims")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    check_outputs([("MODEL", args.model), ("--calib", args.calib)], [("-o", args.output)])
    formats = [f for f in args.format.split(",") if f]
    a = ttcompile.analyze(args.model, args.calib, formats=formats, modes=parse_mode_overrides(args.modes),
                          batch=args.batch, holdout=args.holdout, seed=args.seed,
                          input_shapes=parse_input_shapes(args.input_shape), pseudo_classes=args.pseudo_classes,
                          readout=args.readout, curve_samples=args.curve_samples, progress=not args.quiet)
    a.save(args.output)
    c = a.calibration
    headers = ["layer", "kind", "params", "MACs", "probe (after)", "D", "acc", "acc prev", "gain", "score"]
    rows = [[ls.layer.name, ls.layer.kind, count(ls.layer.params), count(ls.layer.macs),
             "+".join([ls.layer.op_type, *ls.through]), str(ls.embedding), f"{ls.proxy_accuracy:.4f}",
             f"{ls.previous_accuracy:.4f}", f"{ls.gain:+.4f}", f"{ls.score:.4f}"] for ls in a.layers]
    print(f"{args.model}: LWIQ on {c['source']}: {c['imprint']} imprint + {c['held_out']} held-out samples, "
          f"{c['classes']} classes, labels: {c['labels']}")
    if c["note"]:
        print(f"note: {c['note']}")
    print("\n".join(align(headers, rows)))
    print(f"proxy accuracy on the pooled model input (acc_0): {a.input_accuracy:.4f}"
          + (f"; model accuracy on the held-out split: {c['model_accuracy_held_out']:.4f}"
             if c["model_accuracy_held_out"] is not None else ""))
    print(f"score: {a.formula} (eps = {a.epsilon:g})")
    for fmt, curves in a.curves.items():
        print(f"\nsensitivity curves ({fmt}): {a.drop_formula}")
        crows = [[name, f"{c.accuracy:.4f}", str(len(c.points)), f"{c.transfer:.3f}", c.output or c.readout,
                  ", ".join(f"r{max(p.ranks)}:{p.drop:.3f}" for p in c.points[:: max(1, len(c.points) // 6)])]
                 for name, c in curves.items()]
        print("\n".join(align(["layer", "acc (dense)", "candidates", "t_l", "output at", "d_l(r) at some ranks"],
                               crows)))
        print(f"t_l: {TRANSFER_FORMULA}")
    print(f"wrote {args.output} in {a.time_s:.2f} s ({c['batches']} batches of <= {c['batch']})")
    return 0
