"""Extension point for methods that train alongside fine-tuning (ℓ0 rank gates, ADMM penalties, logging).

``finetune`` drives every hook through the methods below; subclass ``TrainHook`` and override what you
need. A hook that is also an ``nn.Module`` (``class Gates(nn.Module, TrainHook)``) gets ``parameters``,
``state_dict`` and ``load_state_dict`` from torch. Order within a run::

    attach(module)                      once, before the optimiser is built or a checkpoint restored
    for each epoch (1-based):
        on_epoch_start(module, epoch)    e.g. ADMM Z/U updates
        per batch: loss += penalty(module)
        on_epoch_end(module, stats)      after validation, e.g. freeze gates, print

``state_dict()`` is saved with every checkpoint and with the best epoch, so resuming and restoring the
best epoch restore the hook too; it must hold only tensors and plain Python values.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from ttcompile.train.executor import OnnxModule
    from ttcompile.train.finetune import EpochStats


class TrainHook:
    """No-op defaults for every hook method. ``observes_only``: the hook changes neither the loss nor the
    weights (a logger), so the input's own weights stay a candidate for the best epoch."""

    observes_only = False

    def attach(self, module: OnnxModule) -> None:
        """Set up on the module: create parameters, ``module.set_transform(...)`` on initializers."""

    def parameters(self) -> Iterable[torch.nn.Parameter]:
        """Extra tensors to optimise with the weights (Adam, same lr, no weight decay)."""
        return ()

    def penalty(self, module: OnnxModule) -> torch.Tensor | None:
        """Term added to every batch's loss (None: nothing)."""
        return None

    def on_epoch_start(self, module: OnnxModule, epoch: int) -> None:
        """Called before the first batch of ``epoch`` (counted from 1)."""

    def on_epoch_end(self, module: OnnxModule, stats: EpochStats) -> None:
        """Called after validation of ``stats.epoch``, before the checkpoint is written."""

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what ``state_dict`` returned."""
