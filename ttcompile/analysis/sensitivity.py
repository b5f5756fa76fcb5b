"""Proxy-measured rank sensitivity: what each candidate rank of a layer costs in proxy accuracy.

For a layer l with probe p (``ttcompile.analysis.features``) and prototypes imprinted on the ORIGINAL features at
every probe (``ttcompile.analysis.lwiq``):

1. Span ``S_l`` (``layer_span``, cut out as a model by ``subgraph``): the nodes from the layer to its
   read-out probe q. ``readout="next"`` (the default): q is the next layer's probe (the first probe whose
   upstream probe is p: after the next conv/Gemm and its BN/Relu/residual Add), so a layer is judged by
   what its error does to the features the next layer makes; the last layer reads out at its own probe
   (the logits). ``readout="own"``: q = p. Inputs of ``S_l``: every data value its nodes read from outside
   (the layer's input, a shortcut), output: q's value.
2. Those inputs are captured once, on (the first ``CURVE_SAMPLES`` of) the held-out split, during the
   analysis' held-out pass, into memory-mapped files (``Capture``): memory stays one batch.
3. Candidates (``candidate_ranks``): two one-knob families of the layer, uniform rank ``r`` on every bond
   clipped to its cap (``Format.uniform_ranks``) and every bond at a fraction of its cap but at least 2
   (``proportional_ranks``); so a bond is cut to 1 only at uniform ``r = 1``. Kept where the rewrite saves
   parameters (MACs are the budget solver's concern).
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

Cost: one capture pass plus, per layer, one run of its span per candidate (one or two layers, not the model).
Running plain-weight candidates without building their chains and pooling the read-out in the graph took
ResNet-20's TR analysis (``analysis.lwiq.analyze``, 2 runs each) from 42 to 27 s of CPU time, same curves.
The candidate runs and their embeddings were 85 % of ResNet-20's TT analysis with 500 curve items (237 of
280 s); ``CURVE_SAMPLES = 256`` items (one batch) halve that; ``analyze --curve-samples`` sets it.
On LeNet-5 (TR, 1,000 calibration images, before fine-tuning) the next-probe read-out gave 92.3 % at 1/20 of
the parameters where the own-probe one gave 82.8 % (``ttcompile analyze --readout``, then compress and bench).
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import onnx
import onnx_ir as ir
from tqdm import tqdm

from ttcompile.analysis.features import Probe, pool_cells, pool_matrix
from ttcompile.analysis.targets import Targets
from ttcompile.graph import to_proto
from ttcompile.layers import Layer, dense_weight, find_node, stored_weight
from ttcompile.passes.base import get_format
from ttcompile.planning.plan import LayerPlan
from ttcompile.planning.planner import Planner
from ttcompile.protos import run_batched
from ttcompile.rewrite.compress import rewrite_layer
from ttcompile.runtime import make_session

BETA = 0.1
EMBEDDING = "ttcompile_embedding"  # output of a span that embeds its read-out in the graph (``embedded``)
PLAIN_OPS = ("Conv", "Gemm", "MatMul")  # nodes whose candidates may run with the weight they compute with
CURVE_SAMPLES = 256  # one ORT batch per candidate; see the module docstring, 'Cost'
READOUTS = ("next", "own")
STOP_DROP = 0.005  # a layer's candidates stop at the first one this close to dense
CANDIDATE_GRID = (1, 2, 3, 4, 5, 6, 8, 10, 12, 14, 16, 20, 24, 28, 32, 40, 48, 56, 64, 80, 96, 112, 128, 160, 192,
                  224, 256, 320, 384, 448, 512)
FRACTION_GRID = (0.05, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.65, 0.8)
DROP_FORMULA = (f"d_l(r) = max(acc_l - acc_l(r), 0) + {BETA} * e_l(r); acc_l(r): proxy accuracy of the layer "
                "rewritten at ranks r, classified by the prototypes imprinted on the original features; "
                "e_l(r): mean relative embedding error against the dense layer")


@dataclass
class Point:
    """One measured candidate: ``ranks``, proxy accuracy, embedding error and the drop ``d_l(r)``."""

    ranks: list[int]
    accuracy: float
    feature_error: float
    drop: float


@dataclass
class Curve:
    """A layer's sensitivity curve in one format (points in increasing rank; none if no rank saves params)."""

    layer: str
    format: str
    modes: dict | None
    accuracy: float  # acc_l of the dense layer on the curve items
    points: list[Point]
    readout: str = ""  # the layer whose probe classifies (itself, or the next layer)

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, d: dict) -> Curve:
        return cls(**{**d, "points": [Point(**p) for p in d["points"]]})


def proportional_ranks(caps: list[int], x: float) -> list[int]:
    """Every bond at the fraction ``x`` of its cap, never below ``min(2, cap)``: ``clip(round(x R_k), 2, R_k)``."""
    return [cap if cap <= 2 else min(cap, max(2, round(x * cap))) for cap in caps]


def candidate_ranks(planner: Planner, layer: Layer) -> list[list[int]]:
    """The layer's candidates from two one-knob families, in increasing params, each saving params:

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
        if params < layer.params:
            seen.setdefault(tuple(ranks), params)
    return [list(k) for k, _ in sorted(seen.items(), key=lambda kv: (kv[1], kv[0]))]


@dataclass(frozen=True)
class Span:
    """What one layer's candidates run: ``nodes`` (graph order) from the layer to the read-out probe's value,
    the data ``inputs`` they read from outside, and the ``readout`` probe whose prototypes classify."""

    nodes: tuple[str, ...]
    inputs: tuple[str, ...]
    readout: Probe


def _downstream(model: ir.Model, start: ir.Node) -> set[str]:
    """Names of the values that depend on ``start``'s outputs."""
    seen: set[str] = set()
    todo = list(start.outputs)
    while todo:
        v = todo.pop()
        if v.name in seen:
            continue
        seen.add(v.name)
        todo.extend(out for use in v.uses() for out in use.node.outputs)
    return seen


def layer_span(model: ir.Model, probes: list[Probe], probe: Probe, readout: str = "next") -> Span:
    """The span of ``probe``'s layer read out at its own probe (``own``) or at the next one (``next``: the
    first probe whose previous probe is this one, e.g. the next layer after its BN/Relu; own for the last)."""
    if readout not in READOUTS:
        raise ValueError(f"unknown read-out {readout!r}")
    target = probe
    if readout == "next":
        target = next((q for q in probes if q.previous == probe.value and q.layer != probe.layer), probe)
    layer_node = find_node(model, probe.layer)
    depends = _downstream(model, layer_node)
    chosen: dict[str, ir.Node] = {n: find_node(model, n) for n in probe.nodes}
    producer = {o.name: n for n in model.graph for o in n.outputs}
    todo = [target.value]
    while todo:  # backwards from the read-out value through values that depend on the layer
        v = todo.pop()
        node = producer.get(v)
        if node is None or node.name in chosen or v not in depends:
            continue
        chosen[node.name] = node
        todo.extend(i.name for i in node.inputs if i is not None and i.const_value is None)
    order = [n for n in model.graph if n.name in chosen]
    inside = {o.name for n in order for o in n.outputs}
    inputs = [i.name for n in order for i in n.inputs
              if i is not None and i.const_value is None and not i.is_initializer() and i.name not in inside]
    return Span(tuple(n.name for n in order), tuple(dict.fromkeys(inputs)), target)


class Capture:
    """Held-out values of every span input, written batch by batch into memory-mapped ``.npy`` files.

    A value whose leading axis is not the batch (a shape computed by Shape/Concat, a constant subgraph) is
    kept once, as the first batch gave it, in ``fixed``.
    """

    def __init__(self, names: list[str], samples: int):
        self.names, self.samples = list(dict.fromkeys(names)), samples
        self._dir = tempfile.TemporaryDirectory(prefix="ttcompile-capture-")
        self.arrays: dict[str, np.ndarray] = {}
        self.fixed: dict[str, np.ndarray] = {}
        self.filled = 0

    def add(self, batch: dict[str, np.ndarray], n: int) -> None:
        """Append the next ``n`` samples (``batch[name]`` is ``(n, ...)``) until ``samples`` are held."""
        take = min(self.samples - self.filled, n)
        if take <= 0:
            return
        for name in self.names:
            a = batch[name]
            if name in self.fixed or (name not in self.arrays and (a.ndim == 0 or a.shape[0] != n)):
                self.fixed.setdefault(name, np.array(a))
                continue
            if name not in self.arrays:
                path = Path(self._dir.name) / f"{len(self.arrays)}.npy"
                self.arrays[name] = np.lib.format.open_memmap(path, mode="w+", dtype=a.dtype,
                                                              shape=(self.samples, *a.shape[1:]))
            self.arrays[name][self.filled:self.filled + take] = a[:take]
        self.filled += take

    def inputs(self, names: tuple[str, ...]) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
        """(batch-major arrays, fixed values) of ``names``."""
        return ({n: self.arrays[n] for n in names if n in self.arrays},
                {n: self.fixed[n] for n in names if n in self.fixed})

    def close(self) -> None:
        self.arrays.clear()
        self._dir.cleanup()


def subgraph(proto: onnx.ModelProto, span: Span, inputs: dict[str, np.ndarray],
             fixed: dict[str, np.ndarray]) -> onnx.ModelProto:
    """The span's nodes as a model: ``inputs`` (name -> captured ``(N, ...)`` array) and ``fixed`` values in,
    the read-out value out.

    Nodes and initializers are copied from ``proto``; inputs get a dynamic batch and the captured sample
    shape, fixed values their own shape; the output is declared with the inputs' element type, no shape.
    """
    by_name = {n.name: n for n in proto.graph.node}
    nodes = [by_name[name] for name in span.nodes]
    used = {i for n in nodes for i in n.input}
    inits = [t for t in proto.graph.initializer if t.name in used]

    def info(name: str, a: np.ndarray, dims: list) -> onnx.ValueInfoProto:
        return onnx.helper.make_tensor_value_info(name, onnx.helper.np_dtype_to_tensor_dtype(a.dtype), dims)

    vi = [info(name, a, ["N", *a.shape[1:]]) for name, a in inputs.items()]
    vi += [info(name, a, list(a.shape)) for name, a in fixed.items()]
    out = onnx.helper.make_tensor_value_info(span.readout.value, vi[0].type.tensor_type.elem_type, None)
    graph = onnx.helper.make_graph(nodes, f"span_{span.readout.layer}", vi, [out], inits)
    return onnx.helper.make_model(graph, opset_imports=proto.opset_import, ir_version=proto.ir_version)


def _run(sub: onnx.ModelProto, inputs: dict[str, np.ndarray], fixed: dict[str, np.ndarray], output: str,
         batch: int) -> Iterator[np.ndarray]:
    """Outputs of ``sub`` on ``inputs`` (and the ``fixed`` values), batch by batch. A static batch dim is fed
    exactly; with fixed values (which may encode the batch size) every run gets ``batch`` samples. The last
    batch is padded then."""
    sess = make_session(sub)
    dims = sess.get_inputs()[0].shape
    static = dims[0] if dims and isinstance(dims[0], int) and dims[0] > 0 else None
    yield from run_batched(lambda feeds: sess.run([output], {**feeds, **fixed})[0], inputs, static or batch,
                           pad=bool(static or fixed))


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


def embedded(sub: onnx.ModelProto, probe: Probe, targets: Targets) -> onnx.ModelProto | None:
    """``sub`` ending in the read-out's embedding ``(N, D)`` made by ONNX ops (``features.embed``'s pooling:
    MatMul by each spatial axis' pooling matrix, then Flatten), so a candidate hands back D numbers per item,
    not its map; None where numpy embeds instead (sequence targets, a map that is not a float32
    channels-first ``(N, C, L)`` / ``(N, C, H, W)`` of known dims)."""
    if targets.kind == "sequence" or not probe.channels_first:
        return None
    try:
        out = onnx.shape_inference.infer_shapes(sub).graph.output[0].type.tensor_type
    except (onnx.shape_inference.InferenceError, ValueError):
        return None
    dims = [d.dim_value if d.HasField("dim_value") else None for d in out.shape.dim]
    if out.elem_type != onnx.TensorProto.FLOAT or len(dims) not in (3, 4) or None in dims[1:]:
        return None
    spatial = dims[2:]
    cells = pool_cells(dims[1], tuple(spatial))
    last = onnx.numpy_helper.from_array(pool_matrix(spatial[-1], cells[-1]).T.astype(np.float32), f"{EMBEDDING}_w")
    inits, nodes = [last], [onnx.helper.make_node("MatMul", [probe.value, last.name], [f"{EMBEDDING}_a"])]
    pooled = f"{EMBEDDING}_a"
    if len(spatial) == 2:  # (s_h, H) @ (N, C, H, s_w) broadcasts to (N, C, s_h, s_w)
        first = onnx.numpy_helper.from_array(pool_matrix(spatial[0], cells[0]).astype(np.float32), f"{EMBEDDING}_h")
        inits.append(first)
        nodes.append(onnx.helper.make_node("MatMul", [first.name, pooled], [f"{EMBEDDING}_b"]))
        pooled = f"{EMBEDDING}_b"
    nodes.append(onnx.helper.make_node("Flatten", [pooled], [EMBEDDING], axis=1))
    model = onnx.ModelProto()
    model.CopyFrom(sub)
    model.graph.node.extend(nodes)
    model.graph.initializer.extend(inits)
    del model.graph.output[:]
    model.graph.output.append(onnx.helper.make_tensor_value_info(EMBEDDING, onnx.TensorProto.FLOAT, None))
    return model


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


def measure_curves(model: ir.Model, layers: list[Layer], spans: dict[str, Span], capture: Capture,
                   planner: Planner, targets: Targets, proxies: dict, labels: np.ndarray, *, batch: int = 256,
                   progress: bool = False) -> dict[str, Curve]:
    """Sensitivity curve of every layer ``planner`` can rewrite (see the module docstring).

    ``spans`` (``layer_span``) by layer name; ``proxies`` maps probe values to imprinted ``ProxyClassifier``s;
    ``labels`` are the captured items' labels.
    """
    proto = to_proto(model)
    active = [lay for lay in layers if lay.name in planner.caps]
    work = {lay.name: candidate_ranks(planner, lay) for lay in active}
    bar = tqdm(total=sum(len(c) + 1 for c in work.values()), unit="run", desc=f"lwiq curves ({planner.fmt.name})",
               disable=not progress)
    curves: dict[str, Curve] = {}
    with bar:
        for lay in active:
            span = spans[lay.name]
            readout, value = span.readout, span.readout.value
            inputs, fixed = capture.inputs(span.inputs)
            sub = subgraph(proto, span, inputs, fixed)
            pooled = embedded(sub, readout, targets)
            sub, output = (sub, value) if pooled is None else (pooled, EMBEDDING)
            proxy = proxies[value]
            acc0, _, kept = _score(_run(sub, inputs, fixed, output, batch), readout, targets, proxy, labels, None)
            reference = np.concatenate(kept)
            bar.update(1)
            points = []
            canonical = dense_weight(model, lay)[0] if plain_weight(sub, lay) else None
            for i, ranks in enumerate(work[lay.name]):
                cand = candidate_model(sub, planner.layer(lay, ranks), canonical)
                acc, err, _ = _score(_run(cand, inputs, fixed, output, batch), readout, targets, proxy, labels,
                                     reference)
                points.append(Point(list(ranks), acc, err, max(acc0 - acc, 0.0) + BETA * err))
                bar.update(1)
                if points[-1].drop <= STOP_DROP:  # larger candidates can only gain < STOP_DROP and cost more
                    bar.update(len(work[lay.name]) - i - 1)
                    break
            curves[lay.name] = Curve(lay.name, planner.fmt.name, planner.modes[lay.name], acc0, points,
                                     readout.layer)
    return curves
