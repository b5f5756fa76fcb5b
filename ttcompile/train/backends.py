"""Choose a fine-tuning backend: ``torch`` (``ttcompile.train.finetune``, the ``[train]`` extra) or ``ort``
(``ttcompile.train.ort_finetune``, the ``[ort-training]`` extra, for environments without torch).

``finetune(..., backend=...)`` checks that the backend's package is importable (a one-line UserError
naming the extra otherwise), then runs it; both take the same data, settings and checkpoint options and
return (model with the same nodes and initializer names, History).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ttcompile.errors import OptionError, UserError, opt

if TYPE_CHECKING:
    import onnx

    from ttcompile.models.data import Dataset
    from ttcompile.train.common import EpochStats, History

BACKENDS = ("torch", "ort")
logger = logging.getLogger(__name__)


def epoch_logger(epochs: int, metric: str) -> Callable[[EpochStats], None]:
    """``on_epoch`` callback logging one line per finished epoch (``metric``: what ``val`` measures)."""

    def log(stats: EpochStats) -> None:
        val = "" if stats.val is None else f"  val {metric} {stats.val:.4f}"
        logger.info("epoch %s/%s  loss %.4f%s  lr %.2e  %.1fs", stats.epoch, epochs, stats.loss, val, stats.lr,
                    stats.seconds)

    return log


def require_torch(what: str = f"{opt('backend')} torch") -> None:
    """A one-line UserError naming the ``[train]`` extra when torch is missing."""
    try:
        import torch  # noqa: F401
    except ImportError:
        raise UserError(f"{what} needs torch, which is not installed: pip install 'ttcompile[train]'") from None


def require(backend: str) -> None:
    """Refuse an unknown backend, or one whose package is not installed, in one line."""
    if backend == "torch":
        require_torch()
    elif backend == "ort":
        from ttcompile.train.ort_api import load

        load()
    else:
        raise OptionError(f"unknown {opt('backend')} {backend!r}: choose one of {', '.join(BACKENDS)}")


def finetune(student: onnx.ModelProto, teacher: onnx.ModelProto, train: Dataset, val: Dataset | None = None,
             *, backend: str = "torch", on_epoch: Callable[[EpochStats], None] | None = None,
             **options: Any) -> tuple[onnx.ModelProto, History]:
    """Fine-tune ``student`` towards ``teacher`` with ``backend``; ``on_epoch`` is called after each epoch's
    validation (e.g. to print it); ``options`` are the backend's keyword arguments (epochs, lr, ...)."""
    require(backend)
    if backend == "ort":
        from ttcompile.train.ort_finetune import finetune_ort

        return finetune_ort(student, teacher, train, val, on_epoch=on_epoch, **options)
    from ttcompile.train.finetune import finetune as finetune_torch

    hooks = [] if on_epoch is None else [_epoch_callback(on_epoch)]
    return finetune_torch(student, teacher, train, val, hooks=hooks, **options)


def _epoch_callback(fn: Callable[[EpochStats], None]):
    """``fn`` as a torch-backend TrainHook run at each epoch's end."""
    from ttcompile.train.hooks import TrainHook

    class OnEpoch(TrainHook):
        observes_only = True

        def on_epoch_end(self, module, stats) -> None:
            fn(stats)

    return OnEpoch()
