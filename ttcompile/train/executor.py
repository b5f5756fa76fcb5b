"""Execute an ONNX graph with torch ops so that its initializers can be trained, then write them back.

``OnnxModule(model)`` keeps each float initializer as an ``nn.Parameter`` (``module.parameter(onnx_name)``;
torch names cannot hold dots, so ``module.param_keys`` maps ONNX names to keys of ``module.params``).
Integer initializers and Constant nodes become non-persistent buffers. ``write_back`` puts the trained
values into a copy of the model: same nodes, same initializer names, shapes and dtypes.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import numpy as np
import onnx
import torch
from onnx import numpy_helper
from torch import nn

from ttcompile.errors import UserError
from ttcompile.protos import graph_inputs
from ttcompile.train import shape_ops  # noqa: F401  (registers the tensor-shape operators in OPS)
from ttcompile.train.common import FROZEN_SLOTS
from ttcompile.train.ops import OPS, Node, OpFn

Transform = Callable[[torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class _Step:
    fn: OpFn
    node: Node
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]


def default_opset(model: onnx.ModelProto) -> int:
    """Version of the default ONNX domain the model imports."""
    for entry in model.opset_import:
        if entry.domain in ("", "ai.onnx"):
            return entry.version
    raise UserError("model imports no version of the default ONNX operator set")


def _array(init: onnx.TensorProto) -> np.ndarray:
    if init.data_location == onnx.TensorProto.EXTERNAL:
        raise UserError(f"initializer {init.name!r} lives in external data that was not loaded; "
                        "load the model with onnx.load(path) next to its data file")
    return numpy_helper.to_array(init)


def _constant_value(node: Node) -> np.ndarray:
    """Value of a Constant node, from whichever value_* attribute it carries."""
    kinds = {"value": None, "value_float": np.float32, "value_floats": np.float32,
             "value_int": np.int64, "value_ints": np.int64}
    (key, value), = node.attrs.items()
    if key not in kinds:
        raise node.fail(f"attribute {key!r} is not supported")
    return np.asarray(value, dtype=kinds[key])


def _toposort(nodes: Iterable[onnx.NodeProto], known: set[str]) -> list[onnx.NodeProto]:
    """Nodes ordered so that every input is produced first (one pass for an already sorted graph)."""
    known = known | {""}
    pending, ordered = list(nodes), []
    while pending:
        waiting = []
        for node in pending:
            if all(name in known for name in node.input):
                ordered.append(node)
                known.update(node.output)
            else:
                waiting.append(node)
        if len(waiting) == len(pending):
            missing = sorted({n for node in waiting for n in node.input if n not in known})
            raise UserError(f"graph has a cycle or undefined values: {', '.join(missing[:5])}")
        pending = waiting
    return ordered


class OnnxModule(nn.Module):
    """An ONNX graph as a torch module. ``forward(*inputs)`` takes the graph inputs that are not
    initializers, in graph order, and returns the output tensor (a tuple when there are several).

    Float initializers with more than one element are trainable, except BatchNormalization statistics,
    the exponent/bounds/fill inputs of Pow/Clip/Pad and the right operands of Sub/Div (FROZEN_SLOTS);
    other float initializers are Parameters with ``requires_grad=False`` (a hook may unfreeze them).
    ``set_transform`` lets a regulariser rewrite the value an initializer contributes (for example
    gate it) without touching the graph.
    """

    def __init__(self, model: onnx.ModelProto):
        super().__init__()
        graph = model.graph
        opset = default_opset(model)
        self.params = nn.ParameterDict()
        self.consts = nn.Module()
        self.param_keys: dict[str, str] = {}  # ONNX initializer name -> key in self.params
        self._const_keys: dict[str, str] = {}  # ONNX value name -> buffer name in self.consts
        self._transforms: dict[str, Transform] = {}
        frozen = {node.input[i] for node in graph.node for i in FROZEN_SLOTS.get(node.op_type, ())
                  if i < len(node.input)}
        for init in graph.initializer:
            value = torch.tensor(_array(init))
            if value.is_floating_point():
                key = self._key("p_", init.name, self.param_keys)
                trainable = value.numel() > 1 and init.name not in frozen
                self.params[key] = nn.Parameter(value, requires_grad=trainable)
            else:
                self._add_const(init.name, value)
        inits = {init.name for init in graph.initializer}
        self.input_names = [v.name for v in graph_inputs(graph)]
        self.output_names = [v.name for v in graph.output]
        self._steps: list[_Step] = []
        for proto in _toposort(graph.node, inits | set(self.input_names)):
            node = Node.from_proto(proto, opset)
            if proto.domain not in ("", "ai.onnx") or proto.op_type not in {*OPS, "Constant"}:
                domain = f" (domain {proto.domain})" if proto.domain else ""
                raise node.fail(f"operator {proto.op_type}{domain} is not supported by the torch executor")
            if proto.op_type == "Constant":
                self._add_const(proto.output[0], torch.tensor(_constant_value(node)))
                continue
            fn, max_outputs = OPS[proto.op_type]
            if max_outputs is not None and any(proto.output[max_outputs:]):
                raise node.fail(f"only the first {max_outputs} output(s) are supported")
            self._steps.append(_Step(fn, node, tuple(proto.input), tuple(proto.output)))

    def _key(self, prefix: str, name: str, taken: dict[str, str]) -> str:
        key = base = prefix + re.sub(r"\W", "_", name)
        n = 1
        while key in taken.values():
            key, n = f"{base}_{n}", n + 1
        taken[name] = key
        return key

    def _add_const(self, name: str, value: torch.Tensor) -> None:
        self.consts.register_buffer(self._key("c_", name, self._const_keys), value, persistent=False)

    def parameter(self, name: str) -> nn.Parameter:
        """The Parameter holding float initializer ``name`` (ONNX name)."""
        if name not in self.param_keys:
            raise KeyError(f"{name!r} is not a float initializer of this graph")
        return self.params[self.param_keys[name]]

    def onnx_parameters(self) -> dict[str, nn.Parameter]:
        """ONNX initializer name -> Parameter, for every float initializer."""
        return {name: self.params[key] for name, key in self.param_keys.items()}

    def set_transform(self, name: str, fn: Transform | None) -> None:
        """Make initializer ``name`` contribute ``fn(parameter)`` to the graph (None removes it).
        ``write_back`` stores the transformed value, computed in eval mode."""
        self.parameter(name)
        if fn is None:
            self._transforms.pop(name, None)
        else:
            self._transforms[name] = fn

    def initializer(self, name: str) -> torch.Tensor:
        """The value initializer ``name`` contributes to the graph (transform applied)."""
        value = self.parameter(name)
        fn = self._transforms.get(name)
        return value if fn is None else fn(value)

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, ...]:
        if len(inputs) != len(self.input_names):
            raise TypeError(f"graph takes {len(self.input_names)} input(s) {self.input_names}, "
                            f"got {len(inputs)}")
        env = {name: getattr(self.consts, key) for name, key in self._const_keys.items()}
        env.update((name, self.initializer(name)) for name in self.param_keys)
        env.update(zip(self.input_names, inputs, strict=True))
        for step in self._steps:
            try:
                out = step.fn(step.node, *[env[n] if n else None for n in step.inputs])
            except RuntimeError as exc:
                raise RuntimeError(f"{step.node.op_type} node {step.node.name!r}: {exc}") from exc
            if isinstance(out, torch.Tensor):
                out = (out,)
            env.update((name, value) for name, value in zip(step.outputs, out) if name)
        outputs = tuple(env[name] for name in self.output_names)
        return outputs[0] if len(outputs) == 1 else outputs


def write_back(module: OnnxModule, model: onnx.ModelProto) -> onnx.ModelProto:
    """Copy of ``model`` whose float initializers hold ``module``'s current (transformed, eval-mode)
    values, cast to each initializer's original dtype. Nodes, names and shapes are unchanged."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    position = {init.name: i for i, init in enumerate(out.graph.initializer)}
    was_training = module.training
    module.eval()
    try:
        with torch.no_grad():
            for name in module.param_keys:
                if name not in position:
                    raise UserError(f"initializer {name!r} of the trained module is not in the model")
                old = out.graph.initializer[position[name]]
                value = module.initializer(name).detach().cpu().numpy()
                if value.shape != tuple(old.dims):
                    raise UserError(f"initializer {name!r}: trained shape {value.shape} differs from "
                                    f"the model's {tuple(old.dims)}")
                dtype = onnx.helper.tensor_dtype_to_np_dtype(old.data_type)
                old.CopyFrom(numpy_helper.from_array(value.astype(dtype), name))
    finally:
        module.train(was_training)
    return out
