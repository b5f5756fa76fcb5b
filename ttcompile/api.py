"""The Python API: ``inspect``, ``analyze``, ``plan``, ``compress``, ``finetune``, ``bench``.

Each takes a model as a path, an ``onnx.ModelProto`` or an ``onnx_ir.Model`` (never modified) and data as a
path or dataset spec, an array ``x``, a pair ``(x, y)`` or an iterable of such batches
(``ttcompile.sources``). Each returns objects and prints nothing; progress bars only with ``progress=True``,
messages through ``logging`` (logger ``ttcompile``). Bad input raises a ``ttcompile.UserError`` subclass, a
compressed model further from the original than the gate allows a ``ttcompile.VerificationError``. The
``ttcompile`` command line is a thin layer over these functions.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import onnx
import onnx_ir as ir

from ttcompile.analysis.calibrated import Settings as RecoverySettings
from ttcompile.analysis.lwiq import Analysis
from ttcompile.analysis.sensitivity import CURVE_SAMPLES
from ttcompile.benchmark.bench import BenchReport
from ttcompile.errors import OptionError, opt
from ttcompile.graph import to_proto
from ttcompile.planning.budget import Budget
from ttcompile.planning.plan import Plan
from ttcompile.planning.request import LatencyOptions, PlanOptions, plan_model
from ttcompile.rewrite.pipeline import Compressed, Training, compress_source
from ttcompile.sources import DataLike, ModelLike, as_dataset, resolve_model
from ttcompile.train.settings import TrainSettings

Ranks = int | dict[str, list[int]] | None


def _options(format: str, ratio: float | None, ranks: Ranks, **kw) -> PlanOptions:
    return PlanOptions(format=format, ratio=ratio, ranks=ranks, **kw)


def inspect(model: ModelLike, *, format: str = "tt", ratio: float | None = None, ranks: Ranks = None,
            modes: dict[str, dict] | None = None, input_shapes: dict[str, tuple[int, ...]] | None = None,
            force: bool = False, allow_more_macs: bool = False) -> Plan:
    """Every Gemm/MatMul/Conv layer of ``model`` with its cost and what a uniform plan would do with it:
    the Plan at rank ``ranks`` or parameter ``ratio`` (default 0.1), nothing rewritten."""
    return plan_model(resolve_model(model), _options(format, ratio, ranks, modes=modes, input_shapes=input_shapes,
                                                     force=force, allow_more_macs=allow_more_macs))


def analyze(model: ModelLike, data: DataLike, *, formats: Sequence[str] = ("tt",),
            modes: dict[str, dict] | None = None, batch: int = 256, holdout: float = 0.5, seed: int = 0,
            input_shapes: dict[str, tuple[int, ...]] | None = None, pseudo_classes: int = 10,
            readout: str = "next", curve_samples: int = CURVE_SAMPLES, progress: bool = False) -> Analysis:
    """LWIQ significance of every layer and its rank-sensitivity curves in ``formats`` on calibration
    ``data`` (labels optional); ``Analysis.save(path)`` writes the JSON ``plan(..., analysis=...)`` reads."""
    from ttcompile.analysis.lwiq import analyze as lwiq_analyze

    if not 0 <= holdout <= 1:
        raise OptionError(f"{opt('holdout')} {holdout} is outside [0, 1]")
    return lwiq_analyze(resolve_model(model), as_dataset(data, "calibration data"), formats=list(formats),
                        modes=modes, batch=batch, holdout=holdout, seed=seed, input_shapes=input_shapes,
                        pseudo_classes=pseudo_classes, readout=readout, curve_samples=curve_samples,
                        progress=progress)


def plan(model: ModelLike, *, format: str = "tt", ratio: float | None = None, ranks: Ranks = None,
         budget: str | dict | Budget | None = None, calib: DataLike | None = None, allocator: str | None = None,
         analysis: Analysis | str | os.PathLike | None = None, modes: dict[str, dict] | None = None,
         input_shapes: dict[str, tuple[int, ...]] | None = None, force: bool = False,
         allow_more_macs: bool = False, lwiq_weights: str = "output", lwiq_damage: str = "log",
         calib_batch: int = 256,
         pseudo_classes: int = 10, latency: LatencyOptions | None = None, progress: bool = False) -> Plan:
    """Per layer the format, modes, ranks and cost: uniform (``ranks`` int, or ``{layer: [r, ..]}``; or
    ``ratio``) or, with a ``budget`` (``"params=0.1"``, ``{"macs": 0.5}``, ``latency=`` measured on
    ``latency``), spent by ``allocator`` (lwiq from ``analysis`` or ``calib``; uniform, energy, greedy with
    ``calib``, datafree). ``modes``: ``{layer: {"in": [..], "out": [..]}}`` factorisation overrides."""
    return plan_model(resolve_model(model), _options(
        format, ratio, ranks, budget=budget, calib=calib, allocator=allocator, analysis=analysis, modes=modes,
        input_shapes=input_shapes, force=force, allow_more_macs=allow_more_macs, lwiq_weights=lwiq_weights,
        lwiq_damage=lwiq_damage, calib_batch=calib_batch, pseudo_classes=pseudo_classes, latency=latency), progress)


def compress(model: ModelLike, *, format: str = "tt", ratio: float | None = None, ranks: Ranks = None,
             budget: str | dict | Budget | None = None, calib: DataLike | None = None, allocator: str | None = None,
             recover: str | None = None, plan: Plan | str | os.PathLike | None = None,
             max_error: float | None = None, progress: bool = False, init: str | None = None,
             recovery: RecoverySettings | None = None, calib_samples: int | None = None,
             analysis: Analysis | str | os.PathLike | None = None, modes: dict[str, dict] | None = None,
             input_shapes: dict[str, tuple[int, ...]] | None = None, force: bool = False,
             allow_more_macs: bool = False, lwiq_weights: str = "output", lwiq_damage: str = "log",
         calib_batch: int = 256,
             pseudo_classes: int = 10, latency: LatencyOptions | None = None, train: DataLike | None = None,
             val: DataLike | None = None, training: TrainSettings | None = None, backend: str = "torch",
             data: DataLike | None = None, samples: int = 64) -> Compressed:
    """Compress ``model``: plan it as ``ttcompile.plan`` does (or apply ``plan``, a Plan or its JSON path),
    rewrite every planned layer into its decomposed chain, check it and compare its outputs with the
    original's on ``data`` (else ``calib``, else seeded random inputs; ``samples`` of them).

    With ``calib`` (and a budget), the cores are fitted to the layer outputs (``init``: "data" | "weight")
    and recovered (``recover``: "none" | "layer" | "model"; more knobs in ``recovery``). With ``train`` (and
    ``val``) they are trained (``training``: epochs, learned ranks, ...; ``backend``: "torch" | "ort").
    Raises VerificationError when the output error exceeds ``max_error`` (default: the limit predicted
    from the layers' reconstruction errors). Returns ``Compressed``: ``.model`` of the input's type (a path
    gives a ModelProto), ``.plan``, ``.report``, ``.save(path)``.
    """
    if training is not None and train is None:
        raise OptionError(f"{opt('training')} settings need training data ({opt('train')})")
    source = resolve_model(model)
    options = _options(format, ratio, ranks, budget=budget, calib=calib, allocator=allocator, analysis=analysis,
                       modes=modes, input_shapes=input_shapes, force=force, allow_more_macs=allow_more_macs,
                       lwiq_weights=lwiq_weights, lwiq_damage=lwiq_damage, calib_batch=calib_batch,
                       pseudo_classes=pseudo_classes, latency=latency)
    return compress_source(
        source, plan=plan, options=options, recovery=_recovery(calib, init, recover, recovery, progress),
        calib_samples=calib_samples,
        training=None if train is None else Training(train, val, backend, training or TrainSettings()),
        data=data, samples=samples, max_error=max_error, progress=progress)


def _recovery(calib, init: str | None, recover: str | None, settings: RecoverySettings | None,
              progress: bool) -> RecoverySettings | None:
    """The calibration-only settings: ``settings`` with ``init``/``recover`` where given; None without data."""
    if calib is None:
        given = [opt(k) for k, v in (("init", init), ("recover", recover), ("recovery", settings)) if v is not None]
        if given:
            raise OptionError(f"{', '.join(given)} need calibration data ({opt('calib')})")
        return None
    s = settings or RecoverySettings()
    s = replace(s, init=init or s.init, recover=recover or s.recover, progress=progress)
    s.check()
    return s


@dataclass
class Finetuned:
    """The fine-tuned ``model`` (the input's type; same graph, new weights) and its training ``history``."""

    model: onnx.ModelProto | ir.Model
    history: object  # ttcompile.train.common.History


def finetune(model: ModelLike, teacher: ModelLike, train: DataLike, *, val: DataLike | None = None,
             epochs: int = 10, lr: float = 1e-3, batch_size: int = 128, temperature: float = 4.0,
             kd_weight: float = 0.9, weight_decay: float = 0.0, seed: int = 0,
             checkpoint: str | os.PathLike | None = None, resume: bool = False, threads: int | None = None,
             backend: str = "torch", progress: bool = False) -> Finetuned:
    """Distil ``teacher`` into ``model``'s weights on ``train`` (cross-entropy on its labels too, weight
    ``1 - kd_weight``); with ``val`` the best epoch is kept. ``backend``: "torch" or "ort"."""
    from ttcompile.rewrite.verify import check_model
    from ttcompile.train.backends import epoch_logger
    from ttcompile.train.backends import finetune as run

    student, teach = resolve_model(model), resolve_model(teacher)
    train_set = as_dataset(train, "training data")
    val_set = None if val is None else as_dataset(val, "validation data")
    metric = "accuracy" if val_set is not None and val_set.y is not None else "agreement"
    tuned, history = run(
        to_proto(student.model), to_proto(teach.model), train_set, val_set, epochs=epochs, lr=lr,
        batch_size=batch_size, temperature=temperature, kd_weight=kd_weight, weight_decay=weight_decay, seed=seed,
        checkpoint=None if checkpoint is None else Path(checkpoint), resume=resume, progress=progress,
        on_epoch=epoch_logger(epochs, metric), threads=threads, backend=backend)
    check_model(tuned)
    return Finetuned(student.give_back(tuned), history)


def bench(models: Sequence[ModelLike], data: DataLike | None = None, *, provider: str = "cpu",
          batches: Sequence[int] | None = None, threads: int = 1, rounds: int = 5, min_time: float = 0.25,
          seed: int = 0, names: Sequence[str] | None = None, progress: bool = False) -> BenchReport:
    """Latency (median of interleaved rounds), throughput, params, MACs, size, and accuracy (labels) and
    top-1 agreement with the first model, of each of ``models`` on ``provider`` at ``batches`` (default
    1, 32, 256, or the models' one fixed batch). In-memory models are timed from a temporary file named
    ``names[i]`` (default ``model<i>.onnx``)."""
    from ttcompile.benchmark.bench import benchmark, default_batches

    dataset = None if data is None else as_dataset(data, "benchmark data")
    if names is not None and len(names) != len(models):
        raise OptionError(f"{opt('names')} has {len(names)} entries for {len(models)} models")
    with tempfile.TemporaryDirectory(prefix="ttcompile-bench-") as tmp:
        paths = [_on_disk(m, Path(tmp), names[i] if names else f"model{i}.onnx") for i, m in enumerate(models)]
        return benchmark(paths, dataset, provider=provider, batches=list(batches or default_batches(paths)),
                         threads=threads, rounds=rounds, min_time=min_time, seed=seed, progress=progress)


def _on_disk(model: ModelLike, folder: Path, name: str) -> Path:
    """A path to ``model``: its own, or a file in ``folder`` holding its serialisation."""
    if isinstance(model, (str, os.PathLike)):
        return Path(model)
    proto = to_proto(model) if isinstance(model, ir.Model) else model
    if not isinstance(proto, onnx.ModelProto):
        raise OptionError(f"a model to bench is a path, an onnx.ModelProto or an onnx_ir.Model, "
                          f"not {type(model).__name__}")
    path = folder / Path(name).name
    path.write_bytes(proto.SerializeToString())
    return path
