"""Probabilistic ℓ0 rank gates on tensor-network bonds (Cao, Sun, Nguyen, Mamitsuka, IJCAI 2024).

Every bond of a layer's cores gets a gate vector: each internal TT bond and each TR ring bond (bond k
joins the right axis of core k to the left axis of core k+1, cyclically; TT's size-1 end bonds have
nothing to gate). The gates multiply the LEFT core's right-bond axis: ``G_k <- G_k * z_k``.

* training: ``z = clamp(μ + 1.2 + σ·ε, 0, 1)``, ``ε ~ N(0, 1)`` drawn per forward pass;
* eval: ``z = clamp(μ + 1.2, 0, 1)``; the learned rank of a bond is ``#{z > 0}``;
* ``μ`` starts at ``0.01·N(0, 1)`` (gates open); the last entry of every bond is not gated (z = 1),
  so every rank stays >= 1;
* ``μ = mu_scale · ν`` with ``ν`` the trained Parameter: Adam's steps are about lr in ``ν``, so μ moves
  ``mu_scale`` times faster than the weights (1: the paper; a gate needs μ < -1.2 to close, over a
  thousand steps at lr 1e-3, too slow for short fine-tuning runs);
* penalty: ``λ · Σ_layers Σ_bonds mean_j Φ((μ_j + 1.2) / σ)`` (Φ the standard normal CDF, the mean over
  the gated entries of a bond), the expected ℓ0 norm of the gates, per bond (``normalize="bond"``).
  With ``normalize="layer"`` every gated entry of a layer weighs ``1 / (R - 1)``, R the layer's largest
  bond: the same penalty when all bonds have one size (Cao's uniform rank 25), but a bond capped small
  (TR-SVD caps, e.g. 2) is no longer pushed (R - 1) times harder per entry than the others.

Optional target: once the whole network's compression ``original params / compressed params`` (eval
gates, pruned ranks, checked every ``check_every`` batches, default every batch: strong penalties
close many gates within a few steps) reaches ``target_cr``, μ is frozen, the
penalty dropped and the gates become deterministic (their eval values); the weights keep training.

Export (``pruned_cores``): closed slices are removed from both neighbouring cores and the kept,
continuous gate values are folded into the left core, so the pruned cores reconstruct exactly the
weights the gated model uses in eval mode.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from torch import nn

from ttcompile.train.executor import OnnxModule
from ttcompile.train.hooks import TrainHook
from ttcompile.train.lowrank import CoreSpace, core_ranks, replan

SHIFT = 1.2  # hard-sigmoid offset of Cao et al.'s gates (they start open)


class L0Gates(nn.Module, TrainHook):
    """ℓ0 gates over every bond of ``space``'s layers; pass this hook (not ``space``) to ``finetune``.

    ``base_params``: the whole original model's parameter count (compression is ``base / compressed``);
    needed with ``target_cr``. ``smallest``: count every layer in its smallest realization (as exported
    with ``export_cores(..., smallest=True)``), else in the fastest.
    """

    def __init__(self, space: CoreSpace, lam: float, sigma: float = 0.5, target_cr: float | None = None,
                 base_params: int | None = None, mu_scale: float = 1.0, smallest: bool = True,
                 normalize: str = "bond", check_every: int = 1, log: Callable[[str], None] | None = None):
        super().__init__()
        if target_cr is not None and base_params is None:
            raise ValueError("a target compression needs base_params")
        self.space, self.lam, self.sigma = space, lam, sigma
        self.target_cr, self.base_params, self.check_every = target_cr, base_params, check_every
        self.log, self.mu_scale, self.smallest = log, mu_scale, smallest
        if normalize not in ("bond", "layer"):
            raise ValueError(f"normalize must be 'bond' or 'layer', got {normalize!r}")
        self.nu = nn.ParameterDict()
        self._weights: dict[str, float] = {}  # penalty weight of each entry of a bond
        for name in space.plans:
            largest = max(int(c.shape[-1]) for c in space.layer_cores(name))
            for k, core in enumerate(space.layer_cores(name)):
                if core.shape[-1] > 1:
                    key = self._key(name, k)
                    self.nu[key] = nn.Parameter(0.01 / mu_scale * torch.randn(core.shape[-1] - 1))
                    self._weights[key] = 1 / (core.shape[-1] - 1 if normalize == "bond" else largest - 1)
        self.register_buffer("frozen", torch.tensor(False))
        self._training: Callable[[], bool] = lambda: self.training
        self._calls = 0

    def _key(self, name: str, k: int) -> str:
        return f"{self.space.key(name)}_{k}"

    def attach(self, module: OnnxModule) -> None:
        self.space.core_map = self.gated
        self.space.attach(module)
        self._training = lambda: module.training
        self._apply_frozen()

    @property
    def mu(self) -> dict[str, torch.Tensor]:
        """``μ`` of every gated bond."""
        return {key: self.mu_scale * nu for key, nu in self.nu.items()}

    def gate(self, mu: torch.Tensor) -> torch.Tensor:
        """Gate values of one bond (the ungated last entry appended)."""
        z = mu + SHIFT
        if self._training() and not bool(self.frozen):
            z = z + self.sigma * torch.randn_like(mu)
        return torch.cat([z.clamp(0, 1), z.new_ones(1)])

    def gated(self, name: str, cores: list[torch.Tensor]) -> list[torch.Tensor]:
        """``core_map`` of the space: every gated bond's left core times its gates (last axis)."""
        keys = [self._key(name, k) for k in range(len(cores))]
        return [c * self.gate(self.mu_scale * self.nu[key]) if key in self.nu else c for c, key in zip(cores, keys)]

    def eval_gates(self) -> dict[str, np.ndarray]:
        """Deterministic gate values (``clamp(μ + 1.2, 0, 1)``, last entry 1) per bond key."""
        with torch.no_grad():
            return {key: np.append(np.clip(mu.double().numpy() + SHIFT, 0, 1), 1.0) for key, mu in self.mu.items()}

    def penalty(self, module: OnnxModule) -> torch.Tensor | None:
        self._calls += 1
        if self.target_cr is not None and not bool(self.frozen) and self._calls % self.check_every == 0:
            self._check_target()
        if bool(self.frozen) or self.lam == 0 or not len(self.nu):
            return None
        return self.lam * sum(self._weights[key] * torch.special.ndtr((mu + SHIFT) / self.sigma).sum()
                              for key, mu in self.mu.items())

    def ranks(self) -> dict[str, list[int]]:
        """Learned ranks (eval gates, ``#{z > 0}`` per bond) in each layer's plan convention."""
        gates = self.eval_gates()
        out = {}
        for name in self.space.plans:
            cores = self.space.layer_cores(name)
            right = [int((gates[k] > 0).sum()) if (k := self._key(name, i)) in gates else int(c.shape[-1])
                     for i, c in enumerate(cores)]
            out[name] = core_ranks(self.space.plans[name].format, right)
        return out

    def compressed_params(self) -> int:
        """Whole-network parameters at the learned ranks."""
        plans = self.space.plans
        delta = sum(replan(plans[n], r, self.smallest).params - plans[n].layer.params
                    for n, r in self.ranks().items())
        return self.base_params + delta

    def compression(self) -> float:
        return self.base_params / self.compressed_params()

    def _check_target(self) -> None:
        if self.compression() >= self.target_cr:
            self.frozen.fill_(True)
            self._apply_frozen()
            if self.log:
                self.log(f"l0: target compression {self.target_cr}x reached ({self.compression():.1f}x), gates frozen")

    def _apply_frozen(self) -> None:
        for nu in self.nu.values():
            nu.requires_grad_(not bool(self.frozen))

    def load_state_dict(self, state, strict: bool = True):
        result = super().load_state_dict(state, strict)
        self._apply_frozen()
        return result

    def on_epoch_end(self, module: OnnxModule, stats) -> None:
        if self.log:
            ranks = "  ".join(f"{n}:{'-'.join(map(str, r))}" for n, r in self.ranks().items())
            cr = f"  {self.compression():.1f}x" if self.base_params else ""
            self.log(f"l0 epoch {stats.epoch}: ranks {ranks}{cr}{'  (frozen)' if bool(self.frozen) else ''}")

    def pruned_cores(self) -> dict[str, list[np.ndarray]]:
        """Every layer's cores with closed gate slices removed from both neighbours and kept gate values
        folded into the left core (float64): they reconstruct the eval-mode gated weights exactly."""
        gates = self.eval_gates()
        out = {}
        for name in self.space.plans:
            cores = [c.detach().double().numpy() for c in self.space.layer_cores(name)]
            d = len(cores)
            for k in range(d):
                z = gates.get(self._key(name, k))
                if z is None:
                    continue
                keep = z > 0
                cores[k] = (cores[k] * z)[..., keep]
                cores[(k + 1) % d] = cores[(k + 1) % d][keep]
            out[name] = cores
        return out

