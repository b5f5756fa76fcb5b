"""CompressPass: swap every ``compress`` entry of a Plan for its decomposed chain."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx_ir as ir
from onnx_ir.passes.common import RemoveUnusedNodesPass
from tqdm import tqdm

from ttcompile.errors import UserError, opt
from ttcompile.graph import const_array
from ttcompile.layers import Layer, dense_weight, find_node, layer_io
from ttcompile.passes.base import ChainBuilder, fc_input, fc_output, get_format
from ttcompile.planning.plan import LayerPlan, Plan
from ttcompile.rewrite.quant import chain_dtype, chain_input, constant_shape


@dataclass
class RewriteResult:
    name: str
    rewritten: bool
    error: float | None = None  # relative reconstruction error ||W - W_hat|| / ||W||
    reason: str | None = None  # why it was not rewritten


def _add_bias(b: ChainBuilder, y: ir.Value, node: ir.Node, layer: Layer, bias: np.ndarray | None) -> ir.Value:
    """Bias on the last node: a vector (Gemm C/beta folded), Gemm's general C re-added as is, or a Conv
    bias that is not a constant (a graph input, a computed value) reshaped to ``(O, 1, ..)`` and added."""
    c = node.inputs[2] if node.op_type in ("Gemm", "Conv") and len(node.inputs) > 2 else None  # not a zero point
    conv_shape = (layer.out_features,) + (1,) * len(layer.kernel)
    if bias is not None:
        shape = conv_shape if layer.kind == "conv" else (layer.out_features,)
        return b.op("Add", [y, b.weight(bias.reshape(shape), "bias")])
    if c is None:
        return y
    if layer.kind == "conv":
        return b.op("Add", [y, b.reshape(c, list(conv_shape))])
    beta = layer.attrs["beta"]
    if c.const_value is not None:
        return b.op("Add", [y, b.weight(const_array(c).astype(np.float64) * beta, "bias")])
    if beta != 1.0:
        c = b.op("Mul", [c, b.weight(np.asarray(beta), "beta")])
    return b.op("Add", [y, c])


def rewrite_layer(model: ir.Model, lp: LayerPlan, cores: list[np.ndarray] | None = None) -> float:
    """Replace one node by its chain; returns the relative reconstruction error.

    ``cores`` (e.g. trained ones) are emitted as given; by default they are decomposed from the weight.
    """
    layer, fmt = lp.layer, get_format(lp.format)
    node, old_nodes, x, y_old = layer_io(model, layer)
    weight, bias = dense_weight(model, layer)
    if not np.isfinite(weight).all() or (bias is not None and not np.isfinite(bias).all()):
        raise UserError(f"layer {layer.name!r}: weight or bias has NaN or infinite values")
    if cores is None:
        cores = fmt.decompose(weight, layer, lp.modes, lp.ranks)
    error = float(np.linalg.norm(fmt.reconstruct(cores, layer, lp.modes) - weight) / max(np.linalg.norm(weight), 1e-30))
    b = ChainBuilder(model.graph, node.name, dtype=chain_dtype(node))
    x = chain_input(b, x)
    if layer.kind == "conv":
        y = fmt.emit(b, x, cores, layer, lp.modes, lp.options)
    else:
        y = fc_output(b, fmt.emit(b, fc_input(b, x, layer), cores, layer, lp.modes, lp.options), x, layer)
    y = _add_bias(b, y, node, layer, bias)
    ir.convenience.replace_nodes_and_values(model.graph, node, old_nodes, b.nodes, [y_old], [y])
    return error


# What a layer's rewrite raises when this layer cannot be rewritten (a decomposition that does not
# converge, a weight the format cannot handle); anything else is a bug and propagates.
CANNOT_REWRITE = (UserError, ValueError, ArithmeticError, np.linalg.LinAlgError)
# What validating hand-edited plan JSON (modes, ranks, options of any type) can raise.
_BAD_PLAN_JSON = (KeyError, ValueError, TypeError, AttributeError, IndexError, ArithmeticError)
ACTIONS = ("compress", "dense", "skip")


def _check_layer_plan(lp: LayerPlan) -> None:
    """Format, modes, ranks and options of one ``compress`` entry are ones the format can emit."""
    try:
        fmt = get_format(lp.format)
    except (KeyError, TypeError):
        raise UserError(f"plan layer {lp.name!r}: unknown format {lp.format!r}") from None
    ranks = lp.ranks
    if not isinstance(ranks, list) or not all(type(r) is int for r in ranks):
        raise UserError(f"plan layer {lp.name!r}: ranks must be a list of integers, got {ranks!r}")
    if not isinstance(lp.modes, dict):
        raise UserError(f"plan layer {lp.name!r}: modes must be an object, got {lp.modes!r}")
    try:
        fmt.validate_ranks(lp.layer, lp.modes, ranks)
        choices = [*fmt.options(lp.layer, lp.modes), fmt.realize(lp.layer, lp.modes, ranks)]
    except _BAD_PLAN_JSON as exc:
        raise UserError(f"plan layer {lp.name!r}: {exc}") from None
    if (lp.options or {}) not in choices:
        raise UserError(f"plan layer {lp.name!r}: options {lp.options!r} are not a {lp.format} realization "
                        f"(choose one of {[c for i, c in enumerate(choices) if c not in choices[:i]]})")


def check_plan_layers(plan: Plan, layers: list[Layer]) -> None:
    """Every layer a saved plan compresses is, field by field, what the model's node is now (``layers``
    from ``find_layers`` on the model): op, weight, shape, every attribute, bias, spatial sizes, and
    still compressible. A hand-edited field is a UserError naming the layer and the field."""
    found = {lay.name: lay for lay in layers}
    for lp in plan.layers:
        if lp.action != "compress":
            continue
        fresh = found.get(lp.name)
        if fresh is None:
            raise UserError(f"plan layer {lp.name!r} is not a node of this model (no such Gemm, MatMul or Conv)")
        if fresh.skip:
            raise UserError(f"plan layer {lp.name!r} cannot be compressed: {fresh.skip}")
        mine, theirs = fresh.to_json(), lp.layer.to_json()
        for key in sorted(set(mine) | set(theirs)):
            if key == "skip":
                continue
            if key == "attrs":
                diff = [k for k in sorted(set(mine[key]) | set(theirs[key] or {}))
                        if (theirs[key] or {}).get(k) != mine[key].get(k)]
                if diff:
                    k = diff[0]
                    raise UserError(f"plan layer {lp.name!r}: attribute {k} is {(theirs[key] or {}).get(k)!r} "
                                    f"in the plan, {mine[key].get(k)!r} in the model")
            elif _norm(mine.get(key)) != _norm(theirs.get(key)):
                raise UserError(f"plan layer {lp.name!r}: {key} is {theirs.get(key)!r} in the plan, "
                                f"{mine.get(key)!r} in the model (plan with the same {opt('input_shapes')})")


def _norm(v):
    return list(v) if isinstance(v, tuple) else v


def check_plan_matches(model: ir.Model, plan: Plan) -> None:
    """A saved plan applies only to a model with the same layers and weight shapes, with valid actions,
    formats, modes, ranks and options."""
    for lp in plan.layers:
        if lp.action not in ACTIONS:
            raise UserError(f"plan layer {lp.name!r}: action {lp.action!r} is not one of {', '.join(ACTIONS)}")
        if lp.action != "compress":
            continue
        try:
            node = find_node(model, lp.layer.name)
        except KeyError:
            raise UserError(f"plan layer {lp.layer.name!r} is not a node of this model") from None
        weight = node.inputs[1] if len(node.inputs) > 1 else None
        shape = constant_shape(weight) or tuple(weight.shape or ()) if weight is not None else ()
        if node.op_type != lp.layer.op_type or shape != tuple(lp.layer.weight_shape):
            raise UserError(
                f"plan layer {lp.layer.name!r} is {lp.layer.op_type} {lp.layer.weight_shape}, "
                f"model has {node.op_type} {shape}"
            )
        _check_layer_plan(lp)


class CompressPass(ir.passes.InPlacePass):
    """The onnx-ir pass that swaps every ``compress`` entry of ``plan`` for its decomposed chain.

    A layer that cannot be rewritten (``CANNOT_REWRITE``) is left dense and reported with the reason, in its
    plan entry too (``plan`` is updated: errors, failures); other exceptions are bugs and propagate. The old
    nodes' weights stay in the graph until a cleanup pass (``RemoveUnusedNodesPass``) removes them, as
    ``apply_plan`` does. ``cores`` maps layer names to cores to emit instead of decomposing the weight;
    ``results`` holds the last run's ``RewriteResult`` per planned layer. Run in a ``PassManager``, its
    errors arrive as the cause of onnx-ir's ``PassError``."""

    def __init__(self, plan: Plan, cores: dict[str, list[np.ndarray]] | None = None, progress: bool = False):
        super().__init__()
        self.plan, self.cores, self.progress = plan, cores or {}, progress
        self.results: list[RewriteResult] = []

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        check_plan_matches(model, self.plan)
        self.results = []
        todo = [lp for lp in self.plan.layers if lp.action == "compress"]
        for lp in tqdm(todo, desc="rewriting", unit="layer", disable=not self.progress or not todo):
            try:
                lp.error = rewrite_layer(model, lp, self.cores.get(lp.name))
                self.results.append(RewriteResult(lp.name, True, lp.error))
            except CANNOT_REWRITE as exc:
                lp.action, lp.reason = "skip", f"rewrite failed: {exc}"
                self.results.append(RewriteResult(lp.name, False, reason=lp.reason))
        return ir.passes.PassResult(model, modified=any(r.rewritten for r in self.results))


def apply_plan(model: ir.Model, plan: Plan, progress: bool = False,
               cores: dict[str, list[np.ndarray]] | None = None) -> list[RewriteResult]:
    """Rewrite ``model`` in place (``CompressPass``, then onnx-ir's ``RemoveUnusedNodesPass``); returns the
    per-layer results. The passes run one after the other rather than in a ``PassManager``, which would wrap
    a UserError (a plan that does not fit the model) or a bug in onnx-ir's ``PassError``."""
    rewrite = CompressPass(plan, cores, progress)
    rewrite(model)
    RemoveUnusedNodesPass()(model)
    return rewrite.results
