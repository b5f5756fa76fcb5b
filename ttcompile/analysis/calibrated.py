"""Compression from calibration inputs only: data-aware init, layer-wise recovery, optional distillation.

``compress --calib D``: moments of every compressed layer's input on D (one ORT pass of the original),
cores initialised data-aware (``--init data``, the default with D) or from the weights (``--init weight``),
then ``--recover layer`` (default) fits every layer to the original's outputs (``ttcompile.analysis.recovery``) and
``--recover model`` adds a knowledge-distillation fine-tune on D (labels from the original model, D's own
labels are never read) at a small learning rate (``--recover-lr``, default 1e-4: at the fine-tune's 1e-3, 40
steps on 1,000 images undid a recovered ResNet's fit), and keeps it only when it fits the original better on D
(``distil``: top-1 agreement not lower and KL lower). What was done goes into the plan's ``settings["calibration"]``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from math import prod

import numpy as np
import onnx
import onnx_ir as ir

from ttcompile.analysis.features import ModelInput, model_input
from ttcompile.analysis.moments import DIAGONAL_ABOVE, MIN_ROWS, ROW_FLOPS, accumulate
from ttcompile.analysis.recovery import (
    INIT_STEPS,
    MAX_PASSES,
    RECOVER_STEPS,
    LayerState,
    initial_states,
    recover,
    with_biases,
)
from ttcompile.benchmark.tables import align
from ttcompile.errors import OptionError, UserError, opt
from ttcompile.graph import to_proto
from ttcompile.models.data import Dataset
from ttcompile.planning.plan import Plan

RECOVER_EPOCHS, RECOVER_LR = 5, 1e-4
INITS, RECOVERS, MODES = ("weight", "data"), ("none", "layer", "model"), ("sequential", "parallel")


@dataclass
class Settings:
    init: str = "data"  # "weight" | "data"
    recover: str = "layer"  # "none" | "layer" | "model"
    mode: str = "sequential"  # layer-wise recovery: "sequential" | "parallel"
    init_steps: int = INIT_STEPS
    recover_steps: int = RECOVER_STEPS
    max_passes: int = MAX_PASSES
    epochs: int = RECOVER_EPOCHS  # --recover model: distillation epochs
    lr: float = RECOVER_LR  # --recover model: peak learning rate
    batch: int = 100
    threads: int = 1
    progress: bool = False
    times: dict = field(default_factory=dict)

    def check(self) -> None:
        """OptionError for a value no run can use."""
        for name, value, allowed in (("init", self.init, INITS), ("recover", self.recover, RECOVERS),
                                     ("recover_mode", self.mode, MODES)):
            if value not in allowed:
                raise OptionError(f"{opt(name)} {value!r}: choose one of {', '.join(allowed)}")
        if self.recover_steps < 0 or self.epochs < 0:
            raise OptionError(f"{opt('recover_steps')} and {opt('recover_epochs')} must be >= 0")
        if not self.lr > 0 or not np.isfinite(self.lr):
            raise OptionError(f"{opt('recover_lr')} must be a positive number, not {self.lr}")


def calibration_inputs(spec: str | Dataset, proto: onnx.ModelProto, samples: int | None = None) -> np.ndarray:
    """The first ``samples`` inputs of ``spec`` (labels dropped), reshaped to the model's input when sizes match."""
    from ttcompile.models.data import dataset

    inp = model_input(proto)
    data = dataset(spec)
    spec, x = spec if isinstance(spec, str) else data.name, data.x[:samples]
    want = inp.dims[1:]
    fits = len(want) == x.ndim - 1 and all(w is None or w == d for w, d in zip(want, x.shape[1:]))
    if not fits:  # dynamic dims take the samples' sizes; a flat sample of the right size is reshaped
        if None in want or prod(x.shape[1:]) != prod(want):
            raise UserError(f"{spec}: samples have shape {x.shape[1:]}, the model input {inp.name!r} expects "
                            f"{tuple('?' if w is None else w for w in want)}")
        x = x.reshape(len(x), *want)
    if len(x) == 0:
        raise UserError(f"{spec}: no calibration samples")
    return np.ascontiguousarray(x, dtype=inp.dtype)


def fit(model: ir.Model, plan: Plan, x: np.ndarray, inp: ModelInput, s: Settings
        ) -> tuple[ir.Model, dict[str, LayerState]]:
    """Data-aware init and layer-wise recovery; returns ``model`` with fitted biases and the layer states
    (cores to emit with ``apply_plan(..., cores=...)``). Records what was done in ``plan.settings``."""
    layers = [lp.layer for lp in plan.layers if lp.action == "compress"]
    t0 = time.perf_counter()
    moments = accumulate(model, layers, x, inp, batch=s.batch, progress=s.progress)
    t1 = time.perf_counter()
    states = initial_states(model, plan, moments, s.init == "data", s.init_steps, s.progress)
    t2 = time.perf_counter()
    passes = 1
    if s.recover in ("layer", "model"):
        passes += recover(model, plan, states, x, inp, s.mode, moments, s.recover_steps, s.max_passes, s.batch,
                          s.progress)
    t3 = time.perf_counter()
    s.times.update(moments_s=t1 - t0, init_s=t2 - t1, recovery_s=t3 - t2)
    plan.settings["calibration"] = {
        "samples": len(x), "labels": "not used", "init": s.init, "recover": s.recover,
        "recovery_mode": s.mode if s.recover != "none" else None, "init_steps": s.init_steps,
        "recover_steps": s.recover_steps, "ort_passes": passes,
        "moments": f"inputs augmented with a constant 1; conv patch rows capped at max({MIN_ROWS}, "
                   f"{ROW_FLOPS:.0e} / n^2) (fixed positions); diagonal above n = {DIAGONAL_ABOVE}",
        "errors": "relative RMS output error of the layer on the calibration inputs",
        "times_s": {k: round(v, 3) for k, v in s.times.items()},
        "layers": {name: st.record.to_json() for name, st in states.items()},
    }
    return with_biases(model, states), states


def teacher_fit(student: onnx.ModelProto, teacher_logits: np.ndarray, x: np.ndarray,
                threads: int | None = None) -> dict[str, float]:
    """How well ``student`` reproduces the teacher on ``x``: top-1 ``agreement`` and the mean ``kl``
    ``KL(softmax(teacher) || softmax(student))`` over the samples (first outputs, ``(N, C)``)."""
    from ttcompile.train.common import teacher_logits as logits_of

    s = logits_of(student, x, threads=threads).astype(np.float64)
    t = teacher_logits.astype(np.float64)
    log_s = s - s.max(1, keepdims=True)
    log_s -= np.log(np.exp(log_s).sum(1, keepdims=True))
    log_t = t - t.max(1, keepdims=True)
    log_t -= np.log(np.exp(log_t).sum(1, keepdims=True))
    kl = float(np.mean(np.sum(np.exp(log_t) * (log_t - log_s), axis=1)))
    return {"agreement": float(np.mean(s.argmax(1) == t.argmax(1))), "kl": kl}


def distil(student: onnx.ModelProto, teacher: onnx.ModelProto, x: np.ndarray, s: Settings
           ) -> tuple[onnx.ModelProto, dict]:
    """``--recover model``: knowledge distillation on ``x`` with the teacher's outputs as the only targets.

    Never worse on ``x``: the tuned student is returned only when its top-1 agreement with the teacher is not
    lower and its KL is lower than the input's; otherwise ``student`` itself. Returns the model and a record
    (``kept``, the fit before and after)."""
    from ttcompile.train.common import teacher_logits
    from ttcompile.train.finetune import finetune

    t0 = time.perf_counter()
    targets = teacher_logits(teacher, x, threads=s.threads)
    before = teacher_fit(student, targets, x, s.threads)
    tuned, _ = finetune(student, teacher, Dataset(x, None, "calibration"), epochs=s.epochs, lr=s.lr,
                        progress=s.progress, threads=s.threads)
    after = teacher_fit(tuned, targets, x, s.threads)
    kept = after["agreement"] >= before["agreement"] and after["kl"] < before["kl"]
    s.times["distillation_s"] = time.perf_counter() - t0
    record = {"kept": kept, "epochs": s.epochs, "lr": s.lr, "fit_before": before, "fit_after": after}
    return (tuned if kept else student), record


def records_table(plan: Plan) -> str:
    """Per compressed layer: the cores kept and the calibration output errors before/after recovery."""
    cal = plan.settings["calibration"]

    def f(v: float | None) -> str:
        return "-" if v is None else f"{v:.3f}"

    rows = [[name, r["init"] + (" (closed form)" if r["closed_form"] and r["init"] == "data" else ""),
             f(r["error_weight_init"]), f(r["error_data_init"]), f(r["error_before_recovery"]),
             f(r["error_after_recovery"])] for name, r in cal["layers"].items()]
    head = (f"calibration: {cal['samples']} samples (labels not used), init {cal['init']}, recovery {cal['recover']}"
            + (f" ({cal['recovery_mode']}, {cal['ort_passes']} ORT passes)" if cal["recover"] != "none" else "")
            + "; " + ", ".join(f"{k} {v:.1f}" for k, v in cal["times_s"].items()))
    table = "\n".join(align(["layer", "cores", "err weight-init", "err data-init", "err before rec.",
                             "err after rec."], rows))
    d = cal.get("distillation")
    if d:
        b, a = d["fit_before"], d["fit_after"]
        table += (f"\ndistillation on the calibration samples ({d['epochs']} epochs, lr {d['lr']:g}): agreement with "
                  f"the original {b['agreement']:.4f} -> {a['agreement']:.4f}, KL {b['kl']:.4g} -> {a['kl']:.4g}: "
                  + ("kept" if d["kept"] else "not kept (no better fit; the layer-recovered model is written)"))
    return head + "\n" + table


def prepare(s: Settings, model: ir.Model, plan: Plan, x: np.ndarray):
    """``(model with fitted biases, cores, transform of the compressed proto)`` from calibration inputs ``x``:
    data-aware init and layer-wise recovery (``fit``), and with ``recover="model"`` a distillation of the
    compressed proto (``distil``) recorded in the plan."""
    teacher = to_proto(model)
    fitted, states = fit(model, plan, x, model_input(teacher), s)
    cores = {name: st.cores for name, st in states.items()}
    if s.recover != "model":
        return fitted, cores, None

    def transform(proto: onnx.ModelProto) -> onnx.ModelProto:
        tuned, record = distil(proto, teacher, x, s)
        plan.settings["calibration"]["times_s"]["distillation_s"] = round(s.times["distillation_s"], 3)
        plan.settings["calibration"]["distillation"] = record
        return tuned

    return fitted, cores, transform
