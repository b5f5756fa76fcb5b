"""Compress with training: core-space fine-tuning, optionally after learned rank selection.

``method`` (``Settings.method``):

* ``none``: the plan's cores (TT/TR-SVD of the trained weights) are fine-tuned in core space with
  distillation from the original model for ``epochs`` epochs, then emitted;
* ``l0``: ℓ0 gates on every bond (``ttcompile.train.l0``) trained with the cores for ``select_epochs``
  epochs (no best-epoch selection: the last epoch's gates define the ranks), closed slices pruned and
  kept gates folded; then ``epochs`` more epochs of core-space fine-tuning at the learned ranks;
* ``admm``: ADMM on the dense graph (``ttcompile.train.admm``) for ``select_epochs`` epochs, the
  trained weights decomposed at the plan's ranks, then ``epochs`` epochs of core-space fine-tuning.

Every phase distils from ``teacher`` (``ttcompile.train.finetune``). The result is a plain compressed
ONNX model and the plan it was emitted with (the learned ranks for ``l0``).
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from dataclasses import asdict, dataclass

import numpy as np
import onnx
import onnx_ir as ir

from ttcompile.errors import UserError
from ttcompile.graph import to_proto
from ttcompile.models.data import Dataset
from ttcompile.planning.plan import Plan
from ttcompile.rewrite.compress import RewriteResult
from ttcompile.rewrite.counting import count_params
from ttcompile.rewrite.verify import check_model
from ttcompile.train.finetune import History, finetune
from ttcompile.train.hooks import TrainHook
from ttcompile.train.lowrank import CoreSpace, export_cores, plan_for_cores

METHODS = ("none", "l0", "admm")


@dataclass(frozen=True)
class Settings:
    method: str = "none"
    epochs: int = 10  # core-space fine-tuning at the final ranks
    select_epochs: int | None = None  # ℓ0 / ADMM phase (default: epochs)
    lam: float = 0.2  # ℓ0 penalty weight λ
    sigma: float = 0.5  # ℓ0 gate noise σ
    mu_scale: float = 1.0  # ℓ0 gate speed: μ = mu_scale · ν, ν trained with Adam
    normalize: str = "bond"  # ℓ0 penalty: mean per bond (Cao) or "layer": 1/(R-1) per entry
    target_cr: float | None = None  # ℓ0: freeze the gates at this whole-network compression
    rho: float = 1e-3  # ADMM ρ
    lr: float = 1e-3
    batch_size: int = 128
    temperature: float = 4.0
    kd_weight: float = 0.9
    seed: int = 0
    threads: int | None = 1
    smallest: bool = True  # emit the realization with the fewest parameters (else the fastest one)

    def check(self) -> None:
        if self.method not in METHODS:
            raise UserError(f"unknown rank selection {self.method!r}: choose one of {', '.join(METHODS)}")
        if self.epochs < 0 or (self.select_epochs is not None and self.select_epochs < 1):
            raise UserError("fine-tuning epochs must be >= 0 and selection epochs >= 1")
        if self.target_cr is not None and (self.method != "l0" or self.target_cr <= 1):
            raise UserError("a target compression (> 1) needs the l0 rank selection")
        if self.method == "l0" and not (self.lam >= 0 and self.sigma > 0):
            raise UserError(f"l0 needs lambda >= 0 and sigma > 0, got {self.lam}, {self.sigma}")
        if self.method == "admm" and not self.rho > 0:
            raise UserError(f"admm needs rho > 0, got {self.rho}")


@dataclass
class Outcome:
    model: onnx.ModelProto
    plan: Plan
    results: list[RewriteResult]
    histories: dict[str, History]  # per phase: "select", "finetune"


def _finetune(s: Settings, student: onnx.ModelProto, teacher: onnx.ModelProto, train: Dataset,
              val: Dataset | None, epochs: int, hooks: list[TrainHook], progress: bool):
    return finetune(student, teacher, train, val, epochs=epochs, lr=s.lr, batch_size=s.batch_size,
                    temperature=s.temperature, kd_weight=s.kd_weight, seed=s.seed, hooks=hooks,
                    threads=s.threads, progress=progress)


def compress_and_train(dense: onnx.ModelProto, teacher: onnx.ModelProto, plan: Plan, train: Dataset,
                       val: Dataset | None, settings: Settings, log: Callable[[str], None] = print,
                       progress: bool = False, epoch_hooks: list[TrainHook] | None = None) -> Outcome:
    """Run ``settings.method`` on ``dense`` (the normalised original, whose node and initializer names the
    plan uses) and return the compressed model. ``epoch_hooks`` (e.g. printers) join every phase."""
    settings.check()
    s, extra, histories = settings, list(epoch_hooks or ()), {}
    select_epochs = s.select_epochs or max(s.epochs, 1)
    cores: dict[str, list[np.ndarray]] | None = None
    if s.method == "l0":
        from ttcompile.train.l0 import L0Gates

        gates = L0Gates(CoreSpace(dense, plan), s.lam, s.sigma, s.target_cr, count_params(dense), s.mu_scale,
                        s.smallest, s.normalize, log=log)
        dense, histories["select"] = _finetune(s, dense, teacher, train, None, select_epochs, [gates, *extra],
                                               progress)
        cores = gates.pruned_cores()
        plan = plan_for_cores(plan, cores, s.smallest)
        log(f"l0: learned ranks {', '.join(f'{lp.name}:{lp.ranks}' for lp in plan.layers if lp.ranks)}")
    elif s.method == "admm":
        from ttcompile.train.admm import ADMM

        admm = ADMM(plan, s.rho, log=log)
        dense, histories["select"] = _finetune(s, dense, teacher, train, val, select_epochs, [admm, *extra],
                                               progress)
    space = CoreSpace(dense, plan, cores)
    if s.epochs:
        dense, histories["finetune"] = _finetune(s, dense, teacher, train, val, s.epochs, [space, *extra],
                                                 progress)
    model, plan, results = export_cores(dense, plan, space.numpy_cores(), s.smallest)
    plan.settings["rank_select"] = asdict(s)
    return Outcome(model, plan, results, histories)


def train_compressed(args: argparse.Namespace, model: ir.Model, plan: Plan):
    """``compress --train``: train as the options say and check the result; returns (plan with the emitted
    ranks, rewrite results, model) like ``cmd_compress.compress_model``. Writes nothing."""
    from ttcompile.cli.cmd_compress import check_some_compressed, check_some_rewritten
    from ttcompile.models.data import load_dataset

    check_some_compressed(plan)
    settings = Settings(method=args.rank_select or "none", epochs=args.finetune_epochs,
                        select_epochs=args.select_epochs, lam=args.lam, sigma=args.sigma, mu_scale=args.mu_scale,
                        normalize=args.l0_normalize,
                        target_cr=args.target_cr, rho=args.rho, lr=args.lr, threads=args.threads or None)
    settings.check()
    dense = to_proto(model)
    outcome = compress_and_train(dense, dense, plan, load_dataset(args.train),
                                 load_dataset(args.val) if args.val else None, settings,
                                 log=lambda line: print(line, flush=True), progress=not args.quiet,
                                 epoch_hooks=[EpochPrinter()])
    check_some_rewritten(outcome.plan, outcome.results)
    check_model(outcome.model)
    return outcome.plan, outcome.results, outcome.model


class EpochPrinter(TrainHook):
    """One line per finished epoch."""

    def on_epoch_end(self, module, stats) -> None:
        val = "" if stats.val is None else f"  val {stats.val:.4f}"
        print(f"epoch {stats.epoch}  loss {stats.loss:.4f}{val}  {stats.seconds:.1f}s", flush=True)
