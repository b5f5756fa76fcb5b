"""Label-free layer-wise recovery: fit each compressed layer to reproduce the original layer's outputs.

Layer ``l`` (``y = W x + b``) is fitted on its inputs ``x_c`` in the compressed model and the original's
``x_o`` on the same calibration samples, minimising ``E ||W~ x_c + b~ - (W x_o + b)||^2`` over its cores and
bias (``ttcompile.analysis.data_aware.refine`` on the cross moments of ``ttcompile.analysis.moments``); a layer
without a bias vector keeps none.

* ``sequential`` (default): layers in graph order, in groups of ``ceil(L / max_passes)`` consecutive layers.
  For each group one pass of the original and one of the current compressed model (every earlier layer
  already recovered, the group and later ones at their initial cores; ORT runs only the part upstream of
  the group's inputs) give ``x_o`` and ``x_c``. The group's first layer is fitted on ``x_c``; the others
  on ``x_o`` (their ``x_c`` would carry the drift of the group's earlier layers at their initial cores,
  which the fits remove: correcting for it over-corrects, measured on ResNet-56 with 7-layer groups).
  With one layer per group this is exactly sequential.
* ``parallel``: ``x_c = x_o`` from one pass of the original (no drift correction).

A fit never raises the layer's calibration output error: the better of before and after is kept.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from math import ceil
from typing import TYPE_CHECKING

import numpy as np
import onnx_ir as ir
from tqdm import tqdm

from ttcompile.analysis.features import ModelInput
from ttcompile.analysis.moments import Moments, accumulate
from ttcompile.errors import opt
from ttcompile.graph import const_array, to_proto
from ttcompile.layers import Layer, dense_weight, find_node
from ttcompile.passes.base import get_format
from ttcompile.planning.plan import LayerPlan, Plan
from ttcompile.rewrite.compress import apply_plan
from ttcompile.train.backends import require_torch

if TYPE_CHECKING:  # data_aware needs torch: imported where used, so that compress loads without it
    from ttcompile.analysis.data_aware import Target

MAX_PASSES = 12  # sequential recovery: at most this many (original + compressed) pass pairs
INIT_STEPS = 50  # L-BFGS iterations refining a data-aware init
RECOVER_STEPS = 50  # L-BFGS iterations of one layer's recovery


@dataclass
class LayerRecord:
    """What was done to one layer; errors are relative RMS output errors on the calibration inputs."""

    name: str
    init: str = "weight"  # cores kept: "weight" (decomposed weight) | "data" (data-aware)
    error_weight_init: float | None = None  # on the original inputs, weight-decomposed cores
    error_data_init: float | None = None  # on the original inputs, data-aware cores (before the never-worse pick)
    closed_form: bool = False  # the data-aware init started from a whitened closed form
    error_before_recovery: float | None = None  # on x_c (the compressed upstream), before the fit
    error_after_recovery: float | None = None

    def to_json(self) -> dict:
        return asdict(self)


@dataclass
class LayerState:
    """A compressed layer's current cores and bias (``bias`` zeros when the layer has no bias vector)."""

    lp: LayerPlan
    target: Target
    cores: list[np.ndarray]
    bias: np.ndarray
    record: LayerRecord

    @property
    def fit_bias(self) -> bool:
        layer = self.lp.layer
        return layer.has_bias and layer.attrs.get("bias_vector", True)


def compressed_plans(plan: Plan) -> list[LayerPlan]:
    return [lp for lp in plan.layers if lp.action == "compress"]


def initial_states(model: ir.Model, plan: Plan, moments: dict[str, Moments] | None, data_init: bool,
                   steps: int = INIT_STEPS, progress: bool = False) -> dict[str, LayerState]:
    """Weight-decomposed cores per layer; with ``data_init`` also the data-aware ones (``whitened_init``
    where a closed form exists, then ``refine``), keeping whichever has the lower calibration output error."""
    require_torch(f"compression from calibration data ({opt('calib')})")
    from ttcompile.analysis.data_aware import Objective, Target, is_two_factor, output_error, refine, whitened_init

    states = {}
    todo = compressed_plans(plan)
    for lp in tqdm(todo, desc="data-aware init" if data_init else "init", unit="layer", disable=not progress):
        fmt, layer = get_format(lp.format), lp.layer
        weight, bias = dense_weight(model, layer)
        target = Target.of(layer, weight, bias)
        cores = fmt.decompose(weight, layer, lp.modes, lp.ranks)
        record = LayerRecord(lp.name)
        if moments is not None:
            objective = Objective(target, moments[lp.name])
            record.error_weight_init = output_error(fmt, layer, lp.modes, cores, target.bias, objective)
            if data_init:
                start = whitened_init(fmt, layer, lp.modes, lp.ranks, weight, moments[lp.name])
                record.closed_form = start is not None
                data, _, _, err = refine(fmt, layer, lp.modes, cores if start is None else start, target.bias,
                                         objective, 0 if is_two_factor(fmt, layer) else steps, fit_bias=False)
                record.error_data_init = err
                if err < record.error_weight_init:
                    cores, record.init = data, "data"
        states[lp.name] = LayerState(lp, target, cores, target.bias.copy(), record)
    return states


def set_bias(model: ir.Model, layer: Layer, bias: np.ndarray) -> None:
    """Store a fitted bias vector in the layer's bias initializer (Conv B, or Gemm C = bias / beta)."""
    value = find_node(model, layer.name).inputs[2]
    old = const_array(value)
    if layer.kind == "gemm":
        bias = bias / layer.attrs["beta"]
    value.const_value = ir.tensor(np.asarray(bias, dtype=old.dtype).reshape(old.shape))


def with_biases(model: ir.Model, states: dict[str, LayerState]) -> ir.Model:
    """Copy of ``model`` with every fitted bias stored (the dense layers; rewriting keeps the bias)."""
    out = ir.from_proto(to_proto(model))
    for st in states.values():
        if st.fit_bias:
            set_bias(out, st.lp.layer, st.bias)
    return out


def compressed_model(model: ir.Model, plan: Plan, states: dict[str, LayerState]) -> ir.Model:
    """``model`` rewritten by ``plan`` with the states' cores and biases."""
    out = with_biases(model, states)
    apply_plan(out, plan, progress=False, cores={name: st.cores for name, st in states.items()})
    return out


def _fit(st: LayerState, m: Moments, steps: int) -> None:
    from ttcompile.analysis.data_aware import Objective, refine

    lp = st.lp
    objective = Objective(st.target, m)
    st.cores, st.bias, before, after = refine(get_format(lp.format), lp.layer, lp.modes, st.cores, st.bias,
                                              objective, steps, st.fit_bias)
    st.record.error_before_recovery, st.record.error_after_recovery = before, after


def groups(names: list[str], max_passes: int) -> list[list[str]]:
    size = max(1, ceil(len(names) / max(max_passes, 1)))
    return [names[i:i + size] for i in range(0, len(names), size)]


def recover(model: ir.Model, plan: Plan, states: dict[str, LayerState], x: np.ndarray, inp: ModelInput,
            mode: str = "sequential", moments: dict[str, Moments] | None = None, steps: int = RECOVER_STEPS,
            max_passes: int = MAX_PASSES, batch: int = 100, progress: bool = False) -> int:
    """Fit every state in place (see the module docstring). ``moments``: the original's moments on ``x``
    (``accumulate``), reused when given (parallel: as they are; sequential: as ``oo``). Returns the number of
    ORT passes made."""
    names = list(states)
    if mode not in ("sequential", "parallel"):
        raise ValueError(f"unknown recovery mode {mode!r}")
    passes = 0
    if moments is None:
        moments, passes = accumulate(model, [states[n].lp.layer for n in names], x, inp, batch=batch,
                                     progress=progress), 1
    if mode == "parallel":
        for name in tqdm(names, desc="layer-wise recovery (parallel)", unit="layer", disable=not progress):
            _fit(states[name], moments[name], steps)
        return passes
    chunks = groups(names, max_passes)
    bar = tqdm(total=len(names), desc="layer-wise recovery (sequential)", unit="layer", disable=not progress)
    for first, *rest in chunks:
        current = compressed_model(model, plan, states)
        cross = accumulate(model, [states[first].lp.layer], x, inp, compressed=current, batch=batch,
                           progress=progress, desc=f"inputs of {first}", known=moments)
        _fit(states[first], cross[first], steps)
        for name in rest:
            _fit(states[name], moments[name], steps)
        bar.update(1 + len(rest))
    bar.close()
    return passes + 2 * len(chunks)
