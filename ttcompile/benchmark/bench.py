"""Benchmark ONNX models on ONNX Runtime: latency, throughput, static cost, accuracy and agreement.

Measurement protocol (see shared/design/performance.md for why):

- ONE session alive at a time: each round creates a session per model, warms it
  up, times every batch size, evaluates (first round only) and releases it.
- Models are interleaved, and the order alternates between rounds (A B | B A | A B ...),
  so slow drift of the machine hits every model alike.
- Within a round a batch size is timed for at least ``min_time`` seconds and
  ``min_runs`` runs, whichever is longer. The round's figure is its 10th-percentile
  run: other processes only ever add time, so a low quantile estimates the
  undisturbed latency (on a loaded 2-core machine it kept the two-run spread of a
  speedup at ~1-3 %, where the median run gave up to 23 %).
- ``latency_ms`` is the median of the round figures; throughput and speedups use it.
  ``median_ms`` and ``p90_ms`` describe all timed runs pooled, disturbances included.

Inputs: a model's first dim is its batch dim. With a data set, every model sees the
same samples, reshaped to its own per-sample input shape when the element counts
match (e.g. flat 784 features for an MLP and 1x28x28 for a CNN). A batch larger than
the data set is filled by wrapping around to its start. Without data, inputs are
seeded random normals (integer inputs: zeros), the same for every model of the same
input shape, and there is no accuracy.
"""

from __future__ import annotations

import math
import statistics
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import onnx
from tqdm import tqdm

from ttcompile.errors import UserError, opt
from ttcompile.feeds import declared_dims
from ttcompile.graph import load_model, to_proto
from ttcompile.protos import declared_shape, graph_inputs, run_batched
from ttcompile.rewrite.counting import count_params, total_macs
from ttcompile.runtime import make_session, provider_name, require_onnxruntime

if TYPE_CHECKING:
    from ttcompile.models.data import Dataset

SCHEMA = "ttcompile.benchmark.bench/1"
ROUND_QUANTILE = 10  # percentile of a round's runs taken as its latency
EVAL_BATCH = 256  # batch size of the accuracy pass for models with a dynamic batch


@dataclass
class ModelResult:
    """Batch-independent figures of one model. ``agreement``: top-1 agreement with the first model."""

    path: str
    name: str
    params: int
    macs_per_sample: int | None
    file_bytes: int
    accuracy: float | None = None
    agreement: float | None = None


@dataclass
class Timing:
    """Latency of one model at one batch size (milliseconds per ``run`` call), see the module docstring."""

    model: int  # index into BenchReport.models
    batch: int
    latency_ms: float  # median over rounds of each round's 10th-percentile run
    median_ms: float  # over all timed runs
    p90_ms: float  # over all timed runs
    round_latencies_ms: list[float]  # each round's 10th-percentile run, in round order
    runs: int

    @property
    def throughput(self) -> float:
        """Samples per second at ``latency_ms``."""
        return self.batch * 1000.0 / self.latency_ms


@dataclass
class BenchReport:
    """Everything one ``benchmark`` call measured; ratios compare with ``models[0]``."""

    models: list[ModelResult]
    timings: list[Timing]
    provider: str
    threads: int
    batches: list[int]
    rounds: int
    min_time_s: float
    data: str | None
    samples: int  # size of the evaluation set (data set, or random inputs)
    notes: list[str] = field(default_factory=list)

    def timing(self, model: int, batch: int) -> Timing:
        return next(t for t in self.timings if t.model == model and t.batch == batch)

    def speedup(self, model: int, batch: int) -> float:
        """``latency_ms`` of the first model / this model's, at the same batch size."""
        return self.timing(0, batch).latency_ms / self.timing(model, batch).latency_ms

    def params_reduction(self, model: int) -> float | None:
        """First model's params / this model's (higher = smaller)."""
        return _ratio(self.models[0].params, self.models[model].params)

    def macs_reduction(self, model: int) -> float | None:
        """First model's MACs per sample / this model's (higher = cheaper)."""
        return _ratio(self.models[0].macs_per_sample, self.models[model].macs_per_sample)

    def to_dict(self) -> dict:
        """JSON-ready dict (schema ``ttcompile.benchmark.bench/1``) with ratios to the first model included."""
        ort = require_onnxruntime()
        models = [
            {
                **asdict(m),
                "params_reduction": self.params_reduction(i),
                "macs_reduction": self.macs_reduction(i),
            }
            for i, m in enumerate(self.models)
        ]
        timings = [
            {
                **asdict(t),
                "model": self.models[t.model].name,
                "model_index": t.model,
                "throughput": t.throughput,
                "speedup": self.speedup(t.model, t.batch),
            }
            for t in self.timings
        ]
        meta = {k: v for k, v in asdict(self).items() if k not in ("models", "timings")}
        return {
            "schema": SCHEMA,
            "onnxruntime": ort.__version__,
            **meta,
            "models": models,
            "timings": timings,
        }


@dataclass
class _Input:
    name: str
    dims: list[int | None]  # None = dynamic
    dtype: np.dtype


@dataclass
class _Model:
    path: Path
    fixed_batch: int | None  # static leading dim of the inputs, None when dynamic
    samples: dict[str, np.ndarray]  # input name -> evaluation set [n, *per-sample shape]
    result: ModelResult
    note: str | None  # why MACs could not be counted


def benchmark(
    models: list[str | Path],
    data: Dataset | None = None,
    provider: str = "cpu",
    batches: tuple[int, ...] | list[int] = (1, 32, 256),
    threads: int = 1,
    *,
    rounds: int = 5,
    min_time: float = 0.25,
    min_runs: int = 10,
    seed: int = 0,
    progress: bool = False,
) -> BenchReport:
    """Benchmark ``models`` (paths) on ``provider`` and compare each with the first one.

    ``rounds``: interleaved create/warm-up/measure/release rounds per model;
    ``min_time`` (s) and ``min_runs``: timed runs per batch size and round;
    ``threads``: ORT intra-op threads (0 = ORT's default). See the module docstring.
    """
    if not models:
        raise UserError("no model to benchmark")
    batches = list(dict.fromkeys(batches))
    if not batches or any(b < 1 for b in batches):
        raise UserError(f"batch sizes must be positive integers, got {list(batches)}")
    if rounds < 1 or min_runs < 1 or min_time < 0:
        raise UserError("rounds and min_runs must be >= 1 and min_time >= 0")
    provider_name(provider)  # refuse a missing provider before any work
    if data is not None and len(data.x) == 0:
        raise UserError(f"data set {data.name!r} is empty")
    n_eval = len(data.x) if data is not None else max(batches)
    loaded = [_load(Path(p), data, batches, n_eval, seed) for p in models]
    _disambiguate_names([m.result for m in loaded])
    round_latencies: dict[tuple[int, int], list[float]] = {}
    all_runs: dict[tuple[int, int], list[float]] = {}
    first_preds: np.ndarray | None = None
    with tqdm(total=rounds * len(loaded), desc="bench", unit="session", disable=None if progress else True) as bar:
        for r in range(rounds):
            order = range(len(loaded)) if r % 2 == 0 else reversed(range(len(loaded)))
            for i in order:
                m = loaded[i]
                bar.set_postfix_str(f"round {r + 1}/{rounds} {m.result.name}")
                sess = make_session(str(m.path), provider, threads)
                for b in batches:
                    feeds = _take(m.samples, b)
                    _time_runs(sess, feeds, min_time / 5, 3)  # warm-up
                    runs = _time_runs(sess, feeds, min_time, min_runs)
                    round_latencies.setdefault((i, b), []).append(float(np.percentile(runs, ROUND_QUANTILE)))
                    all_runs.setdefault((i, b), []).extend(runs)
                if r == 0:  # round 0 runs the models in order: the first model is scored first
                    preds = _predict(sess, m)
                    first_preds = preds if i == 0 else first_preds
                    _score(m.result, preds, data, first_preds)
                del sess
                bar.update()
    timings = [
        Timing(
            model=i,
            batch=b,
            latency_ms=statistics.median(round_latencies[i, b]),
            median_ms=statistics.median(all_runs[i, b]),
            p90_ms=float(np.percentile(all_runs[i, b], 90)),
            round_latencies_ms=round_latencies[i, b],
            runs=len(all_runs[i, b]),
        )
        for i in range(len(loaded))
        for b in batches
    ]
    return BenchReport(
        models=[m.result for m in loaded],
        timings=timings,
        provider=provider,
        threads=threads,
        batches=batches,
        rounds=rounds,
        min_time_s=min_time,
        data=data.name if data is not None else None,
        samples=n_eval,
        notes=[m.note for m in loaded if m.note],
    )


def default_batches(models: list[str]) -> list[int]:
    """1, 32 and 256, or the one fixed batch the models' first input declares (e.g. ``(1, 3, 48, 320)``)."""
    fixed = set()
    for path in models:
        try:
            dims = next(iter(declared_dims(onnx.load(path, load_external_data=False)).values()), None)
        except Exception:  # unreadable models are reported by benchmark() itself
            continue
        if dims and dims[0] is not None:
            fixed.add(dims[0])
    return sorted(fixed) if len(fixed) == 1 else [1, 32, 256]


MAX_SAMPLE_BYTES = 1 << 30  # the inputs held for one model


def _load(path: Path, data: Dataset | None, batches: list[int], n: int, seed: int) -> _Model:
    """Read ``path`` (UserError naming it when unusable), check its inputs, count its cost, make samples."""
    proto = to_proto(load_model(path))
    inputs = _inputs(proto, path)
    if data is not None and len(inputs) != 1:
        raise UserError(f"{path}: {opt('data')} feeds one input, the model has {len(inputs)}")
    fixed = {inp.dims[0] for inp in inputs} - {None}
    if len(fixed) > 1:
        raise UserError(f"{path}: inputs disagree on the batch size ({sorted(fixed)})")
    fixed_batch = fixed.pop() if fixed else None
    if fixed_batch is not None and set(batches) != {fixed_batch}:
        raise UserError(f"{path}: the model has a fixed batch size of {fixed_batch}; "
                        f"use {opt('batches')} {fixed_batch}")
    shapes = {inp.name: _sample_shape(inp, path, data) for inp in inputs}
    macs_batch = fixed_batch or 1
    note = None
    try:
        macs = total_macs(proto, macs_batch, {k: (macs_batch, *s) for k, s in shapes.items()}) // macs_batch
    except UserError as exc:
        macs, note = None, f"{path.name}: MACs not counted: {exc}"
    rng = np.random.default_rng(seed)
    samples = {}
    for inp in inputs:
        size = n * math.prod(shapes[inp.name]) * inp.dtype.itemsize
        if size > MAX_SAMPLE_BYTES:
            raise UserError(f"{path}: {n} samples of input {inp.name!r} would take {size / 2**30:.3g} GiB "
                            f"(limit {MAX_SAMPLE_BYTES / 2**30:g} GiB); use smaller {opt('batches')}")
        if data is not None:
            samples[inp.name] = data.x.reshape(n, *shapes[inp.name]).astype(inp.dtype, copy=False)
        elif np.issubdtype(inp.dtype, np.floating):
            samples[inp.name] = rng.standard_normal((n, *shapes[inp.name])).astype(inp.dtype)
        else:
            samples[inp.name] = np.zeros((n, *shapes[inp.name]), inp.dtype)
    result = ModelResult(str(path), path.name, count_params(proto), macs, path.stat().st_size)
    return _Model(path, fixed_batch, samples, result, note)


def _inputs(proto: onnx.ModelProto, path: Path) -> list[_Input]:
    """The real (non-initializer) tensor inputs of the graph, each with a leading batch dim."""
    inputs = []
    for vi in graph_inputs(proto):
        tt = vi.type.tensor_type
        if not vi.type.HasField("tensor_type") or not tt.HasField("shape") or not tt.shape.dim:
            raise UserError(f"{path}: input {vi.name!r} is not a tensor with a batch dim")
        dims = list(declared_shape(vi))
        dtype = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(tt.elem_type)) if tt.elem_type else None
        if dtype is None or dtype.kind not in "biuf":
            name = onnx.TensorProto.DataType.Name(tt.elem_type) if tt.elem_type else "undefined"
            raise UserError(f"{path}: input {vi.name!r} has element type {name}, which bench cannot feed")
        inputs.append(_Input(vi.name, dims, dtype))
    return inputs


def _sample_shape(inp: _Input, path: Path, data: Dataset | None) -> tuple[int, ...]:
    """Per-sample shape of an input: the model's static dims, dynamic ones taken from the data."""
    dims = inp.dims[1:]
    data_shape = None if data is None else tuple(data.x.shape[1:])
    if None not in dims:
        if data_shape is not None and math.prod(data_shape) != math.prod(dims):
            raise UserError(
                f"{path}: input {inp.name!r} takes samples of shape {tuple(dims)}, "
                f"the data set has samples of shape {data_shape}"
            )
        return tuple(dims)
    if data_shape is None or len(data_shape) != len(dims):
        raise UserError(
            f"{path}: input {inp.name!r} has dynamic dims besides the batch ({inp.dims}); "
            f"give data ({opt('data')}) whose samples fix them"
        )
    if any(d is not None and d != s for d, s in zip(dims, data_shape, strict=True)):
        raise UserError(f"{path}: input {inp.name!r} of shape {inp.dims} does not fit data samples {data_shape}")
    return data_shape


def _take(samples: dict[str, np.ndarray], batch: int) -> dict[str, np.ndarray]:
    """First ``batch`` samples of every input, wrapping around when the set is smaller."""
    return {k: v[:batch] if batch <= len(v) else v[np.arange(batch) % len(v)] for k, v in samples.items()}


def _time_runs(sess, feeds: dict[str, np.ndarray], min_time: float, min_runs: int) -> list[float]:
    """Run until both ``min_runs`` runs and ``min_time`` seconds are done; milliseconds per run."""
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < min_runs or time.perf_counter() - start < min_time:
        t0 = time.perf_counter()
        sess.run(None, feeds)
        times.append((time.perf_counter() - t0) * 1e3)
    return times


def _predict(sess, m: _Model) -> np.ndarray:
    """Top-1 predictions (argmax over the last axis of the first output) on the whole evaluation set."""
    output = sess.get_outputs()[0].name
    outs = run_batched(lambda feeds: sess.run([output], feeds)[0], m.samples, m.fixed_batch or EVAL_BATCH,
                       pad=m.fixed_batch is not None)  # a fixed-batch model gets its last batch padded
    return np.concatenate([out.argmax(-1) for out in outs])


def _score(result: ModelResult, preds: np.ndarray, data: Dataset | None, first: np.ndarray) -> None:
    """Fill accuracy (labels needed) and top-1 agreement with the first model's predictions."""
    if data is not None and data.y is not None:
        if preds.shape != data.y.shape:
            raise UserError(f"{result.path}: predictions of shape {preds.shape} do not match labels {data.y.shape}")
        result.accuracy = float((preds == data.y).mean())
    result.agreement = float((preds == first).mean()) if preds.shape == first.shape else None


def _disambiguate_names(results: list[ModelResult]) -> None:
    """Prefix display names with their position when two models share a file name."""
    if len({r.name for r in results}) < len(results):
        for i, r in enumerate(results):
            r.name = f"{i + 1}:{r.name}"


def _ratio(first: float | None, this: float | None) -> float | None:
    return first / this if first is not None and this else None
