"""``compress --train --backend ort``: rewrite with the plan's cores, then fine-tune the compressed graph
with onnxruntime-training, distilling from the uncompressed model.

The torch backend trains the cores in core space on the dense graph (``ttcompile.train.rank_select``); here the
emitted compressed graph's initializers (its cores and biases) are trained directly, which needs no torch.
ℓ0 and ADMM rank selection are torch-only.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import onnx
import onnx_ir as ir

from ttcompile.graph import to_proto
from ttcompile.planning.plan import Plan
from ttcompile.rewrite.compress import RewriteResult, apply_plan
from ttcompile.train.common import EpochStats, History
from ttcompile.train.ort_finetune import finetune_ort

if TYPE_CHECKING:
    from ttcompile.models.data import Dataset


def compress_and_finetune(model: ir.Model, plan: Plan, train: Dataset, val: Dataset | None, *, epochs: int,
                          progress: bool = False, on_epoch: Callable[[EpochStats], None] | None = None,
                          **options) -> tuple[list[RewriteResult], onnx.ModelProto, History | None]:
    """Apply ``plan`` to ``model`` (in place) and fine-tune the result ``epochs`` epochs (none: 0) towards
    the model as it was; ``options`` go to ``finetune_ort`` (lr, threads, ...). Returns the rewrite
    results, the compressed model and the fine-tuning history (None without epochs)."""
    teacher = to_proto(model)
    results = apply_plan(model, plan, progress=progress)
    student = to_proto(model)
    if not epochs or not any(r.rewritten for r in results):
        return results, student, None
    tuned, history = finetune_ort(student, teacher, train, val, epochs=epochs, progress=progress,
                                  on_epoch=on_epoch, **options)
    plan.settings["finetune"] = {"backend": "ort", "epochs": epochs, "best_epoch": history.best_epoch,
                                 **{k: v for k, v in options.items() if k != "threads"}}
    return results, tuned, history
