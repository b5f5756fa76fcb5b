"""``ttcompile compress MODEL -o OUT``: ``ttcompile.compress`` with the options, then OUT and OUT's plan.

Nothing is written until the compressed model passed ``onnx.checker``, ran in ONNX Runtime and passed the
verification gate (``ttcompile.rewrite.gate``); then OUT and its plan are written as one atomic pair. A
failed gate exits with code 3, bad input with 2; either way no file is created or changed."""

from __future__ import annotations

import argparse
from pathlib import Path

import ttcompile
from ttcompile import modelfile
from ttcompile.analysis import calibrated
from ttcompile.cli.argtypes import batch_int, positive_float
from ttcompile.cli.cli_options import add_plan_arguments, plan_kwargs, plan_table
from ttcompile.cli.compress_options import (
    add_budget_arguments,
    add_calibration_arguments,
    add_training_arguments,
    compress_kwargs,
    describe,
)
from ttcompile.errors import cli_text
from ttcompile.paths import check_output, check_outputs
from ttcompile.rewrite.pipeline import Compressed, plan_path


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_plan_arguments(p)
    p.add_argument("-o", "--output", required=True, help="compressed model to write (its plan goes beside it)")
    p.add_argument("--plan", help="apply this saved plan exactly instead of planning")
    p.add_argument("--data", help="inputs for the output comparison: .npz with x (or one array per model input, "
                   "by name), mnist[:split] or digits")
    p.add_argument("--samples", type=batch_int, default=64, help="how many inputs to compare on (default 64)")
    p.add_argument("--max-error", type=positive_float, metavar="E",
                   help="fail (exit 3, nothing written) when the relative output error exceeds E "
                        "(default: the limit predicted from the layers' reconstruction errors, see "
                        "ttcompile.rewrite.gate)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    add_budget_arguments(p)
    add_calibration_arguments(p)
    add_training_arguments(p)


def check_paths(args: argparse.Namespace) -> None:
    """Before any work: OUT, its data file and its plan are writable files that are none of the inputs (nor
    MODEL's external data)."""
    inputs = modelfile.input_files("MODEL", args.model) + [(f"--{k}", getattr(args, k, None))
                                                            for k in ("plan", "data", "train", "val", "analysis",
                                                                      "calib")]
    check_output(args.output, "-o")  # a name at all, before deriving its plan's name
    check_outputs(inputs, [*modelfile.output_files("-o", args.output), ("plan of -o", plan_path(args.output))])


def compress(args: argparse.Namespace) -> Compressed:
    """``ttcompile.compress`` on MODEL with the options; writes nothing."""
    return ttcompile.compress(args.model, **plan_kwargs(args), **compress_kwargs(args), plan=args.plan,
                              data=args.data, samples=args.samples, max_error=args.max_error,
                              progress=not args.quiet)


def report_lines(result: Compressed) -> list[str]:
    """The plan table, the allocator's and the calibration's summaries, skipped layers, output errors, verdict."""
    plan, report = result.plan, result.report
    lines = [plan_table(plan)]
    if "allocator" in plan.settings:
        lines.append(describe(plan))
    if "calibration" in plan.settings:
        lines.append(calibrated.records_table(plan))
    lines += [f"skipped {r.name}: {r.reason}" for r in report.skipped]
    lines += [f"output {name}: "
              + (f"{report.unchecked[name]}: the comparison checks nothing" if name in report.unchecked
                 else f"relative error {err:.3e} vs original") + f" on {report.compared_on}"
              for name, err in report.output_errors.items()]
    v = report.verdict
    limit = "finite" if v.limit is None else f"<= {v.limit:.2e}"
    lines.append(f"verification passed: output error {v.measured:.3e}, allowed {limit} ({cli_text(v.basis)})")
    return lines


def _kib(paths: list[Path]) -> str:
    return f"{sum(p.stat().st_size for p in paths) / 1024:.1f}"


def run(args: argparse.Namespace) -> int:
    check_paths(args)
    result = compress(args)
    print("\n".join(report_lines(result)))
    result.save(args.output)
    print(f"rewritten layers' weights were {result.report.weights}; their chains are {result.report.chains}")
    written = modelfile.model_files(result.proto(), args.output)
    data = f" with its weights in {written[0]}" if len(written) > 1 else ""
    inputs = [p for _, p in modelfile.input_files("MODEL", args.model)]
    print(f"wrote {args.output}{data} ({_kib(written)} KiB, input {_kib(inputs)} KiB) and {plan_path(args.output)}")
    return 0
