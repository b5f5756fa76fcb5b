"""Static tensor shapes of an ONNX model at a fixed batch size (ONNX shape inference)."""

from __future__ import annotations

import contextlib
import tempfile

import onnx

from ttcompile.errors import OptionError, UserError, opt
from ttcompile.protos import graph_inputs


def fix_input_dims(
    model: onnx.ModelProto, batch: int = 1, input_shapes: dict[str, tuple[int, ...]] | None = None
) -> onnx.ModelProto:
    """Copy of ``model`` whose graph inputs have concrete dims.

    The first dynamic dim of each input is the batch and becomes ``batch`` (a dim with the
    same symbol elsewhere too); any other dynamic dim must be given in ``input_shapes``
    (name -> full shape), else a UserError names the input.
    """
    copy = onnx.ModelProto()
    copy.CopyFrom(model)  # not via bytes: those are limited to 2 GiB
    model = copy
    input_shapes = dict(input_shapes or {})
    for inp in graph_inputs(model):
        if not inp.type.HasField("tensor_type"):
            continue
        dims = inp.type.tensor_type.shape.dim
        given = input_shapes.pop(inp.name, None)
        if given is not None:
            if len(given) != len(dims):
                raise UserError(f"input shape for {inp.name!r} has rank {len(given)}, model expects {len(dims)}")
            for d, v in zip(dims, given):
                d.Clear()
                d.dim_value = int(v)
            continue
        batch_symbols: set[str] = set()
        for i, d in enumerate(dims):
            if d.HasField("dim_value") and d.dim_value > 0:
                continue
            if not batch_symbols or d.dim_param in batch_symbols:
                batch_symbols.add(d.dim_param)
                d.Clear()
                d.dim_value = batch
            else:
                raise UserError(
                    f"input {inp.name!r} has a dynamic dim {i} ({d.dim_param or '?'}): "
                    f"give its shape with {opt('input_shapes')} NAME=DxDxD"
                )
    if input_shapes:
        raise OptionError(f"{opt('input_shapes')} names unknown inputs: {', '.join(sorted(input_shapes))}")
    return model


def static_shapes(
    model: onnx.ModelProto, batch: int = 1, input_shapes: dict[str, tuple[int, ...]] | None = None
) -> dict[str, tuple[int, ...]]:
    """Value name -> concrete shape for every value whose shape inference fully resolves."""
    fixed = fix_input_dims(model, batch, input_shapes)
    try:
        inferred = onnx.shape_inference.infer_shapes(fixed, strict_mode=False, data_prop=True)
    except Exception as exc:  # onnx raises several exception types here
        raise UserError(f"shape inference failed: {exc}") from exc
    g = inferred.graph
    shapes: dict[str, tuple[int, ...]] = {}
    for vi in list(g.input) + list(g.value_info) + list(g.output):
        tt = vi.type.tensor_type
        if not tt.HasField("shape"):
            continue
        dims = tt.shape.dim
        if all(d.HasField("dim_value") for d in dims):
            shapes[vi.name] = tuple(int(d.dim_value) for d in dims)
    for t in g.initializer:
        shapes[t.name] = tuple(t.dims)
    if any(out and out not in shapes for node in g.node for out in node.output):
        # ONNX inference stops at data-dependent chains (Shape -> Cast -> Reshape from TorchScript
        # exports); ONNX Runtime's symbolic inference often gets through them.
        shapes = {**runtime_symbolic_shapes(fixed), **shapes}
    return shapes


def runtime_symbolic_shapes(fixed: onnx.ModelProto) -> dict[str, tuple[int, ...]]:
    """Concrete shapes from ONNX Runtime's symbolic shape inference; {} when it is unavailable or fails."""
    try:
        from onnxruntime.tools.symbolic_shape_infer import SymbolicShapeInference
    except ImportError:
        return {}
    try:
        # it may save the model (and a <uuid>.data with every weight) into the current folder: keep
        # that out of the user's folder, and gone afterwards
        with tempfile.TemporaryDirectory(prefix="ttcompile-shapes-") as tmp, contextlib.chdir(tmp):
            inferred = SymbolicShapeInference.infer_shapes(fixed)
    except Exception:  # it raises bare Exceptions on graphs it cannot handle
        return {}
    if inferred is None:
        return {}
    shapes = {}
    for vi in [*inferred.graph.value_info, *inferred.graph.output]:
        dims = vi.type.tensor_type.shape.dim
        if vi.type.tensor_type.HasField("shape") and all(d.HasField("dim_value") for d in dims):
            shapes[vi.name] = tuple(int(d.dim_value) for d in dims)
    return shapes


def parse_input_shapes(specs: list[str] | None) -> dict[str, tuple[int, ...]]:
    """Parse ``["x=1x3x32x32", ...]`` into ``{"x": (1, 3, 32, 32)}``."""
    out: dict[str, tuple[int, ...]] = {}
    for spec in specs or []:
        name, sep, dims = spec.partition("=")
        try:
            if not sep or not name:
                raise ValueError
            out[name] = tuple(int(v) for v in dims.lower().split("x"))
            if min(out[name]) < 1:
                raise ValueError
        except ValueError:
            raise OptionError(f"{opt('input_shapes')} {spec!r}: expected NAME=DxDx...D with positive integers D, "
                            "e.g. input=1x3x32x32") from None
    return out
