"""``ttcompile compress MODEL -o OUT``: plan, rewrite, check and compare; writes OUT and OUT's plan.

Nothing is written until the compressed model passed ``onnx.checker``, ran in ONNX Runtime and passed the
verification gate (``ttcompile.rewrite.gate``); then OUT and its plan are written as one atomic pair. A failed
gate exits with code 3, bad input with 2; either way no file is created or changed."""

from __future__ import annotations

import argparse
from pathlib import Path

import onnx
import onnx_ir as ir

from ttcompile import modelfile
from ttcompile.analysis import calibrated
from ttcompile.cli.argtypes import batch_int, count_int, positive_float, threads_int
from ttcompile.cli.cli_options import add_plan_arguments, build_plan, plan_table
from ttcompile.errors import UserError
from ttcompile.feeds import load_named_feeds
from ttcompile.graph import load_model, load_proto, to_proto
from ttcompile.layers import NON_FINITE, find_layers
from ttcompile.paths import check_output, check_outputs
from ttcompile.planning.allocators import add_budget_arguments, describe
from ttcompile.planning.plan import Plan
from ttcompile.rewrite.compress import RewriteResult, apply_plan, check_plan_layers
from ttcompile.rewrite.gate import enforce, floor_for, judge
from ttcompile.rewrite.quant import chain_precision, precision_summary
from ttcompile.rewrite.verify import check_model, graph_inputs, random_inputs, relative_errors
from ttcompile.shapes import parse_input_shapes


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
    calibrated.add_arguments(p)
    add_training_arguments(p)


def add_training_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("training (core-space distillation from MODEL, optional learned rank selection)")
    g.add_argument("--train", metavar="D", help="train the compressed cores on D (path.npz | mnist[:split] | ...)")
    g.add_argument("--val", metavar="D", help="validation data; the best fine-tuning epoch is kept")
    g.add_argument("--finetune-epochs", type=count_int, default=10, help="epochs at the final ranks (default 10)")
    g.add_argument("--rank-select", choices=["l0", "admm"], help="learn ranks with l0 gates, or ADMM on the dense "
                   "model, before fine-tuning")
    g.add_argument("--select-epochs", type=int, help="epochs of the rank-selection phase (default: finetune-epochs)")
    g.add_argument("--lambda", dest="lam", type=float, default=0.2, help="l0 penalty weight (default 0.2)")
    g.add_argument("--sigma", type=float, default=0.5, help="l0 gate noise (default 0.5)")
    g.add_argument("--mu-scale", type=float, default=1.0, help="l0 gate speed: mu = scale * trained value")
    g.add_argument("--l0-normalize", choices=["bond", "layer"], default="bond",
                   help="l0 penalty per bond: mean over its gates (Cao et al.), or 1/(largest rank - 1) per gate")
    g.add_argument("--target-cr", type=float, help="l0: freeze the gates once the whole model is compressed X times")
    g.add_argument("--rho", type=float, default=1e-3, help="ADMM penalty (default 1e-3)")
    g.add_argument("--lr", type=float, default=1e-3, help="peak learning rate (cosine decay to 0)")
    g.add_argument("--threads", type=threads_int, default=1,
                   help="torch/ORT threads while training, and ORT threads a latency budget is measured at (default 1)")
    g.add_argument("--backend", choices=["torch", "ort"], default="torch",
                   help="torch: core-space training (the [train] extra); ort: fine-tune the compressed graph "
                        "with onnxruntime-training (the [ort-training] extra, no torch; no --rank-select)")


def plan_path(output: str | Path) -> Path:
    """``out.onnx`` -> ``out.plan.json``."""
    return Path(output).with_suffix(".plan.json")


def _comparison_source(args) -> str | None:
    return args.data or getattr(args, "calib", None)


def _comparison_inputs(args, original: onnx.ModelProto) -> dict:
    spec = _comparison_source(args)
    if not spec:
        return random_inputs(original, batch=min(args.samples, 8), input_shapes=parse_input_shapes(args.input_shape))
    named = load_named_feeds(args.data, original) if args.data else None
    if named is not None:
        return named
    inputs = graph_inputs(original)
    if len(inputs) != 1:
        raise UserError(f"--data feeds one input, the model has {len(inputs)}")
    return {inputs[0].name: calibrated.calibration_inputs(spec, original, args.samples)}


def check_paths(args: argparse.Namespace) -> None:
    """Before any work: OUT, its data file and its plan are writable files that are none of the inputs (nor
    MODEL's external data)."""
    inputs = modelfile.input_files("MODEL", args.model) + [(f"--{k}", getattr(args, k, None))
                                                            for k in ("plan", "data", "train", "val", "analysis",
                                                                      "calib")]
    check_output(args.output, "-o")  # a name at all, before deriving its plan's name
    check_outputs(inputs, [*modelfile.output_files("-o", args.output), ("plan of -o", plan_path(args.output))])


def compress_model(args: argparse.Namespace):
    """Plan (or load a plan), rewrite (and train); returns (plan, rewrite results, proto). Writes nothing."""
    if args.plan:
        model, plan = load_model(args.model), Plan.load(args.plan)
        check_plan_layers(plan, find_layers(model, parse_input_shapes(args.input_shape)))
    else:
        model, plan = build_plan(args)
    if args.train and args.backend == "ort":
        return _train_with_ort(args, model, plan)
    if args.train:
        from ttcompile.train.backends import require_torch

        require_torch()
        from ttcompile.train.rank_select import train_compressed

        return train_compressed(args, model, plan)
    if args.rank_select:
        raise UserError("--rank-select needs training data (--train)")
    model, cores, transform = calibrated.prepare(args, model, plan)
    results, proto = compress_in_memory(model, plan, progress=not args.quiet, cores=cores, transform=transform)
    return plan, results, proto


def _train_with_ort(args: argparse.Namespace, model: ir.Model, plan: Plan):
    """``--train --backend ort``: the plan's cores, then fine-tuning of the compressed graph (no torch)."""
    from ttcompile.cli.cmd_finetune import epoch_printer
    from ttcompile.models.data import load_dataset
    from ttcompile.train.backends import require

    if args.rank_select:
        raise UserError(f"--rank-select {args.rank_select} is torch-only; use --backend torch")
    require("ort")
    from ttcompile.train.ort_compress import compress_and_finetune

    check_some_compressed(plan)
    val = load_dataset(args.val) if args.val else None
    metric = "accuracy" if val is not None and val.y is not None else "agreement"
    results, proto, _ = compress_and_finetune(
        model, plan, load_dataset(args.train), val, epochs=args.finetune_epochs, progress=not args.quiet,
        on_epoch=epoch_printer(args.finetune_epochs, metric), lr=args.lr, threads=args.threads or None)
    check_some_rewritten(plan, results)
    check_model(proto)
    return plan, results, proto


def check_some_compressed(plan: Plan) -> None:
    """A plan that compresses nothing, or a model with non-finite weights (its outputs cannot be
    compared), is refused."""
    bad = [lp for lp in plan.layers if (lp.layer.skip or "").endswith(NON_FINITE)]
    if bad:
        raise UserError(f"{plan.model}: layer {bad[0].name!r}: {bad[0].layer.skip}")
    if not any(lp.action == "compress" for lp in plan.layers):
        reasons = "; ".join(f"{lp.name}: {lp.reason}" for lp in plan.layers)
        raise UserError(f"{plan.model}: no layer would be compressed ({reasons})")


def check_some_rewritten(plan: Plan, results: list[RewriteResult]) -> None:
    """A run in which every planned rewrite failed is an error, not a copy of the input."""
    if not any(r.rewritten for r in results):
        reasons = "; ".join(f"{r.name}: {r.reason}" for r in results)
        raise UserError(f"{plan.model}: no layer could be rewritten ({reasons})")


def compress_in_memory(model: ir.Model, plan: Plan, progress: bool = True, cores: dict | None = None,
                       transform=None) -> tuple[list[RewriteResult], onnx.ModelProto]:
    """Apply ``plan`` to ``model`` (emitting ``cores`` where given), optionally ``transform`` the compressed
    proto (e.g. distillation on the calibration data), and check the result with onnx.checker."""
    check_some_compressed(plan)
    results = apply_plan(model, plan, progress=progress, cores=cores)
    check_some_rewritten(plan, results)
    proto = to_proto(model)
    if transform is not None:
        proto = transform(proto)
    check_model(proto)
    return results, proto


def save_pair(proto: onnx.ModelProto, plan: Plan, out: str | Path) -> list[Path]:
    """OUT's plan and OUT (with OUT's data file when large) as one atomic step: all written and fsynced,
    then the plan renamed, then the data, then OUT. Returns the files written."""
    return modelfile.save(proto, out, {plan_path(out): plan.to_bytes()})


def _kib(paths: list[Path]) -> str:
    return f"{sum(p.stat().st_size for p in paths) / 1024:.1f}"


def run(args: argparse.Namespace) -> int:
    check_paths(args)
    plan, results, proto = compress_model(args)
    original = load_proto(args.model)
    print(plan_table(plan))
    if "allocator" in plan.settings:
        print(describe(plan))
    if "calibration" in plan.settings:
        print(calibrated.records_table(plan))
    for r in results:
        if not r.rewritten:
            print(f"skipped {r.name}: {r.reason}")
    errors = relative_errors(original, proto, _comparison_inputs(args, original),
                             names=(args.model, "the compressed model"))
    source = _comparison_source(args) or "random inputs"
    for name, err in errors.items():
        print(f"output {name}: relative error {err:.3e} vs original on {source}")
    verdict = judge(errors, [r.error for r in results if r.rewritten], args.max_error, trained=bool(args.train),
                    floor=floor_for(original))
    enforce(verdict)
    limit = "finite" if verdict.limit is None else f"<= {verdict.limit:.2e}"
    print(f"verification passed: output error {verdict.measured:.3e}, allowed {limit} ({verdict.basis})")
    written = save_pair(proto, plan, args.output)
    rewritten = [lp.layer for lp in plan.layers if lp.action == "compress"]
    print(f"rewritten layers' weights were {precision_summary(rewritten)}; their chains are "
          f"{chain_precision(proto, [layer.name for layer in rewritten])}")
    data = f" with its weights in {written[-2]}" if modelfile.data_path(args.output) in written else ""
    inputs = [p for _, p in modelfile.input_files("MODEL", args.model)]
    print(f"wrote {args.output}{data} ({_kib(written[1:])} KiB, input {_kib(inputs)} KiB) and "
          f"{plan_path(args.output)}")
    return 0
