"""Compress with training: core-space fine-tuning, optionally after learned rank selection.

``method`` (``TrainSettings.method``):

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

import logging
from collections.abc import Callable
from dataclasses import asdict, dataclass

import numpy as np
import onnx

from ttcompile.models.data import Dataset
from ttcompile.planning.plan import Plan
from ttcompile.rewrite.compress import RewriteResult
from ttcompile.rewrite.counting import count_params
from ttcompile.train.finetune import History, finetune
from ttcompile.train.hooks import TrainHook
from ttcompile.train.lowrank import CoreSpace, export_cores, plan_for_cores
from ttcompile.train.settings import TrainSettings

logger = logging.getLogger(__name__)

@dataclass
class Outcome:
    model: onnx.ModelProto
    plan: Plan
    results: list[RewriteResult]
    histories: dict[str, History]  # per phase: "select", "finetune"


def _finetune(s: TrainSettings, student: onnx.ModelProto, teacher: onnx.ModelProto, train: Dataset,
              val: Dataset | None, epochs: int, hooks: list[TrainHook], progress: bool):
    return finetune(student, teacher, train, val, epochs=epochs, lr=s.lr, batch_size=s.batch_size,
                    temperature=s.temperature, kd_weight=s.kd_weight, seed=s.seed, hooks=hooks,
                    threads=s.threads, progress=progress)


def compress_and_train(dense: onnx.ModelProto, teacher: onnx.ModelProto, plan: Plan, train: Dataset,
                       val: Dataset | None, settings: TrainSettings, log: Callable[[str], None] = logger.info,
                       progress: bool = False, epoch_hooks: list[TrainHook] | None = None) -> Outcome:
    """Run ``settings.method`` on ``dense`` (the normalised original, whose node and initializer names the
    plan uses) and return the compressed model. ``log`` takes the phases' messages (default: logging);
    ``epoch_hooks`` join every phase (default: one log line per epoch)."""
    settings.check()
    s, extra, histories = settings, list([EpochLogger()] if epoch_hooks is None else epoch_hooks), {}
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


class EpochLogger(TrainHook):
    """One log line per finished epoch."""

    def on_epoch_end(self, module, stats) -> None:
        val = "" if stats.val is None else f"  val {stats.val:.4f}"
        logger.info("epoch %s  loss %.4f%s  %.1fs", stats.epoch, stats.loss, val, stats.seconds)
