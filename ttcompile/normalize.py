"""Graph clean-ups applied on load so that exporters' artifacts do not hide layers."""

from __future__ import annotations

import onnx_ir as ir


def fold_constant_identities(model: ir.Model) -> int:
    """Replace every ``Identity(initializer)`` by a copy of that initializer; returns how many were folded.

    The TorchScript exporter stores equal weights once and feeds the other layers through Identity
    nodes (``nn.TransformerEncoder``'s cloned layers, tied weights), which makes every such weight look
    shared or non-constant. A folded Identity whose output is a graph output is kept.
    """
    graph = model.graph
    outputs = set(map(id, graph.outputs))
    folded = 0
    for node in list(graph):
        if node.op_type != "Identity" or node.domain not in ("", "ai.onnx") or len(node.inputs) != 1:
            continue
        src, out = node.inputs[0], node.outputs[0]
        if src is None or src.const_value is None or src.is_graph_input() or id(out) in outputs:
            continue
        copy = ir.Value(name=out.name, shape=src.shape, type=src.type,
                        const_value=ir.tensor(src.const_value.numpy().copy(), name=out.name))
        out.replace_all_uses_with(copy)
        graph.remove(node, safe=True)
        graph.register_initializer(copy)
        folded += 1
    return folded
