"""ADMM towards low TT/TR rank on the dense graph (Yin, Sui, Liao, Yuan, CVPR 2021).

The model keeps its dense structure; for every compressed layer l of the plan, with ``Π_l`` the
projection ``W -> reconstruct(decompose(W))`` at the plan's modes and ranks (TT-SVD / TR-SVD, only
quasi-optimal):

* start (``attach``): ``Z_l = Π_l(W_l)``, ``U_l = 0``;
* at the start of every later epoch: ``Z_l <- Π_l(W_l + U_l)``, then ``U_l <- U_l + W_l - Z_l``;
* every batch adds ``(ρ/2) · Σ_l ||W_l - Z_l + U_l||_F²``.

``distances`` logs ``||W_l - Z_l|| / ||W_l||`` summed over layers at every epoch start; it should fall.
Afterwards the trained dense weights are decomposed at the same ranks and fine-tuned (see
``ttcompile.train.rank_select``). Z and U are kept in the initializers' ONNX layout.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from torch import nn

from ttcompile.passes.base import get_format
from ttcompile.planning.plan import LayerPlan, Plan
from ttcompile.train.executor import OnnxModule
from ttcompile.train.hooks import TrainHook
from ttcompile.train.lowrank import canonical_layout, compressed_layers, onnx_layout


def project(lp: LayerPlan, w_onnx: np.ndarray) -> np.ndarray:
    """``Π(W)``: decompose at the plan's ranks and rebuild, in ONNX layout (float64 math)."""
    fmt = get_format(lp.format)
    w = canonical_layout(lp.layer, np.asarray(w_onnx, dtype=np.float64))
    return onnx_layout(lp.layer, fmt.reconstruct(fmt.decompose(w, lp.layer, lp.modes, lp.ranks), lp.layer, lp.modes))


class ADMM(nn.Module, TrainHook):
    """ADMM Z/U state for every compressed layer of ``plan`` (keys ``l0``, ``l1``... in plan order)."""

    def __init__(self, plan: Plan, rho: float = 1e-3, log: Callable[[str], None] | None = None):
        super().__init__()
        self.rho, self.log = rho, log
        self.layers = compressed_layers(plan)
        self.distances: list[float] = []
        self._module: Callable[[], OnnxModule] | None = None

    def _weight(self, i: int) -> torch.Tensor:
        return self._module().parameter(self.layers[i].layer.weight)

    def attach(self, module: OnnxModule) -> None:
        self._module = lambda: module
        for i in range(len(self.layers)):
            w = self._weight(i).detach()
            self.register_buffer(f"z{i}", torch.tensor(project(self.layers[i], w.double().numpy()), dtype=w.dtype))
            self.register_buffer(f"u{i}", torch.zeros_like(w))

    def _step(self, update: bool) -> None:
        """``Z <- Π(W + U)``, ``U <- U + W - Z`` when ``update``; logs ``Σ ||W - Z|| / ||W||``."""
        total = 0.0
        with torch.no_grad():
            for i, lp in enumerate(self.layers):
                w, z, u = self._weight(i), getattr(self, f"z{i}"), getattr(self, f"u{i}")
                if update:
                    z.copy_(torch.from_numpy(project(lp, (w + u).double().numpy())))
                    u.add_(w - z)
                total += float(torch.linalg.norm(w - z) / torch.linalg.norm(w).clamp_min(1e-30))
        self.distances.append(total)
        if self.log:
            self.log(f"admm: sum_l ||W - Z|| / ||W|| = {total:.4f}")

    def on_epoch_start(self, module: OnnxModule, epoch: int) -> None:
        self._step(update=epoch > 1)

    def penalty(self, module: OnnxModule) -> torch.Tensor:
        return 0.5 * self.rho * sum(
            (self._weight(i) - getattr(self, f"z{i}") + getattr(self, f"u{i}")).square().sum()
            for i in range(len(self.layers)))

    def state_dict(self, *args, **kwargs):
        state = super().state_dict(*args, **kwargs)
        state["distances"] = list(self.distances)
        return state

    def load_state_dict(self, state, strict: bool = True):
        state = dict(state)
        self.distances = list(state.pop("distances", []))
        return super().load_state_dict(state, strict)
