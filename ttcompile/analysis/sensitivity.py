"""Proxy-measured rank sensitivity: what each candidate rank of a layer costs in proxy accuracy.

For a layer l with probe p (``ttcompile.analysis.features``) and prototypes imprinted on the ORIGINAL features at
every probe (``ttcompile.analysis.lwiq``):

1. Span ``S_l`` (``layer_spans``, cut out as a model by ``subgraph``): the nodes from the layer to its
   read-out probe q. ``readout="next"`` (the default): q is the next layer's probe (the first probe whose
   upstream probe is p: after the next conv/Gemm and its BN/Relu/residual Add), so a layer is judged by
   what its error does to the features the next layer makes; the last layer reads out at its own probe
   (the logits). ``readout="own"``: q = p. Inputs of ``S_l``: every data value its nodes read from outside
   (the layer's input, a shortcut), output: q's value.
2. Those inputs are captured once, on (the first ``CURVE_SAMPLES`` of) the held-out split, during the
   analysis' held-out pass, into memory-mapped files (``Capture``): memory stays one batch.
3. Candidates (``candidate_ranks``): two one-knob families of the layer, uniform rank ``r`` on every bond
   clipped to its cap (``Format.uniform_ranks``) and every bond at a fraction of its cap but at least 2
   (``proportional_ranks``); so a bond is cut to 1 only at uniform ``r = 1``. Kept where the rewrite keeps at
   most ``MAX_SHARE`` (2/3) of the layer's parameters (MACs are the budget solver's concern): the layer's
   dense form stays the next option above them.
4. Each candidate is the layer as ``compress`` would emit it (the cores ``Format.decompose`` gives at its
   ranks) inside ``S_l``: for a node reading a plain float32 weight, the node itself with the weight those
   cores compute with (``Format.reconstruct``: the same function without building a chain per candidate;
   ResNet-20 TR's 443 candidates gave the same accuracies and ``e_l`` within 2e-8); otherwise (a quantized
   weight, an integer op) the layer rewritten into its chain (``rewrite_layer``). It runs on the captured
   inputs, and q's output is embedded (inside the span where it is a float32 conv map: ``embedded``) and
   classified by q's prototypes:

       acc_l(r)   proxy accuracy on the captured items
       e_l(r)     mean_i ||phi_r(x_i) - phi(x_i)|| / ||phi(x_i)||   (phi: q's embedding with layer l dense)
       d_l(r)   = max(acc_l - acc_l(r), 0) + BETA * e_l(r)

   ``acc_l`` is measured on the unmodified ``S_l`` over the same items, so the dense layer sits at d = 0.
   ``e_l`` is the continuous companion that orders candidates where the accuracy is flat. Candidates run in
   increasing parameters and stop at the first with ``d_l <= STOP_DROP`` (the rest could gain less than
   that over it while costing more).
5. Transfer to the output (``layer_spans``, ``Curve.transfer``, ``TRANSFER_FORMULA``). A read-out probe sees
   what a layer's error does one layer later, which misprices layers against each other: the skip
   connection of a residual block hides most of a branch layer's damage there, and a probe whose proxy
   accuracy is saturated (the last stage of an MNIST ResNet) prices candidates by the ``BETA e_l``
   tie-breaker alone. So the reference candidates (the measured ones with params nearest
   ``TRANSFER_FRACTIONS`` of the layer's) also run from the layer to its output probe, the last probe that
   depends on it (the model's last layer for a chain or a ResNet), and get the same drop there,
   ``D_l(r)``, against that probe's prototypes. ``t_l = (sum D_l + STOP_DROP) / (sum d_l + STOP_DROP)``
   (the constant keeps layers whose drops are both about 0 near 1) is the default weight ``w_l`` of the
   allocator (``ttcompile.planning.allocators``, ``lwiq``). ResNet-20 TR: t_l from 0.30 (``conv2d_6``)
   to 6.9 (``conv2d_1``); the residual-branch ``conv2d_4`` that the curves alone crushed gets 3.8.
   ``D_l(r)`` is the drop of the whole model with only that layer at ``r``
   (``test_output_drop_is_the_drop_the_model_output_probe_sees``).

Cost: one capture pass plus, per layer, one run of its span per candidate (one or two layers, not the model)
and at most ``len(TRANSFER_FRACTIONS)`` runs from the layer to the output (the dense output is the model's
own, computed once per output probe). Layers are measured in parallel, one worker thread per core, each with
single-threaded sessions (``measure_curves``' ``workers``): on 2 cores that took ResNet-20's TR analysis from
14.1 to 9.8 s wall (CPU 24 to 19 s with the process' start, identical curves; ``ttcompile analyze``), as the
span runs are small (two 3x3 convs on 256 items) and split poorly over intra-op threads.
Two cuts that change no plan: candidate runs in batches of ``SPAN_BATCH = 64`` items, not the analysis'
256 (the maps of a 16-channel 28x28 span stay in cache: 21.3 against 24.5 ms per ResNet-20 span, one
thread; accuracies identical, errors equal to the last digit), and no candidate above 2/3 of its layer's
params (``MAX_SHARE``; 17 % of ResNet-20 TR's, 13 % of ResNet-56 TR's candidates). Solved offline from the
full curves, a cap of 2/3 leaves every plan of the allocator benchmark unchanged (LeNet-5, ResNet-20,
ResNet-56; TT, TR; params 1/5 to 1/50), a cap of 0.6 changes 4 and 18 of ResNet-56 TT's 56 layers at 1/5
and 1/10, a cap of 1/2 up to 21. A budget above 2/3 of a layer's params leaves it dense.
Running plain-weight candidates without building their chains and pooling the read-out in the graph took
ResNet-20's TR analysis (``analysis.lwiq.analyze``, 2 runs each) from 42 to 27 s of CPU time, same curves.
The candidate runs and their embeddings were 85 % of ResNet-20's TT analysis with 500 curve items (237 of
280 s); ``CURVE_SAMPLES = 256`` items halve that; ``analyze --curve-samples`` sets it.
Read-outs compared with the allocator's current mapping (``benchmarks/allocators.py``, ``lwiq`` against
``lwiq-own``, one epoch of distillation; README): the own-probe read-out averages 60.99 % after the epoch over
the 16 ResNet-20/56 rows (next: 64.53 %) and 96.93 % over LeNet-5's 8 (next: 97.67 %), better in 6 rows and
worse in 10 by more than 0.3 pp.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field

import numpy as np
import onnx
import onnx_ir as ir
from tqdm import tqdm

from ttcompile.analysis.features import Probe
from ttcompile.analysis.spans import (
    EMBEDDING,
    Capture,
    Span,
    embedded,
    run_span,
    subgraph,
)
from ttcompile.analysis.targets import Targets
from ttcompile.graph import to_proto
from ttcompile.layers import Layer, dense_weight, stored_weight
from ttcompile.passes.base import get_format
from ttcompile.planning.plan import LayerPlan
from ttcompile.planning.planner import Planner
from ttcompile.rewrite.compress import rewrite_layer

BETA = 0.1
PLAIN_OPS = ("Conv", "Gemm", "MatMul")  # nodes whose candidates may run with the weight they compute with
CURVE_SAMPLES = 256  # items a candidate runs on; see the module docstring, 'Cost'
SPAN_BATCH = 64  # items per candidate run, where no fixed value encodes the analysis' batch
MAX_SHARE = 2 / 3  # a candidate keeps at most this share of its layer's params; module docstring, 'Cost'
STOP_DROP = 0.005  # a layer's candidates stop at the first one this close to dense
TRANSFER_FRACTIONS = (0.05, 0.2)  # reference candidates' params / the layer's, for the transfer t_l
CANDIDATE_GRID = (1, 2, 3, 4, 5, 6, 8, 10, 12, 14, 16, 20, 24, 28, 32, 40, 48, 56, 64, 80, 96, 112, 128, 160, 192,
                  224, 256, 320, 384, 448, 512)
FRACTION_GRID = (0.05, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.65, 0.8)
DROP_FORMULA = (f"d_l(r) = max(acc_l - acc_l(r), 0) + {BETA} * e_l(r); acc_l(r): proxy accuracy of the layer "
                "rewritten at ranks r, classified by the prototypes imprinted on the original features; "
                "e_l(r): mean relative embedding error against the dense layer")
TRANSFER_FORMULA = (f"t_l = (sum_r D_l(r) + {STOP_DROP}) / (sum_r d_l(r) + {STOP_DROP}) over the reference candidates "
                    f"r (params nearest {', '.join(map(str, TRANSFER_FRACTIONS))} of the layer's); D_l(r): the same "
                    "drop read out at the output probe (the last probe that depends on the layer); 1 where that is "
                    "the read-out")


@dataclass
class Point:
    """One measured candidate: ``ranks``, proxy accuracy, embedding error and the drop ``d_l(r)``; for a
    reference candidate also ``output_drop``, the same drop read out at the output probe (``D_l(r)``)."""

    ranks: list[int]
    accuracy: float
    feature_error: float
    drop: float
    output_drop: float | None = None


@dataclass
class Curve:
    """A layer's sensitivity curve in one format (points in increasing rank; none if no rank saves params)."""

    layer: str
    format: str
    modes: dict | None
    accuracy: float  # acc_l of the dense layer on the curve items
    points: list[Point]
    readout: str = ""  # the layer whose probe classifies (itself, or the next layer)
    output: str = ""  # the layer whose probe the reference candidates were read out at ("": not measured)

    @property
    def transfer(self) -> float:
        """``t_l = (sum_r D_l(r) + STOP_DROP) / (sum_r d_l(r) + STOP_DROP)`` over the reference candidates (the
        ones with an ``output_drop``); 1 where none was measured (the read-out already is the output probe)."""
        refs = [p for p in self.points if p.output_drop is not None]
        return ((sum(p.output_drop for p in refs) + STOP_DROP) / (sum(p.drop for p in refs) + STOP_DROP)
                if refs else 1.0)

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, d: dict) -> Curve:
        return cls(**{**d, "points": [Point(**p) for p in d["points"]]})


def proportional_ranks(caps: list[int], x: float) -> list[int]:
    """Every bond at the fraction ``x`` of its cap, never below ``min(2, cap)``: ``clip(round(x R_k), 2, R_k)``."""
    return [cap if cap <= 2 else min(cap, max(2, round(x * cap))) for cap in caps]


def candidate_ranks(planner: Planner, layer: Layer) -> list[list[int]]:
    """The layer's candidates from two one-knob families, in increasing params, each keeping at most ``MAX_SHARE``
    of the layer's params:

    * uniform: rank ``r`` on every bond clipped to its cap (``Format.uniform_ranks``), r on ``CANDIDATE_GRID``
      up to the largest cap;
    * proportional: every bond at the fraction ``x`` of its cap, at least 2 (``proportional_ranks``), x on
      ``FRACTION_GRID`` (bonds of different caps keep their proportions, as energy-style allocations do).
    """
    modes, caps = planner.modes[layer.name], planner.caps[layer.name]
    top = max(caps)
    fmt = planner.fmt
    raw = [fmt.uniform_ranks(layer, modes, r) for r in sorted({g for g in CANDIDATE_GRID if g < top} | {top})]
    raw += [proportional_ranks(caps, x) for x in FRACTION_GRID]
    seen: dict[tuple[int, ...], int] = {}
    for ranks in raw:
        ranks = fmt.snap_ranks(layer, modes, ranks)
        params = planner.layer(layer, ranks).params
        if params <= MAX_SHARE * layer.params:
            seen.setdefault(tuple(ranks), params)
    return [list(k) for k, _ in sorted(seen.items(), key=lambda kv: (kv[1], kv[0]))]


def plain_weight(sub: onnx.ModelProto, layer: Layer) -> bool:
    """Whether ``layer``'s node in ``sub`` reads its weight straight from a float32 initializer (no
    quantization, no integer op; a Gemm with ``alpha != 0``), so a candidate can run as that node with the
    weight its chain computes with (``candidate_weight``)."""
    node = next((n for n in sub.graph.node if n.name == layer.name), None)
    if node is None or node.op_type not in PLAIN_OPS or (layer.kind == "gemm" and not layer.attrs["alpha"]):
        return False
    return any(t.name == layer.weight == node.input[1] and t.data_type == onnx.TensorProto.FLOAT
               for t in sub.graph.initializer)


def candidate_weight(lp: LayerPlan, canonical: np.ndarray) -> np.ndarray:
    """The float32 weight, in the layer's stored layout, that ``lp``'s chain computes with: the cores
    ``compress`` emits (``Format.decompose`` of the canonical weight at ``lp.ranks``), rebuilt by
    ``Format.reconstruct`` (the graph-equals-reconstruct tests of every pass hold the two equal)."""
    fmt = get_format(lp.format)
    cores = fmt.decompose(canonical, lp.layer, lp.modes, lp.ranks)
    return stored_weight(lp.layer, fmt.reconstruct(cores, lp.layer, lp.modes)).astype(np.float32)


def candidate_model(sub: onnx.ModelProto, lp: LayerPlan, canonical: np.ndarray | None) -> onnx.ModelProto:
    """``sub`` computing ``lp``'s candidate: with the ``canonical`` weight (a ``plain_weight`` layer) the
    layer's initializer replaced by ``candidate_weight``, else the layer rewritten into its chain
    (``rewrite_layer``)."""
    if canonical is None:
        m = ir.from_proto(sub)
        rewrite_layer(m, lp)
        return to_proto(m)
    out = onnx.ModelProto()
    out.CopyFrom(sub)
    init = next(t for t in out.graph.initializer if t.name == lp.layer.weight)
    init.CopyFrom(onnx.numpy_helper.from_array(candidate_weight(lp, canonical), init.name))
    return out


def _score(outputs: Iterator[np.ndarray], probe: Probe, targets: Targets, proxy, labels: np.ndarray,
           reference: np.ndarray | None) -> tuple[float, float, list[np.ndarray]]:
    """(proxy accuracy, mean relative embedding error vs ``reference``, the embeddings if no reference)."""
    hits, err, kept, at = 0, 0.0, [], 0
    for o in outputs:
        emb = targets.embed(o, probe.channels_first)
        hits += int((proxy.predict(emb) == labels[at:at + len(emb)]).sum())
        if reference is None:
            kept.append(emb)
        else:
            ref = reference[at:at + len(emb)]
            err += float((np.linalg.norm(emb - ref, axis=1) / np.maximum(np.linalg.norm(ref, axis=1), 1e-12)).sum())
        at += len(emb)
    return hits / at, err / at, kept


@dataclass
class _Bench:
    """A span cut out as a model on its captured inputs (read-out embedded where it can be), its proxy, and
    the dense span's proxy accuracy and embeddings."""

    sub: onnx.ModelProto
    output: str
    inputs: dict[str, np.ndarray]
    fixed: dict[str, np.ndarray]
    readout: Probe
    proxy: object
    accuracy: float
    reference: np.ndarray


@dataclass
class _Runner:
    """What every candidate run shares: the model, the captured inputs, the proxies and the items' labels,
    the batch, the sessions' intra-op ``threads``, and the dense read-outs by read-out value (each computed
    once, under its own lock in ``locks``: layers are measured in parallel, and the dense span computes the
    model's own value there, whichever layer it starts at; a worker waits only for the read-out it needs)."""

    proto: onnx.ModelProto
    capture: Capture
    targets: Targets
    proxies: dict
    labels: np.ndarray
    batch: int
    threads: int
    dense: dict[str, tuple[float, np.ndarray]] = field(default_factory=dict)
    locks: dict[str, threading.Lock] = field(default_factory=dict)
    guard: threading.Lock = field(default_factory=threading.Lock)  # over ``locks``

    def _scored(self, sub: onnx.ModelProto, inputs: dict, fixed: dict, output: str, readout: Probe, proxy,
                reference: np.ndarray | None) -> tuple[float, float, list[np.ndarray]]:
        batch = self.batch if fixed else min(self.batch, SPAN_BATCH)  # fixed values may encode the batch size
        return _score(run_span(sub, inputs, fixed, output, batch, self.threads), readout, self.targets, proxy,
                      self.labels, reference)

    def bench(self, span: Span) -> _Bench:
        """``span`` made runnable, with its dense read-out (computed once per read-out value)."""
        inputs, fixed = self.capture.inputs(span.inputs)
        sub = subgraph(self.proto, span, inputs, fixed)
        pooled = embedded(sub, span.readout, self.targets)
        sub, output = (sub, span.readout.value) if pooled is None else (pooled, EMBEDDING)
        proxy = self.proxies[span.readout.value]
        with self.guard:
            lock = self.locks.setdefault(span.readout.value, threading.Lock())
        with lock:
            if span.readout.value not in self.dense:
                acc, _, kept = self._scored(sub, inputs, fixed, output, span.readout, proxy, None)
                self.dense[span.readout.value] = acc, np.concatenate(kept)
        return _Bench(sub, output, inputs, fixed, span.readout, proxy, *self.dense[span.readout.value])

    def measure(self, bench: _Bench, lp: LayerPlan, canonical: np.ndarray | None) -> tuple[float, float, float]:
        """(proxy accuracy, embedding error, drop ``max(acc - acc(r), 0) + BETA e``) of candidate ``lp``."""
        acc, err, _ = self._scored(candidate_model(bench.sub, lp, canonical), bench.inputs, bench.fixed,
                                   bench.output, bench.readout, bench.proxy, bench.reference)
        return acc, err, max(bench.accuracy - acc, 0.0) + BETA * err


def reference_points(planner: Planner, layer: Layer, points: list[Point]) -> list[int]:
    """Indices of the measured candidates whose params are nearest ``TRANSFER_FRACTIONS`` of the layer's."""
    share = [planner.layer(layer, p.ranks).params / layer.params for p in points]
    return sorted({min(range(len(points)), key=lambda i: abs(share[i] - f)) for f in TRANSFER_FRACTIONS} if points
                  else [])


def measure_curves(model: ir.Model, layers: list[Layer], spans: dict[str, Span], capture: Capture,
                   planner: Planner, targets: Targets, proxies: dict, labels: np.ndarray, *,
                   tails: dict[str, Span] | None = None, batch: int = 256, workers: int | None = None,
                   progress: bool = False) -> dict[str, Curve]:
    """Sensitivity curve of every layer ``planner`` can rewrite (see the module docstring).

    ``spans`` (``layer_spans``' first) by layer name; ``tails`` (its second) by layer name where the output
    probe is not the span's read-out: the reference candidates also get their drop there
    (``Point.output_drop``); ``proxies`` maps probe values to imprinted ``ProxyClassifier``s; ``labels`` are the
    captured items' labels. Layers are measured by ``workers`` threads (None: one per CPU core the process may
    use), each running single-threaded sessions (the cores split between the workers): a layer's curve is
    the same whichever thread measures it.
    """
    tails = tails or {}
    active = [lay for lay in layers if lay.name in planner.caps]
    work = {lay.name: candidate_ranks(planner, lay) for lay in active}
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    workers = max(1, min(workers or cores, len(active)))
    runner = _Runner(to_proto(model), capture, targets, proxies, labels, batch, max(1, cores // workers))
    bar = tqdm(total=sum(len(c) + 1 + (len(TRANSFER_FRACTIONS) if lay.name in tails else 0) for lay, c in
                         zip(active, work.values())), unit="run", desc=f"lwiq curves ({planner.fmt.name})",
               disable=not progress)

    def curve(lay: Layer) -> Curve:
        bench = runner.bench(spans[lay.name])
        bar.update(1)
        points = []
        canonical = dense_weight(model, lay)[0] if plain_weight(bench.sub, lay) else None
        for i, ranks in enumerate(work[lay.name]):
            points.append(Point(list(ranks), *runner.measure(bench, planner.layer(lay, ranks), canonical)))
            bar.update(1)
            if points[-1].drop <= STOP_DROP:  # larger candidates can only gain < STOP_DROP and cost more
                bar.update(len(work[lay.name]) - i - 1)
                break
        output = ""
        if lay.name in tails:
            tail = runner.bench(tails[lay.name])
            for i in reference_points(planner, lay, points):
                points[i].output_drop = runner.measure(tail, planner.layer(lay, points[i].ranks), canonical)[2]
            bar.update(len(TRANSFER_FRACTIONS))
            output = tail.readout.layer
        return Curve(lay.name, planner.fmt.name, planner.modes[lay.name], bench.accuracy, points,
                     bench.readout.layer, output)

    with bar, ThreadPoolExecutor(workers) as pool:
        return {lay.name: c for lay, c in zip(active, pool.map(curve, active))}
