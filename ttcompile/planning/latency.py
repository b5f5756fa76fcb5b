"""Measured latency for ``--budget latency=F``: a per-layer table of (dense, chain) times on one EP.

What is measured (``bench_timer``, i.e. ``ttcompile.benchmark.bench.benchmark``: one session alive at a time,
interleaved rounds in alternating order, each round's 10th-percentile run, median over rounds):

* the reference, in one interleaved run: the whole original model at ``batch`` / ``threads`` on
  ``provider`` (``T_model``, ms per run) and every budgeted layer alone in its dense form (``D_l``; the
  layer as a tiny model, ``ttcompile.rewrite.layer_model``);
* per candidate (layer, format, modes, ranks, realization) the layer's chain alone next to its dense form,
  in the same interleaved run: ``(d_l, c_l)``.

The latency model (``LatencyBudget.predict``): ``T(plan) = T_model - sum over compressed layers of
D_l (1 - c_l / d_l)``, i.e. the per-layer dense times plus the measured non-layer remainder
``T_model - sum_l D_l`` (activations, pooling, residual adds, per-call overhead), with each compressed
layer's time scaled by its measured speed ratio. Only ratios and same-run figures enter: on a shared
machine absolute times drift by tens of percent between runs, the ratio of an interleaved pair does not.
A chain counts as faster only when ``c_l <= (1 - MIN_GAIN) d_l`` (the noise margin of one pair).
``benchmarks/latency_budget.py`` checks the prediction against ``ttcompile bench``.

Cache: ``$TTCOMPILE_CACHE/latency/<provider>-b<batch>-t<threads>.json`` (default ``~/.cache/ttcompile``),
holding the environment it was measured in (ORT version, CPU model, provider, batch, threads) and
entries keyed by the layer's signature (op, shapes, attributes, format, modes, ranks, realization), and
references keyed by the model file's SHA-256 (with the closed loop's whole-model ratios,
``ttcompile.planning.latency_loop``, keyed by the compressed layers' signatures). A file whose environment differs
from the current one is discarded
(re-measured), so any change of a key part re-measures and an unchanged one never does. A table
answers at most ``max_candidates`` distinct candidates per layer group (the layer's signature without
ranks and realization: its op, shapes and attributes, and the format), cached or measured, so one solve
times at most that many pairs per layer and format and gives the
same plan again from the cache; a request beyond that is refused (``None``: the planner keeps the layer
dense there).
"""

from __future__ import annotations

import hashlib
import json
import platform
import statistics
import tempfile
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import onnx
from tqdm import tqdm

from ttcompile import modelfile
from ttcompile.atomic import write_bytes_atomic
from ttcompile.layers import Layer
from ttcompile.planning.plan import LayerPlan
from ttcompile.runtime import provider_name, require_onnxruntime

SCHEMA = "ttcompile.planning.latency/1"
ROUNDS, MIN_TIME_S, MIN_RUNS = 5, 0.04, 10  # per timer call: interleaved rounds, seconds and runs per round
REFERENCE_MIN_TIME_S = 0.25  # seconds per round for the reference run (once per model), as ``ttcompile bench``
MIN_GAIN = 0.05  # a chain is faster than dense only when at least this fraction faster (pair noise margin)
GUARD_REASONS = ("measured:", "latency not measured")  # how the reasons of the measured guard start
MAX_CANDIDATES = 16  # distinct candidates a table answers per layer group and format


@dataclass(frozen=True)
class Env:
    """Where latencies were measured; every field is part of the cache key."""

    onnxruntime: str
    cpu: str
    provider: str
    batch: int
    threads: int


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo``), else what ``platform`` knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def current_env(provider: str, batch: int, threads: int) -> Env:
    """This machine's environment; a provider this onnxruntime lacks is a one-line UserError."""
    provider_name(provider)
    return Env(require_onnxruntime().__version__, cpu_model(), provider.lower(), int(batch), int(threads))


def cache_path(env: Env) -> Path:
    from ttcompile.models.mnist import cache_dir

    return cache_dir() / "latency" / f"{env.provider}-b{env.batch}-t{env.threads}.json"


def layer_key(layer: Layer) -> dict:
    """What a layer's timing depends on (its name and weights do not enter)."""
    return {"op": layer.op_type, "kind": layer.kind, "weight_shape": list(layer.weight_shape),
            "in": layer.in_features, "out": layer.out_features, "kernel": list(layer.kernel), "rows": layer.rows,
            "in_spatial": layer.in_spatial and list(layer.in_spatial), "has_bias": layer.has_bias,
            "attrs": layer.attrs}


def layer_group(layer: Layer) -> str:
    """Cache key of a layer's dense form."""
    return json.dumps(layer_key(layer), sort_keys=True, separators=(",", ":"))


def signature(lp: LayerPlan) -> str:
    """Cache key of a compressed layer: the layer's key plus format, modes, ranks and realization."""
    return json.dumps({**layer_key(lp.layer), "format": lp.format, "modes": lp.modes, "ranks": lp.ranks,
                       "options": lp.options}, sort_keys=True, separators=(",", ":"))


def plan_key(plans: list[LayerPlan]) -> str:
    """Cache key of a whole plan: SHA-256 of its compressed layers' sorted signatures."""
    return hashlib.sha256("\n".join(sorted(signature(lp) for lp in plans if lp.action == "compress"))
                          .encode()).hexdigest()


Timer = Callable[[list[Path], Env, float], list[float]]


def bench_timer(paths: list[Path], env: Env, min_time: float = MIN_TIME_S) -> list[float]:
    """Latency (ms per run) of each model at ``env``, interleaved (``ttcompile.benchmark.bench.benchmark``), timed for
    ``min_time`` seconds per round."""
    from ttcompile.benchmark.bench import benchmark

    report = benchmark(paths, None, provider=env.provider, batches=[env.batch], threads=env.threads,
                       rounds=ROUNDS, min_time=min_time, min_runs=MIN_RUNS, progress=False)
    return [report.timing(i, env.batch).latency_ms for i in range(len(paths))]


class LatencyTable:
    """Measured (dense, chain) pairs and model latencies at one ``Env``, cached in ``path`` (JSON)."""

    def __init__(self, env: Env, path: Path | None = None, timer: Timer = bench_timer,
                 max_candidates: int = MAX_CANDIDATES, progress: bool = False):
        self.env, self.path, self.timer, self.max_candidates = env, path, timer, max_candidates
        self.entries: dict[str, list[float]] = {}
        self.models: dict[str, dict] = {}  # model SHA-256 -> {"model_ms": T, "dense_ms": {layer_group: D}}
        self.invalidated = False  # a cache file from another environment was discarded
        self.measured = 0  # timer calls in this run
        self.refused = 0  # requests beyond max_candidates
        self._seen: dict[tuple[str, str | None], set[str]] = {}  # (layer group, format) -> signatures answered
        self._progress, self._bar = progress, None
        if path is not None and path.exists():
            self._load(path)

    def _load(self, path: Path) -> None:
        try:
            data = json.loads(path.read_text())
            same = data.get("schema") == SCHEMA and data.get("env") == asdict(self.env)
        except (OSError, ValueError, AttributeError):
            same = False  # unreadable: measured again and rewritten
        if not same:
            self.invalidated = True
            return
        self.entries = {k: list(v) for k, v in data.get("entries", {}).items()}
        self.models = dict(data.get("models", {}))

    def save(self) -> None:
        if self.path is None:
            return
        doc = {"schema": SCHEMA, "env": asdict(self.env), "entries": self.entries, "models": self.models}
        self.path.parent.mkdir(parents=True, exist_ok=True)
        write_bytes_atomic(self.path, (json.dumps(doc, indent=0) + "\n").encode())

    def _time(self, protos: list[onnx.ModelProto], min_time: float = MIN_TIME_S) -> list[float]:
        if self._bar is None:
            self._bar = tqdm(desc=f"latency ({self.env.provider}, batch {self.env.batch})", unit="pair",
                             disable=not self._progress)
        with tempfile.TemporaryDirectory() as tmp:
            paths = [Path(tmp) / f"m{i}.onnx" for i in range(len(protos))]
            for p, proto in zip(paths, protos):
                modelfile.write(proto, p)
            out = self.timer(paths, self.env, min_time)
        self.measured += 1
        self._bar.update()
        return out

    def pair(self, lp: LayerPlan) -> tuple[float, float] | None:
        """``(dense_ms, chain_ms)`` of ``lp``'s layer, measured interleaved (cached); None beyond the cap."""
        key, seen = signature(lp), self._seen.setdefault((layer_group(lp.layer), lp.format), set())
        if key not in seen and len(seen) >= self.max_candidates:
            self.refused += 1
            return None
        seen.add(key)
        if key not in self.entries:
            from ttcompile.rewrite.layer_model import chain_model, dense_model

            self.entries[key] = self._time([dense_model(lp.layer, self.env.batch), chain_model(lp, self.env.batch)])
            self.save()
        dense, chain = self.entries[key]
        return dense, chain

    def reference(self, model: onnx.ModelProto, key: str, layers: list[Layer]) -> tuple[float, dict[str, float]]:
        """``(T_model, {layer_group: D_l})``: the whole ``model`` and each of ``layers`` alone in dense form,
        timed in one interleaved run (cached by ``key``, the model's SHA-256)."""
        from ttcompile.rewrite.layer_model import dense_model

        groups = {layer_group(lay): lay for lay in layers}
        ref = self.models.get(key)
        if ref is None or not set(groups) <= set(ref.get("dense_ms", ())):
            times = self._time([model, *(dense_model(lay, self.env.batch) for lay in groups.values())],
                               REFERENCE_MIN_TIME_S)
            ref = self.models[key] = {**(ref or {}), "model_ms": times[0], "dense_ms": dict(zip(groups, times[1:]))}
            self.save()
        return ref["model_ms"], ref["dense_ms"]

    def ratio(self, model_sha256: str, plans: list[LayerPlan],
              build: Callable[[], tuple[onnx.ModelProto, onnx.ModelProto]], samples: int = 1) -> float:
        """Whole compressed model over the original (``build() -> (original, compressed)``), timed interleaved
        until ``samples`` timings of this plan exist; their median. Cached under the original's SHA-256 and
        ``plan_key(plans)``."""
        whole = self.models.setdefault(model_sha256, {}).setdefault("whole", {})
        times = whole.setdefault(plan_key(plans), [])
        if len(times) < samples:
            protos = list(build())
            while len(times) < samples:
                orig_ms, comp_ms = self._time(protos, REFERENCE_MIN_TIME_S)
                times.append(comp_ms / orig_ms)
            self.save()
        return statistics.median(times)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None


@dataclass
class LatencyBudget:
    """What the planner needs for a latency budget: the table, the reference (``T_model``, ``D_l`` by layer
    group) and whether slower chains may stay (``--force``: the measured guard off)."""

    table: LatencyTable
    model_ms: float
    dense_ms: dict[str, float]
    allow_slower: bool = False

    def guard(self, lp: LayerPlan) -> LayerPlan:
        """The measured never-slower rule (unless ``allow_slower``): a chain not faster than its dense form by
        ``MIN_GAIN``, or not measured (candidate cap reached), stays dense."""
        if self.allow_slower or lp.action != "compress":
            return lp
        pair, env = self.table.pair(lp), self.table.env
        if pair is None:
            return replace(lp, action="dense", reason=f"{GUARD_REASONS[1]} (the cap of {self.table.max_candidates} "
                           "candidates per layer is reached)")
        if pair[1] > (1 - MIN_GAIN) * pair[0]:
            return replace(lp, action="dense", reason=f"{GUARD_REASONS[0]} {lp.format} chain {pair[1]:.4g} ms, dense "
                           f"{pair[0]:.4g} ms: not faster ({env.provider}, batch {env.batch}, {env.threads} thread(s))")
        return lp

    def chain_ms(self, lp: LayerPlan) -> float:
        """Predicted time of ``lp``'s chain in the model: ``D_l c_l / d_l``."""
        dense, chain = self.table.pair(lp) or (1.0, 1.0)
        return self.dense_ms[layer_group(lp.layer)] * chain / dense

    def predict(self, plans: list[LayerPlan]) -> float:
        """``T_model - sum over compressed plans of D_l (1 - c_l / d_l)`` (ms per run at the table's batch)."""
        return self.model_ms - sum(self.dense_ms[layer_group(lp.layer)] - self.chain_ms(lp)
                                   for lp in plans if lp.action == "compress")

    def report(self, plans: list[LayerPlan], target_ms: float | None) -> dict:
        """Settings record: environment, the model, the prediction and each compressed layer's pair."""
        pairs = {lp.name: self.table.pair(lp) for lp in plans if lp.action == "compress"}
        dense = {lp.name: self.dense_ms[layer_group(lp.layer)] for lp in plans if lp.action != "skip"}
        return {**asdict(self.table.env), "model_ms": self.model_ms, "target_ms": target_ms,
                "predicted_ms": self.predict(plans), "formula": "T_model - sum_l D_l (1 - c_l / d_l)",
                "remainder_ms": self.model_ms - sum(dense.values()), "dense_ms": dense,
                "pairs": {n: {"dense_ms": p[0], "chain_ms": p[1]} for n, p in pairs.items() if p},
                "measured_pairs": self.table.measured, "refused": self.table.refused,
                "cache": str(self.table.path) if self.table.path else None,
                "cache_invalidated": self.table.invalidated, "allow_slower": self.allow_slower}


def budget_checks(bench_report, plans: dict[int, dict]) -> list[str]:
    """For each benchmarked model ``i`` whose plan (``plans[i]``: its settings) has a latency budget measured at
    a batch, thread count and provider this report has: predicted vs measured, and whether the target holds."""
    lines = []
    for i, settings in plans.items():
        lat = (settings.get("budget") or {}).get("latency")
        if not lat or lat["batch"] not in bench_report.batches or lat["threads"] != bench_report.threads \
                or lat["provider"] != bench_report.provider.lower():
            continue
        b = lat["batch"]
        orig, comp = bench_report.timing(0, b).latency_ms, bench_report.timing(i, b).latency_ms
        goal = lat["target_ms"] / lat["model_ms"]
        met = comp <= goal * orig
        name = bench_report.models[i].name
        lines.append(f"{name}: latency budget at batch {b}: predicted {lat['predicted_ms']:.4g} ms "
                     f"({lat['predicted_ms'] / lat['model_ms']:.3f} of the original's {lat['model_ms']:.4g} ms at "
                     f"compress time), measured {comp:.4g} ms ({comp / orig:.3f} of the original's {orig:.4g} ms "
                     f"here; predicted/measured fraction {lat['predicted_ms'] / lat['model_ms'] / (comp / orig):.3f}"
                     f"): target {goal:.3f} of the original {'met' if met else 'NOT met'}")
    return lines
