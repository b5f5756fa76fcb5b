"""LWIQ layer significance: an imprinted proxy classifier after every compressible layer.

Procedure (design notes, methods.md section 1):

1. Split the calibration set (seeded): a fraction ``holdout`` of the samples is held out, the rest
   imprints. With labels the split is stratified per class; without labels the model's own top-1
   predictions are the labels and the split is a random one. Every class must be present in both
   splits (else UserError).
2. One ORT pass over the imprint split, ``batch`` samples at a time: each probe's activation
   (``ttcompile.analysis.features``) is pooled to an embedding ``phi_l(x)`` of length ``D_l`` and added to
   per-class sums ``S_l[c] += phi_l(x)``. Memory: ``K x D_l`` per layer plus one batch, whatever N.
3. Imprinted weights ``w_{l,c} = mu_{l,c} / ||mu_{l,c}||`` with ``mu_{l,c} = S_l[c] / n_c`` (no
   per-sample normalisation). A second pass over the held-out split predicts
   ``argmax_c w_{l,c} . phi_l(x)`` (cosine classification; normalising phi does not change the argmax)
   and counts hits: the proxy accuracy ``acc_l``.
4. Score (``SCORE_FORMULA``)::

       gain_l = acc_l - acc_prev(l)
       s_l    = max(gain_l, eps)                     eps = 1e-3
       s^_l   = s_l / max_j s_j                       in (0, 1]

   ``acc_prev(l)`` is the proxy accuracy at the nearest probe upstream of layer l (the previous layer
   in a chain); for the first layers it is ``acc_0``, the proxy imprinted on the pooled model input
   itself, so a layer is credited only with the class separability it adds to what its input already
   had (acc_0 = chance or 0 would hand the first layer nearly all the credit).
5. Sensitivity curves (``ttcompile.analysis.sensitivity``), per requested format: during the held-out pass the
   inputs of every layer's probe subgraph are captured; each layer is then rewritten at every candidate
   of its one-knob rank family and classified by the prototypes of step 3, giving ``d_l(r)``; a few
   reference candidates are also read out at the output probe, giving the layer's transfer ``t_l``. The
   rank allocator (``ttcompile.planning.allocators``, ``lwiq``) spends a budget on the damages ``phi(t_l d_l(r))``
   with one multiplier.

Items and classes come from ``ttcompile.analysis.targets``: the data's labels, the model's top-1, per-position
classes of a sequence output, or k-means pseudo-classes of any other output.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from tqdm import tqdm

from ttcompile.analysis.features import (
    EMBEDDING_TARGET,
    BatchRunner,
    Probe,
    find_probes,
    load_calibration,
    model_input,
    probe_model,
)
from ttcompile.analysis.sensitivity import CURVE_SAMPLES, DROP_FORMULA, TRANSFER_FORMULA, Curve, measure_curves
from ttcompile.analysis.spans import Capture, layer_spans
from ttcompile.analysis.targets import Targets, make_targets
from ttcompile.atomic import write_bytes_atomic
from ttcompile.errors import OptionError, UserError, opt
from ttcompile.graph import to_proto
from ttcompile.jsonfile import load_json
from ttcompile.layers import Layer, find_layers
from ttcompile.passes.base import get_format
from ttcompile.planning.plan import check_types
from ttcompile.planning.planner import Planner
from ttcompile.sources import DataLike, ModelId, ModelLike, Source, data_spec, model_id, resolve_model

ANALYSIS_VERSION = 3
EPSILON = 1e-3
INPUT = "<model input>"
SCORE_FORMULA = ("gain_l = acc_l - acc_prev(l); s_l = max(gain_l, eps); score_l = s_l / max_j s_j; "
                 "acc_prev(l) = proxy accuracy at the nearest probe upstream of layer l, or at the pooled "
                 "model input (acc_0) when there is none")


@dataclass
class LayerScore:
    """One layer's probe, proxy accuracy and significance score."""

    layer: Layer
    probe: str  # tensor read
    through: list[str]  # ops followed after the layer
    previous: str  # probe tensor of acc_prev, or INPUT
    embedding: int  # D_l
    proxy_accuracy: float
    previous_accuracy: float
    gain: float
    score: float

    def to_json(self) -> dict:
        return {**asdict(self), "layer": self.layer.to_json()}

    @classmethod
    def from_json(cls, d: dict) -> LayerScore:
        num = (int, float)
        check_types(d, {"layer": (dict,), "embedding": (int,), "proxy_accuracy": num, "previous_accuracy": num,
                        "gain": num, "score": num}, "analysis layer")
        return cls(**{**d, "layer": Layer.from_json(d["layer"])})


@dataclass
class Analysis:
    """Scores and sensitivity curves of every compressible layer, with what produced them (analysis JSON).

    ``curves[format][layer]``: the layer's ``Curve`` in that format (``ttcompile.analysis.sensitivity``).
    """

    model: str
    model_sha256: str
    layers: list[LayerScore]
    input_accuracy: float
    calibration: dict
    time_s: float
    curves: dict[str, dict[str, Curve]] = field(default_factory=dict)
    targets: dict = field(default_factory=dict)
    epsilon: float = EPSILON
    formula: str = SCORE_FORMULA
    drop_formula: str = DROP_FORMULA
    transfer_formula: str = TRANSFER_FORMULA
    embedding_target: int = EMBEDDING_TARGET

    @property
    def scores(self) -> dict[str, float]:
        return {ls.layer.name: ls.score for ls in self.layers}

    def to_json(self) -> dict:
        d = asdict(self)
        d["layers"] = [ls.to_json() for ls in self.layers]
        d["curves"] = {f: {n: c.to_json() for n, c in cs.items()} for f, cs in self.curves.items()}
        return {"version": ANALYSIS_VERSION, "kind": "lwiq-analysis", **d}

    def save(self, path: str | Path) -> Path:
        return write_bytes_atomic(path, (json.dumps(self.to_json(), indent=1) + "\n").encode())

    @classmethod
    def load(cls, path: str | Path) -> Analysis:
        def parse(d) -> Analysis:
            check_types(d, {"model_sha256": (str,), "layers": (list,), "calibration": (dict,), "curves": (dict,)},
                        "analysis")
            if d.pop("kind", None) != "lwiq-analysis":
                raise ValueError("not an LWIQ analysis")
            version = d.pop("version", None)
            if version != ANALYSIS_VERSION:
                raise ValueError(f"analysis version {version!r}, this ttcompile reads version {ANALYSIS_VERSION} "
                                 "(re-run 'ttcompile analyze')")
            d["layers"] = [LayerScore.from_json(x) for x in d["layers"]]
            d["curves"] = {f: {n: Curve.from_json(c) for n, c in cs.items()} for f, cs in d["curves"].items()}
            return cls(**d)

        return load_json(path, "analysis", parse)

    def check_model(self, model: str | Path | ModelId) -> None:
        """UserError unless ``model`` (a file or the id of an in-memory model) is the model that was analysed
        (same SHA-256)."""
        mid = model_id(model)
        if mid.sha256 != self.model_sha256:
            raise UserError(f"the analysis was made for {self.model} (SHA-256 {self.model_sha256[:12]}...), "
                            f"not for {mid.name}; analyse this model")


# ---- imprinting ---------------------------------------------------------------------------------


class ProxyClassifier:
    """Imprinted class-mean classifier over embeddings of one probe; sums accumulate batch by batch."""

    def __init__(self, n_classes: int):
        self.n_classes = n_classes
        self.sums: np.ndarray | None = None  # (K, D) float64
        self.counts = np.zeros(n_classes, dtype=np.int64)
        self.weights: np.ndarray | None = None  # (K, D) unit rows, set by imprint()

    def add(self, emb: np.ndarray, labels: np.ndarray) -> None:
        """Accumulate ``emb`` (B, D) into the sums of ``labels`` (B,)."""
        if self.sums is None:
            self.sums = np.zeros((self.n_classes, emb.shape[1]))
        np.add.at(self.sums, labels, emb)
        self.counts += np.bincount(labels, minlength=self.n_classes)

    def imprint(self) -> None:
        """``w_c = mu_c / ||mu_c||`` (a zero mean stays zero)."""
        means = self.sums / np.maximum(self.counts, 1)[:, None]
        self.weights = means / np.maximum(np.linalg.norm(means, axis=1, keepdims=True), 1e-30)

    def predict(self, emb: np.ndarray) -> np.ndarray:
        """Top-1 class ``(B,)`` of ``emb`` (B, D) by cosine similarity, among the classes that were imprinted
        (only their rows are multiplied: a recogniser's 6,625 classes are mostly absent from calibration)."""
        seen = np.flatnonzero(self.counts)
        if not seen.size:
            return np.zeros(len(emb), dtype=np.int64)
        return seen[np.argmax(emb @ self.weights[seen].T, axis=1)]


def split_indices(n: int, labels: np.ndarray | None, holdout: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(imprint, held-out) sorted index arrays; stratified per class when ``labels`` are given."""
    if not 0 < holdout < 1:
        raise UserError(f"held-out fraction {holdout} must be in (0, 1)")
    rng = np.random.default_rng(seed)
    groups = [np.flatnonzero(labels == c) for c in np.unique(labels)] if labels is not None else [np.arange(n)]
    imprint, held = [], []
    for idx in groups:
        idx = rng.permutation(idx)
        k = min(max(round(len(idx) * holdout), 1), len(idx) - 1)
        held.append(idx[:k])
        imprint.append(idx[k:])
    return np.sort(np.concatenate(imprint)), np.sort(np.concatenate(held))


def _check_classes(targets: Targets, idx: np.ndarray, split: str, source: str) -> None:
    """Every class of a classifier (given labels or top-1) must be in both splits; pseudo/sequence may miss some."""
    if targets.kind not in ("labels", "top1"):
        return
    missing = np.flatnonzero(np.bincount(targets.labels[idx], minlength=targets.n_classes) == 0).tolist()
    if missing:
        how = "has no sample of" if targets.kind == "labels" else "has no sample the model predicts as"
        raise UserError(f"{source}: the {split} split {how} class {', '.join(map(str, missing))}; "
                        "every class must be in both splits (add samples or labels 'y')")


def scores_from_accuracies(accuracy: dict[str, float], probes: list[Probe], eps: float = EPSILON
                           ) -> list[tuple[float, float, float]]:
    """``(acc_prev, gain, score)`` per probe from ``accuracy`` (probe value or INPUT -> acc); see SCORE_FORMULA."""
    prev = [accuracy[p.previous or INPUT] for p in probes]
    gains = [accuracy[p.value] - a for p, a in zip(probes, prev)]
    s = [max(g, eps) for g in gains]
    top = max(s)
    return [(a, g, v / top) for a, g, v in zip(prev, gains, s)]


def analyze(
    model_path: ModelLike | Source,
    calib_spec: DataLike,
    *,
    formats: tuple[str, ...] | list[str] = ("tt",),
    modes: dict[str, dict] | None = None,
    batch: int = 256,
    holdout: float = 0.5,
    seed: int = 0,
    input_shapes: dict | None = None,
    pseudo_classes: int = 10,
    curve_samples: int = CURVE_SAMPLES,
    readout: str = "next",
    workers: int | None = None,
    progress: bool = False,
) -> Analysis:
    """Run the LWIQ analysis of ``model_path`` on calibration data ``calib_spec`` (see the module docstring).

    ``formats``: the formats to measure sensitivity curves in (none: scores only); ``modes`` overrides
    factorisations per layer as ``compress --modes`` does; ``readout``: where a layer's candidates are
    classified, ``next`` (the next layer's probe) or ``own`` (``ttcompile.analysis.spans.layer_spans``);
    ``workers``: threads measuring the curves (``sensitivity.measure_curves``; None: one per CPU core).
    """
    start = time.perf_counter()
    source = model_path if isinstance(model_path, Source) else resolve_model(model_path)
    model = source.model
    layers = [layer for layer in find_layers(model, input_shapes) if layer.compressible]
    if not layers:
        raise UserError(f"{source.id.name}: no compressible Gemm, MatMul or Conv layer to analyse")
    planners = {}
    for name in formats:
        try:
            planners[name] = Planner(layers, get_format(name), modes, allow_more_macs=True)
        except KeyError:
            raise OptionError(f"unknown {opt('formats')} {name!r}") from None
    proto = to_proto(model)
    calib = load_calibration(data_spec(calib_spec, "calibration data"), proto)
    probes = find_probes(model, layers)
    targets = make_targets(calib, proto, batch=batch, pseudo_classes=pseudo_classes, seed=seed)
    imprint_idx, held_idx = split_indices(len(calib.x), targets.sample_labels(), holdout, seed)
    for split, idx in (("imprint", imprint_idx), ("held-out", held_idx)):
        _check_classes(targets, idx, split, calib.source)
    logits = proto.graph.output[0].name
    values = list(dict.fromkeys(p.value for p in probes))
    x_name = model_input(proto).name
    both = {p.layer: layer_spans(model, probes, p, readout) for p in probes
            if any(p.layer in pl.caps for pl in planners.values())}
    spans = {name: span for name, (span, _) in both.items()}
    tails = {name: tail for name, (_, tail) in both.items() if tail is not None}
    needed = sorted({n for span in [*spans.values(), *tails.values()] for n in span.inputs})
    channels_first = {p.value: p.channels_first for p in probes} | {INPUT: calib.x.ndim > 2}
    outputs = list(dict.fromkeys([logits, *values, *(n for n in needed if n != x_name)]))
    runner = BatchRunner(probe_model(model, outputs[1:]), model_input(proto), outputs, batch)
    proxies = {v: ProxyClassifier(targets.n_classes) for v in [INPUT, *values]}
    hits = dict.fromkeys(proxies, 0)
    model_hits, classifier = 0, targets.kind == "labels" and len(proto.graph.output[0].type.tensor_type.shape.dim) == 2
    capture = Capture(needed, min(curve_samples, len(held_idx)))
    bar = tqdm(total=runner.n_batches(len(imprint_idx)) + runner.n_batches(len(held_idx)), unit="batch",
               desc="lwiq", disable=not progress)
    try:
        with bar:
            for idx, out in runner.batches(calib.x, imprint_idx, bar):
                out[INPUT] = calib.x[idx]
                for v, proxy in proxies.items():
                    proxy.add(targets.embed(out[v], channels_first[v]), targets.items(idx))
            for proxy in proxies.values():
                proxy.imprint()
            for idx, out in runner.batches(calib.x, held_idx, bar):
                labels = targets.items(idx)
                if classifier:
                    model_hits += int((np.argmax(out[logits], axis=1) == labels).sum())
                out[INPUT] = out[x_name] = calib.x[idx]
                capture.add({n: out[n] for n in capture.names}, len(idx))
                for v, proxy in proxies.items():
                    hits[v] += int((proxy.predict(targets.embed(out[v], channels_first[v])) == labels).sum())
        items = len(held_idx) * targets.positions
        accuracy = {v: h / items for v, h in hits.items()}
        curve_labels = targets.items(held_idx[:capture.samples])
        curves = {name: measure_curves(model, layers, spans, capture, planner, targets, proxies, curve_labels,
                                       tails=tails, batch=runner.batch, workers=workers,
                                       progress=progress)
                  for name, planner in planners.items()}
    finally:
        capture.close()
    layer_scores = [
        LayerScore(layer, p.value, list(p.through), p.previous or INPUT, int(proxies[p.value].sums.shape[1]),
                   accuracy[p.value], a_prev, gain, score)
        for layer, p, (a_prev, gain, score) in zip(layers, probes, scores_from_accuracies(accuracy, probes))
    ]
    calibration = {
        "source": calib.source,
        "samples": int(len(calib.x)),
        "imprint": int(len(imprint_idx)),
        "held_out": int(len(held_idx)),
        "curve_samples": int(capture.samples),
        "readout": readout,
        "holdout_fraction": holdout,
        "seed": seed,
        "batch": runner.batch,
        "batches": runner.runs,
        "classes": targets.n_classes,
        "labels": targets.note,
        "model_accuracy_held_out": model_hits / len(held_idx) if classifier else None,
        "note": calib.note,
    }
    return Analysis(source.id.name, source.id.sha256, layer_scores, accuracy[INPUT], calibration,
                    round(time.perf_counter() - start, 3), curves, targets.to_json())
