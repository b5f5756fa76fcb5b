"""Settings of ``compress`` with training (``ttcompile.train.rank_select``); importable without torch."""

from __future__ import annotations

from dataclasses import dataclass

from ttcompile.errors import OptionError, opt

METHODS = ("none", "l0", "admm")


@dataclass(frozen=True)
class TrainSettings:
    """How ``compress`` trains: ``method`` none | l0 | admm (learned ranks), epochs, penalties, optimiser."""

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
            raise OptionError(f"unknown {opt('rank_select')} {self.method!r}: choose one of {', '.join(METHODS)}")
        if self.epochs < 0 or (self.select_epochs is not None and self.select_epochs < 1):
            raise OptionError("fine-tuning epochs must be >= 0 and selection epochs >= 1")
        if self.target_cr is not None and (self.method != "l0" or self.target_cr <= 1):
            raise OptionError("a target compression (> 1) needs the l0 rank selection")
        if self.method == "l0" and not (self.lam >= 0 and self.sigma > 0):
            raise OptionError(f"l0 needs lambda >= 0 and sigma > 0, got {self.lam}, {self.sigma}")
        if self.method == "admm" and not self.rho > 0:
            raise OptionError(f"admm needs rho > 0, got {self.rho}")
