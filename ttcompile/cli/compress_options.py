"""Option groups of ``ttcompile compress`` (budget, calibration-only compression, training) and what they
become for ``ttcompile.compress``; the budget summary line it prints."""

from __future__ import annotations

import argparse

from ttcompile.analysis.calibrated import RECOVER_EPOCHS, RECOVER_LR, Settings
from ttcompile.analysis.recovery import RECOVER_STEPS
from ttcompile.cli.argtypes import batch_int, count_int, threads_int
from ttcompile.planning.allocators import ALLOCATORS, LWIQ_DAMAGES, LWIQ_WEIGHTS
from ttcompile.planning.plan import Plan
from ttcompile.planning.request import LatencyOptions
from ttcompile.train.settings import TrainSettings


def add_budget_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("budgeted rank selection")
    g.add_argument("--budget", help="params=F, macs=F and/or latency=F: F <= 1 keeps that fraction of the "
                                    "compressible layers' total (latency: of the whole model's latency measured at "
                                    "--batch/--threads/--provider), F > 1 is an absolute count (latency: ms), "
                                    "e.g. params=0.1,latency=0.5")
    g.add_argument("--allocator", choices=sorted(ALLOCATORS), help="rank allocator for --budget (default lwiq)")
    g.add_argument("--analysis", help="LWIQ scores from 'ttcompile analyze' (no model run needed)")
    g.add_argument("--calib", help="calibration data (.npz with x[, y] or a dataset spec) for lwiq/greedy")
    g.add_argument("--calib-batch", type=int, default=256, help="samples per ORT run on calibration data")
    g.add_argument("--lwiq-weights", choices=LWIQ_WEIGHTS, default="output",
                   help="lwiq: weight of each layer's drop (output: its measured transfer to the output probe, "
                        "the default; flat: 1; gain: its LWIQ score)")
    g.add_argument("--lwiq-damage", choices=LWIQ_DAMAGES, default="log",
                   help="lwiq: damage of a weighted drop x (log: -log(1 - x), the default, one destroyed layer "
                        "costs a destroyed network; linear: x)")
    g.add_argument("--batch", type=batch_int, default=1, help="latency budget: batch size it is measured at")
    g.add_argument("--provider", default="cpu", choices=["cpu", "cuda"], help="latency budget: execution provider")
    g.add_argument("--pseudo-classes", type=int, default=10,
                   help="lwiq with --calib on a model whose output is no class score: k-means classes (default 10)")


def add_calibration_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("calibration-only compression (with --calib; labels are not used)")
    g.add_argument("--init", choices=["weight", "data"], help="cores from the weights, or fitted to the layer "
                   "outputs on --calib (default: data with --calib)")
    g.add_argument("--recover", choices=["none", "layer", "model"], help="after init: nothing, layer-wise fit "
                   "to the original's outputs, or that plus distillation on --calib (default: layer with --calib)")
    g.add_argument("--recover-mode", choices=["sequential", "parallel"], default="sequential",
                   help="layer-wise recovery on the compressed upstream (default) or the original's inputs")
    g.add_argument("--recover-steps", type=int, default=RECOVER_STEPS, help=f"L-BFGS steps per layer "
                   f"(default {RECOVER_STEPS})")
    g.add_argument("--recover-epochs", type=int, default=RECOVER_EPOCHS,
                   help=f"--recover model: distillation epochs on --calib (default {RECOVER_EPOCHS})")
    g.add_argument("--recover-lr", type=float, default=RECOVER_LR,
                   help=f"--recover model: peak learning rate of the distillation (default {RECOVER_LR:g})")
    g.add_argument("--calib-samples", type=int, help="use only the first N calibration samples")


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


def compress_kwargs(args: argparse.Namespace) -> dict:
    """The keyword arguments of ``ttcompile.compress`` (beyond the planning ones) these options ask for."""
    training = None
    if args.train or args.rank_select:
        training = TrainSettings(method=args.rank_select or "none", epochs=args.finetune_epochs,
                                 select_epochs=args.select_epochs, lam=args.lam, sigma=args.sigma,
                                 mu_scale=args.mu_scale, normalize=args.l0_normalize, target_cr=args.target_cr,
                                 rho=args.rho, lr=args.lr, threads=args.threads or None)
    recovery = None
    if args.calib:
        recovery = Settings(mode=args.recover_mode, recover_steps=args.recover_steps, epochs=args.recover_epochs,
                            lr=args.recover_lr, threads=args.threads)
    return dict(budget=args.budget, calib=args.calib, allocator=args.allocator, analysis=args.analysis,
                calib_batch=args.calib_batch, lwiq_weights=args.lwiq_weights, lwiq_damage=args.lwiq_damage,
                pseudo_classes=args.pseudo_classes, latency=LatencyOptions(args.provider, args.batch, args.threads),
                init=args.init, recover=args.recover, recovery=recovery, calib_samples=args.calib_samples,
                train=args.train, val=args.val, training=training, backend=args.backend)


def describe(plan: Plan) -> str:
    """One line: allocator, knob, achieved fraction of each budget, search time."""
    s = plan.settings
    rep = s["budget"]

    def num(v: float) -> str:
        return f"{v:.4g}" if isinstance(v, float) else str(v)

    sizes = ", ".join(f"{m} {num(rep['achieved'][m])} = {rep['fractions'][m]:.2%} of {num(rep['base'][m])} "
                      f"({rep['of_target'][m]:.1%} of target)" for m in rep["targets"])
    if "latency" in rep:
        lat = rep["latency"]
        sizes += (f" (latency in ms per run, predicted as {lat['formula']} from {lat['measured_pairs']} new "
                  f"measurements on {lat['provider']} at batch {lat['batch']}, {lat['threads']} thread(s), "
                  f"{lat['cpu']}, onnxruntime {lat['onnxruntime']}; cache {lat['cache']})")
        loop = lat.get("closed_loop")
        if loop and not loop["met"]:
            sizes += (f"; latency target NOT met: the fastest plan of {len(loop['rounds'])} measured "
                      f"{lat['predicted_ms'] / lat['model_ms']:.3f} of the original, target {loop['goal']:.3f}")
    capped = (f"; MAC-capped (larger ranks would need more MACs than dense, --allow-more-macs lifts it): "
              f"{', '.join(rep['mac_capped'])}" if rep["mac_capped"] else "")
    labels = s["analysis"]["calibration"]["labels"] if "analysis" in s else s.get("greedy", {}).get("labels")
    analysis_time = f" (+ LWIQ analysis {s['analysis']['time_s']:.2f} s)" if "analysis" in s else ""
    return (f"allocator {s['allocator']} ({s['format']}): {s['knob']['name']} = {s['knob']['value']:.6g}; "
            f"{sizes}; search {s['search_time_s']:.3f} s{analysis_time}{capped}"
            + (f"; calibration labels: {labels}" if labels else ""))
