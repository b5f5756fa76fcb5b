"""The subgraphs a layer's rank candidates run on (``ttcompile.analysis.sensitivity``).

* ``layer_spans``: from the layer to its read-out probe (its own, or the next layer's), and from the layer
  to its output probe (the last probe that depends on it).
* ``Capture``: the held-out values every span reads from outside, captured once into memory-mapped files.
* ``subgraph`` cuts a span out as a model on those values; ``embedded`` appends the read-out's pooling
  (``features.embed``) so a candidate hands back ``(N, D)``; ``run_span`` runs it batch by batch.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import onnx_ir as ir

from ttcompile.analysis.features import Probe, pool_cells, pool_matrix
from ttcompile.analysis.targets import Targets
from ttcompile.layers import find_node
from ttcompile.protos import run_batched
from ttcompile.runtime import make_session

EMBEDDING = "ttcompile_embedding"  # output of a span that embeds its read-out in the graph (``embedded``)
READOUTS = ("next", "own")


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


def layer_spans(model: ir.Model, probes: list[Probe], probe: Probe, readout: str = "next") -> tuple[Span, Span | None]:
    """The spans of ``probe``'s layer: to its read-out probe, its own (``own``) or the next one (``next``: the
    first probe whose previous probe is this one, e.g. the next layer after its BN/Relu; own for the last);
    and to its output probe, the last probe (graph order) that depends on the layer (for a chain or a residual
    network the model's last layer), None where that is the read-out."""
    if readout not in READOUTS:
        raise ValueError(f"unknown read-out {readout!r}")
    depends = _downstream(model, find_node(model, probe.layer))
    target = probe
    if readout == "next":
        target = next((q for q in probes if q.previous == probe.value and q.layer != probe.layer), probe)
    output = next((q for q in reversed(probes) if q.value in depends), probe)
    span = _span_to(model, probe, target, depends)
    return span, None if output.value == target.value else _span_to(model, probe, output, depends)


def _span_to(model: ir.Model, probe: Probe, target: Probe, depends: set[str]) -> Span:
    """The nodes from ``probe``'s layer to ``target``'s value (``depends``: the values downstream of the layer)."""
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


def run_span(sub: onnx.ModelProto, inputs: dict[str, np.ndarray], fixed: dict[str, np.ndarray], output: str,
             batch: int, threads: int | None = None) -> Iterator[np.ndarray]:
    """Outputs of ``sub`` on ``inputs`` (and the ``fixed`` values), batch by batch, in a session of ``threads``
    intra-op threads (None: onnxruntime's default). A static batch dim is fed exactly; with fixed values (which
    may encode the batch size) every run gets ``batch`` samples. The last batch is padded then."""
    sess = make_session(sub, threads=threads)
    dims = sess.get_inputs()[0].shape
    static = dims[0] if dims and isinstance(dims[0], int) and dims[0] > 0 else None
    yield from run_batched(lambda feeds: sess.run([output], {**feeds, **fixed})[0], inputs, static or batch,
                           pad=bool(static or fixed))


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
