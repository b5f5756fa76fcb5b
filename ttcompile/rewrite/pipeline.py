"""Compress one model end to end, in memory: plan (or a given plan), optional calibration-only fitting or
training, rewrite, ``onnx.checker``, output comparison with the original and the verification gate.

Nothing is written here: ``Compressed.save`` writes the model and its plan as one atomic pair and refuses
to overwrite the input. A failed gate raises ``VerificationError``, bad input a ``UserError``.
"""

from __future__ import annotations

import copy
import os
from dataclasses import dataclass, field
from pathlib import Path

import onnx
import onnx_ir as ir

from ttcompile import modelfile
from ttcompile.analysis import calibrated
from ttcompile.errors import OptionError, UserError, opt
from ttcompile.feeds import load_named_feeds
from ttcompile.graph import to_proto
from ttcompile.layers import NON_FINITE, find_layers
from ttcompile.paths import check_outputs
from ttcompile.planning.plan import Plan
from ttcompile.planning.request import PlanOptions, plan_model
from ttcompile.protos import graph_inputs
from ttcompile.rewrite.compress import RewriteResult, apply_plan, check_plan_layers
from ttcompile.rewrite.gate import Verdict, enforce, floor_for, judge
from ttcompile.rewrite.quant import chain_precision, precision_summary
from ttcompile.rewrite.verify import check_model, compare_outputs, random_inputs
from ttcompile.sources import DataLike, Source, as_dataset, data_spec
from ttcompile.train.settings import TrainSettings

RANDOM_SAMPLES = 8


@dataclass
class Training:
    """``compress`` with training data: core-space distillation (torch, optional learned ranks) or
    fine-tuning of the compressed graph with onnxruntime-training (``backend="ort"``)."""

    train: DataLike
    val: DataLike | None = None
    backend: str = "torch"
    settings: TrainSettings = field(default_factory=TrainSettings)


@dataclass
class CompressReport:
    """What the compression did and how close the result is to the original."""

    results: list[RewriteResult]  # per planned layer: rewritten or why not, reconstruction error
    output_errors: dict[str, float]  # per graph output: relative error vs the original
    compared_on: str  # the inputs of that comparison
    verdict: Verdict  # the gate's limit and the measured error
    weights: str  # precision of the rewritten layers' weights, e.g. "3 float32"
    chains: str  # precision of the chains' initializers
    unchecked: dict[str, str] = field(default_factory=dict)  # outputs the comparison cannot check, and why

    @property
    def skipped(self) -> list[RewriteResult]:
        return [r for r in self.results if not r.rewritten]


def plan_path(output: str | os.PathLike) -> Path:
    """``out.onnx`` -> ``out.plan.json``."""
    return Path(output).with_suffix(".plan.json")


@dataclass
class Compressed:
    """The compressed ``model`` (the input's type: ModelProto for a path or a ModelProto, else ``ir.Model``),
    the ``plan`` it was emitted with and the ``report``."""

    model: onnx.ModelProto | ir.Model
    plan: Plan
    report: CompressReport
    source: Path | None = None  # the input file, which save never overwrites

    def proto(self) -> onnx.ModelProto:
        return self.model if isinstance(self.model, onnx.ModelProto) else to_proto(self.model)

    def save(self, path: str | os.PathLike) -> Path:
        """Write the model to ``path`` and its plan beside it (``path`` with suffix ``.plan.json``) as one
        atomic pair; refuses a path that is the input model or not a writable file name."""
        out = Path(path)
        check_outputs(modelfile.input_files("the input model", self.source),
                      [*modelfile.output_files("output", out), ("its plan", plan_path(out))])
        save_pair(self.proto(), self.plan, out)
        return out


def save_pair(proto: onnx.ModelProto, plan: Plan, out: str | os.PathLike) -> list[Path]:
    """OUT's plan and OUT (with OUT's data file when large, ``ttcompile.modelfile``) as one atomic step: all
    written and fsynced, then the plan renamed, then the data, then OUT. Returns the files written."""
    return modelfile.save(proto, out, {plan_path(out): plan.to_bytes()})


def _given_plan(source: Source, plan: Plan | str | os.PathLike, input_shapes: dict | None) -> Plan:
    plan = copy.deepcopy(plan) if isinstance(plan, Plan) else Plan.load(plan)
    check_plan_layers(plan, find_layers(source.model, input_shapes))
    return plan


def check_some_compressed(plan: Plan) -> None:
    """A plan that compresses nothing, or a model with non-finite weights (its outputs cannot be
    compared), is refused."""
    bad = [lp for lp in plan.layers if (lp.layer.skip or "").endswith(NON_FINITE)]
    if bad:
        raise UserError(f"{plan.model}: layer {bad[0].name!r}: {bad[0].layer.skip}")
    if not any(lp.action == "compress" for lp in plan.layers):
        reasons = "; ".join(f"{lp.name}: {lp.reason}" for lp in plan.layers)
        raise UserError(f"{plan.model}: no layer would be compressed ({reasons})")


def check_some_rewritten(plan: Plan, results: list[RewriteResult]) -> None:
    """A run in which every planned rewrite failed is an error, not a copy of the input."""
    if not any(r.rewritten for r in results):
        reasons = "; ".join(f"{r.name}: {r.reason}" for r in results)
        raise UserError(f"{plan.model}: no layer could be rewritten ({reasons})")


def compress_in_memory(model: ir.Model, plan: Plan, progress: bool = False, cores: dict | None = None,
                       transform=None) -> tuple[list[RewriteResult], onnx.ModelProto]:
    """Apply ``plan`` to ``model`` (emitting ``cores`` where given), optionally ``transform`` the compressed
    proto (e.g. distillation on the calibration data), and check the result with onnx.checker."""
    check_some_compressed(plan)
    results = apply_plan(model, plan, progress=progress, cores=cores)
    check_some_rewritten(plan, results)
    proto = to_proto(model)
    if transform is not None:
        proto = transform(proto)
    check_model(proto)
    return results, proto


def _train(source: Source, plan: Plan, t: Training, progress: bool) -> tuple[Plan, list, onnx.ModelProto]:
    from ttcompile.train.backends import require

    train = as_dataset(t.train, "training data")
    val = None if t.val is None else as_dataset(t.val, "validation data")
    check_some_compressed(plan)
    if t.backend == "ort":
        if t.settings.method != "none":
            raise OptionError(f"{opt('rank_select')} {t.settings.method} is torch-only; use "
                              f"{opt('backend')} torch")
        require("ort")
        from ttcompile.train.backends import epoch_logger
        from ttcompile.train.ort_compress import compress_and_finetune

        metric = "accuracy" if val is not None and val.y is not None else "agreement"
        results, proto, _ = compress_and_finetune(
            source.model, plan, train, val, epochs=t.settings.epochs, progress=progress,
            on_epoch=epoch_logger(t.settings.epochs, metric), lr=t.settings.lr, threads=t.settings.threads)
        check_some_rewritten(plan, results)
        check_model(proto)
        return plan, results, proto
    require("torch")
    from ttcompile.train.rank_select import compress_and_train

    dense = to_proto(source.model)
    outcome = compress_and_train(dense, dense, plan, train, val, t.settings, progress=progress)
    check_some_rewritten(outcome.plan, outcome.results)
    check_model(outcome.model)
    return outcome.plan, outcome.results, outcome.model


def _comparison(source: Source, data: DataLike | None, calib, samples: int, input_shapes: dict | None
                ) -> tuple[dict, str]:
    """Inputs to compare the outputs on: ``data`` (an .npz of named inputs too), else the calibration
    data, else seeded random inputs; and what they were."""
    original = source.original
    if data is None and calib is None:
        return random_inputs(original, batch=min(samples, RANDOM_SAMPLES), input_shapes=input_shapes), "random inputs"
    if isinstance(data, (str, os.PathLike)):
        named = load_named_feeds(data, original)
        if named is not None:
            return named, os.fspath(data)
    spec = data_spec(data if data is not None else calib, "comparison data")
    inputs = graph_inputs(original)
    if len(inputs) != 1:
        raise OptionError(f"{opt('data')} feeds one input, the model has {len(inputs)}")
    x = calibrated.calibration_inputs(spec, original, samples)
    return {inputs[0].name: x}, spec if isinstance(spec, str) else spec.name


def compress_source(source: Source, *, plan: Plan | str | os.PathLike | None = None,
                    options: PlanOptions | None = None, recovery: calibrated.Settings | None = None,
                    calib_samples: int | None = None, training: Training | None = None, data: DataLike | None = None,
                    samples: int = 64, max_error: float | None = None, progress: bool = False) -> Compressed:
    """Compress ``source`` (see the module docstring); ``options`` plan it unless a ``plan`` is given,
    ``recovery`` (with ``options.calib``) fits the cores on calibration inputs, ``training`` trains them."""
    options = options or PlanOptions()
    if plan is not None:
        plan = _given_plan(source, plan, options.input_shapes)
    else:
        plan = plan_model(source, options, progress)
    calib = options.calib
    if training is not None:
        plan, results, proto = _train(source, plan, training, progress)
    else:
        model, cores, transform = source.model, None, None
        if calib is not None and recovery is not None:
            x = calibrated.calibration_inputs(data_spec(calib, "calibration data"), source.original, calib_samples)
            model, cores, transform = calibrated.prepare(recovery, model, plan, x)
        results, proto = compress_in_memory(model, plan, progress=progress, cores=cores, transform=transform)
    original = source.original
    feeds, compared_on = _comparison(source, data, calib, samples, options.input_shapes)
    errors, unchecked = compare_outputs(original, proto, feeds, names=(source.id.name, "the compressed model"))
    verdict = judge(errors, [r.error for r in results if r.rewritten], max_error, trained=training is not None,
                    floor=floor_for(original), unchecked=unchecked)
    enforce(verdict)
    rewritten = [lp.layer for lp in plan.layers if lp.action == "compress"]
    report = CompressReport(results, errors, compared_on, verdict, precision_summary(rewritten),
                            chain_precision(proto, [layer.name for layer in rewritten]), unchecked)
    return Compressed(source.give_back(proto), plan, report, source.path)
