"""Fitting a layer's cores to its calibration outputs instead of its weights.

A layer is ``y = W x + b`` with ``W`` the canonical weight unfolded to ``(out, n)`` (``n = C * prod(k)``
for a conv, rows its im2col patches; see ``ttcompile.analysis.moments``). With augmented rows ``a = [x; 1]``, the
fitted layer ``Wh = [W~, b~]`` and the target ``T = [W, b]`` (``b = 0`` when the layer has none), the
output error on calibration inputs ``a_c`` (what the fitted layer is fed) against the original outputs on
``a_o`` is

    E ||Wh a_c - T a_o||^2 = tr(Wh cc Wh^T) - 2 tr(Wh co T^T) + tr(T oo T^T),

and ``output_error`` reports its square root relative to ``E ||T a_o||^2`` (relative RMS output error).
Initialisation (``a_c = a_o``, bias kept) reduces it to ``tr(D S D^T)``, ``D = W~ - W``, ``S = E[x x^T]``.

* ``whitened_init``: closed forms. Two-factor layers (svd; tucker/cp on Gemm/MatMul): truncated SVD of
  ``W L`` with ``S = L L^T`` (eigenvalues floored at a small ridge), the whitening undone in the input factor
  (``V = sqrt(S_r) Q_r^T L^{-1}``), the exact optimum. Tucker-2 / CP convs: the format's decomposition of
  ``W x_C L_C^T`` with ``L_C`` the square root of the input-channel moment
  ``S_C[c, c'] = mean_k S[(c, k), (c', k)]``, undone in the input-channel factor (``U_in`` / ``B``).
* ``refine``: a bounded number of L-BFGS steps on the objective above over the cores (and ``b~``), the
  canonical weight rebuilt from the cores by the format's own ``reconstruct`` on torch tensors. It returns
  the better of the start and the result, so it never raises the calibration output error.
"""

from __future__ import annotations

from dataclasses import dataclass
from math import prod

import numpy as np
import torch

from ttcompile.analysis.moments import Moments
from ttcompile.layers import Layer
from ttcompile.passes.base import Format
from ttcompile.passes.svd import SVDFormat
from ttcompile.train.lowrank import reconstruct_torch

RIDGE = 1e-6  # eigenvalues of S floored at RIDGE * mean(diag S) before whitening (dead features)
INPUT_CHANNEL_FACTOR = {"tucker": 2, "cp": 1}  # conv cores whose first axis is C: U_in (C, R_in), B (C, R)


@dataclass
class Target:
    """The original layer: ``weight (out, n)`` (canonical, unfolded) and ``bias (out,)`` (zeros if none)."""

    weight: np.ndarray
    bias: np.ndarray

    @classmethod
    def of(cls, layer: Layer, weight: np.ndarray, bias: np.ndarray | None) -> Target:
        w = weight.reshape(layer.out_features, -1)
        return cls(w, np.zeros(len(w)) if bias is None else np.asarray(bias, dtype=np.float64))

    @property
    def augmented(self) -> np.ndarray:
        return np.hstack([self.weight, self.bias[:, None]])


class Objective:
    """``E ||Wh a_c - T a_o||^2 / E ||T a_o||^2`` as a function of ``Wh (out, n + 1)`` (torch, float64)."""

    def __init__(self, target: Target, m: Moments):
        t = torch.tensor(target.augmented)
        self.diagonal = m.diagonal
        self.cc = torch.tensor(m.cc)
        co = torch.tensor(m.co)
        self.cross = t * co if m.diagonal else t @ co.T  # so that tr(Wh co T^T) = sum(Wh * cross)
        oo = torch.tensor(m.oo)
        const = float(torch.sum(t * t * oo) if m.diagonal else torch.sum((t @ oo) * t))
        self.const, self.scale = const, max(const, 1e-300)

    def __call__(self, wh: torch.Tensor) -> torch.Tensor:
        quad = torch.sum(wh * wh * self.cc) if self.diagonal else torch.sum((wh @ self.cc) * wh)
        return (quad - 2 * torch.sum(wh * self.cross) + self.const) / self.scale


def _augment(fmt: Format, layer: Layer, modes: dict, cores: list[torch.Tensor], bias: torch.Tensor) -> torch.Tensor:
    w = reconstruct_torch(fmt, cores, layer, modes).reshape(layer.out_features, -1)
    return torch.cat([w, bias[:, None]], dim=1)


def output_error(fmt: Format, layer: Layer, modes: dict, cores: list[np.ndarray], bias: np.ndarray,
                 objective: Objective) -> float:
    """Relative RMS output error of ``cores`` and ``bias`` under ``objective``."""
    with torch.no_grad():
        wh = _augment(fmt, layer, modes, [torch.tensor(np.asarray(c, dtype=np.float64)) for c in cores],
                      torch.tensor(bias))
        return float(np.sqrt(max(float(objective(wh)), 0.0)))


def refine(fmt: Format, layer: Layer, modes: dict, cores: list[np.ndarray], bias: np.ndarray,
           objective: Objective, steps: int, fit_bias: bool) -> tuple[list[np.ndarray], np.ndarray, float, float]:
    """At most ``steps`` L-BFGS iterations from ``(cores, bias)``; returns the better of start and end as
    ``(cores, bias, error before, error after)`` (relative RMS output errors, after <= before)."""
    before = output_error(fmt, layer, modes, cores, bias, objective)
    if steps <= 0:
        return cores, bias, before, before
    shapes = [np.shape(c) for c in cores] + [np.shape(bias)]
    sizes = [int(np.prod(sh)) for sh in shapes]
    flat = torch.tensor(np.concatenate([np.ravel(c) for c in cores] + [np.ravel(bias)]), requires_grad=True)
    # one flat parameter (L-BFGS needs contiguous gradients); the bias part stays fixed unless fit_bias
    fixed_bias = torch.tensor(bias)

    def unpack(v: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
        parts = [p.reshape(sh) for p, sh in zip(torch.split(v, sizes), shapes)]
        return parts[:-1], parts[-1] if fit_bias else fixed_bias

    opt = torch.optim.LBFGS([flat], lr=1.0, max_iter=steps, history_size=20, line_search_fn="strong_wolfe",
                            tolerance_grad=1e-12, tolerance_change=1e-14)

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = objective(_augment(fmt, layer, modes, *unpack(flat)))
        loss.backward()
        return loss

    opt.step(closure)
    parts, b = unpack(flat.detach())
    new_cores = [p.numpy().copy() for p in parts]
    new_bias = b.numpy().copy()
    after = output_error(fmt, layer, modes, new_cores, new_bias, objective)
    if not np.isfinite(after) or after >= before:
        return cores, bias, before, before
    return new_cores, new_bias, before, after


def _root(s: np.ndarray) -> np.ndarray:
    """``L`` with ``L L^T = S`` after raising every eigenvalue to at least ``eps = RIDGE * mean(diag S)``
    (``S`` symmetric, PSD up to rounding; a vector: a diagonal). ``L = V sqrt(lambda)`` from ``eigh``."""
    diag = s if s.ndim == 1 else np.diag(s)
    eps = RIDGE * max(float(np.mean(diag)), 1e-30)
    if s.ndim == 1:
        return np.diag(np.sqrt(np.maximum(s, eps)))
    lam, vecs = np.linalg.eigh((s + s.T) / 2)
    return vecs * np.sqrt(np.maximum(lam, eps))


def input_moment(m: Moments) -> np.ndarray:
    """``S = E[x x^T]`` (or its diagonal): the moments without the constant-1 entry."""
    return m.cc[:-1] if m.diagonal else m.cc[:-1, :-1]


def is_two_factor(fmt: Format, layer: Layer) -> bool:
    """``W ~= U V`` layers, whose whitened closed form is the exact data-aware optimum."""
    return isinstance(fmt, SVDFormat) and (fmt.name == "svd" or layer.kind != "conv")


def whitened_init(fmt: Format, layer: Layer, modes: dict, ranks: list[int], weight: np.ndarray,
                  m: Moments) -> list[np.ndarray] | None:
    """Closed-form data-aware cores (see the module docstring), or None where the format has none."""
    s = input_moment(m)
    if is_two_factor(fmt, layer):
        root_s = _root(s)
        p, sv, qt = np.linalg.svd(weight.reshape(layer.out_features, -1) @ root_s, full_matrices=False)
        r = ranks[0]
        root = np.sqrt(sv[:r])
        v = np.linalg.solve(root_s.T, (root[:, None] * qt[:r]).T).T  # sqrt(S_r) Q_r^T L^{-1}
        return [p[:, :r] * root, v.reshape(r, layer.in_features, *layer.kernel)]
    if layer.kind == "conv" and fmt.name in INPUT_CHANNEL_FACTOR:
        c, kk = layer.in_features, prod(layer.kernel)
        s_c = s.reshape(c, kk).mean(1) if s.ndim == 1 else np.einsum("akbk->ab", s.reshape(c, kk, c, kk)) / kk
        root_s = _root(s_c)
        cores = fmt.decompose(np.einsum("ock,cd->odk", weight.reshape(layer.out_features, c, kk), root_s)
                              .reshape(weight.shape), layer, modes, ranks)
        i = INPUT_CHANNEL_FACTOR[fmt.name]
        cores[i] = np.linalg.solve(root_s.T, cores[i])  # L_C^{-T} U: undo the whitening on the C side
        return cores
    return None
