"""CompressPass: swap every ``compress`` entry of a Plan for its decomposed chain."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx_ir as ir
from onnx_ir.passes.common import RemoveUnusedNodesPass
from tqdm import tqdm

from ttcompile.errors import UserError
from ttcompile.graph import const_array
from ttcompile.layers import Layer, dense_weight, find_node, layer_io
from ttcompile.passes.base import ChainBuilder, fc_input, fc_output, get_format
from ttcompile.plan import LayerPlan, Plan
from ttcompile.quant import chain_dtype, chain_input, constant_shape


@dataclass
class RewriteResult:
    name: str
    rewritten: bool
    error: float | None = None  # relative reconstruction error ||W - W_hat|| / ||W||
    reason: str | None = None  # why it was not rewritten


def _add_bias(b: ChainBuilder, y: ir.Value, node: ir.Node, layer: Layer, bias: np.ndarray | None) -> ir.Value:
    """Bias on the last node: a vector (Gemm C/beta folded), or Gemm's general C re-added as is."""
    if bias is not None:
        shape = (layer.out_features,) + (1,) * len(layer.kernel) if layer.kind == "conv" else (layer.out_features,)
        return b.op("Add", [y, b.weight(bias.reshape(shape), "bias")])
    c = node.inputs[2] if layer.kind == "gemm" and len(node.inputs) > 2 else None
    if c is None:
        return y
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


def check_plan_matches(model: ir.Model, plan: Plan) -> None:
    """A saved plan applies only to a model with the same layers and weight shapes."""
    for lp in plan.layers:
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
        try:
            get_format(lp.format).validate_ranks(lp.layer, lp.modes, lp.ranks)
        except (KeyError, ValueError) as exc:
            raise UserError(f"plan layer {lp.layer.name!r}: {exc}") from None


def apply_plan(model: ir.Model, plan: Plan, progress: bool = True,
               cores: dict[str, list[np.ndarray]] | None = None) -> list[RewriteResult]:
    """Rewrite in place. A layer that fails to rewrite is left dense and reported, never fatal.

    ``cores`` maps layer names to cores to emit instead of decomposing the weight.
    """
    check_plan_matches(model, plan)
    results = []
    todo = [lp for lp in plan.layers if lp.action == "compress"]
    for lp in tqdm(todo, desc="rewriting", unit="layer", disable=not progress or not todo):
        try:
            lp.error = rewrite_layer(model, lp, (cores or {}).get(lp.name))
            results.append(RewriteResult(lp.name, True, lp.error))
        except Exception as exc:  # keep going: report the layer and leave it dense
            lp.action, lp.reason = "dense", f"rewrite failed: {type(exc).__name__}: {exc}"
            results.append(RewriteResult(lp.name, False, reason=lp.reason))
    RemoveUnusedNodesPass()(model)
    return results
