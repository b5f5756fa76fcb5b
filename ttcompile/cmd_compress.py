"""``ttcompile compress MODEL -o OUT``: plan, rewrite, check and compare; writes OUT and OUT's plan."""

from __future__ import annotations

import argparse
from pathlib import Path

import onnx
import onnx_ir as ir

from ttcompile import calibrated
from ttcompile.allocators import add_budget_arguments, describe
from ttcompile.cli_options import add_plan_arguments, build_plan, plan_table
from ttcompile.compress import apply_plan
from ttcompile.errors import UserError
from ttcompile.graph import load_model, save_model, to_proto
from ttcompile.plan import Plan
from ttcompile.shapes import parse_input_shapes
from ttcompile.verify import check_model, graph_inputs, random_inputs, relative_errors


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_plan_arguments(p)
    p.add_argument("-o", "--output", required=True, help="compressed model to write (its plan goes beside it)")
    p.add_argument("--plan", help="apply this saved plan exactly instead of planning")
    p.add_argument("--data", help="inputs for the output comparison: .npz with x, mnist[:split] or digits")
    p.add_argument("--samples", type=int, default=64, help="how many inputs to compare on (default 64)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    add_budget_arguments(p)
    calibrated.add_arguments(p)
    add_training_arguments(p)


def add_training_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("training (core-space distillation from MODEL, optional learned rank selection)")
    g.add_argument("--train", metavar="D", help="train the compressed cores on D (path.npz | mnist[:split] | ...)")
    g.add_argument("--val", metavar="D", help="validation data; the best fine-tuning epoch is kept")
    g.add_argument("--finetune-epochs", type=int, default=10, help="epochs at the final ranks (default 10)")
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
    g.add_argument("--threads", type=int, default=1, help="torch/ORT threads while training (default 1)")


def plan_path(output: str | Path) -> Path:
    """``out.onnx`` -> ``out.plan.json``."""
    return Path(output).with_suffix(".plan.json")


def _comparison_source(args) -> str | None:
    return args.data or getattr(args, "calib", None)


def _comparison_inputs(args, original: onnx.ModelProto) -> dict:
    spec = _comparison_source(args)
    if not spec:
        return random_inputs(original, batch=min(args.samples, 8), input_shapes=parse_input_shapes(args.input_shape))
    inputs = graph_inputs(original)
    if len(inputs) != 1:
        raise UserError(f"--data feeds one input, the model has {len(inputs)}")
    return {inputs[0].name: calibrated.calibration_inputs(spec, original, args.samples)}


def compress_model(args: argparse.Namespace):
    """Plan (or load a plan), rewrite, save atomically; returns (plan, rewrite results, saved proto)."""
    src, out = Path(args.model), Path(args.output)
    if out.exists() and src.exists() and out.resolve() == src.resolve():
        raise UserError(f"{out}: refusing to overwrite the input model; choose another -o")
    if args.plan:
        model, plan = load_model(src), Plan.load(args.plan)
    else:
        model, plan = build_plan(args)
    if args.train:
        from ttcompile.rank_select import train_to_file

        return train_to_file(args, model, plan, out)
    if args.rank_select:
        raise UserError("--rank-select needs training data (--train)")
    model, cores, transform = calibrated.prepare(args, model, plan)
    results, proto = compress_to_file(model, plan, out, progress=not args.quiet, cores=cores, transform=transform)
    return plan, results, proto


def check_some_compressed(plan: Plan) -> None:
    if not any(lp.action == "compress" for lp in plan.layers):
        reasons = "; ".join(f"{lp.name}: {lp.reason}" for lp in plan.layers)
        raise UserError(f"{plan.model}: no layer would be compressed ({reasons})")


def save_checked(proto: onnx.ModelProto, plan: Plan, out: Path) -> None:
    """Check the model, write OUT and OUT's plan atomically."""
    check_model(proto)
    save_model(proto, out)
    plan.save(plan_path(out))


def compress_to_file(model: ir.Model, plan: Plan, out: Path, progress: bool = True, cores: dict | None = None,
                     transform=None):
    """Apply ``plan`` to ``model`` (emitting ``cores`` where given), optionally ``transform`` the compressed
    proto (e.g. distillation), check it, write OUT and OUT's plan atomically."""
    check_some_compressed(plan)
    results = apply_plan(model, plan, progress=progress, cores=cores)
    proto = to_proto(model)
    if transform is not None:
        proto = transform(proto)
    save_checked(proto, plan, out)
    return results, proto


def run(args: argparse.Namespace) -> int:
    plan, results, proto = compress_model(args)
    original = onnx.load(args.model)
    print(plan_table(plan))
    if "allocator" in plan.settings:
        print(describe(plan))
    if "calibration" in plan.settings:
        print(calibrated.records_table(plan))
    for r in results:
        if not r.rewritten:
            print(f"skipped {r.name}: {r.reason}")
    errors = relative_errors(original, proto, _comparison_inputs(args, original))
    source = _comparison_source(args) or "random inputs"
    for name, err in errors.items():
        print(f"output {name}: relative error {err:.3e} vs original on {source}")
    print(f"wrote {args.output} ({Path(args.output).stat().st_size / 1024:.1f} KiB) and {plan_path(args.output)}")
    return 0
