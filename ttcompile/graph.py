"""Loading, validating and saving ONNX models (onnx-ir in memory, onnx for checks)."""

from __future__ import annotations

import functools
import os
from pathlib import Path

import numpy as np
import onnx
import onnx_ir as ir
from onnx_ir.passes.common import LiftConstantsToInitializersPass, NameFixPass

from ttcompile.atomic import write_bytes_atomic
from ttcompile.errors import UserError
from ttcompile.external import check_external_data
from ttcompile.normalize import fold_constant_identities


def load_model(path: str | os.PathLike) -> ir.Model:
    """Read, check and normalise an ONNX model.

    Constants are lifted to initializers (so weights are always initializers), Identity copies of
    initializers are folded (``ttcompile.normalize``), and
    every node and value gets a unique name. External data next to the file is loaded.
    """
    path = Path(path)
    if not path.exists():
        raise UserError(f"{path}: no such file")
    if not path.is_file():
        raise UserError(f"{path}: not a file")
    try:
        proto = onnx.load(str(path), load_external_data=False)
        check_external_data(path, proto)
        onnx.external_data_helper.load_external_data_for_model(proto, str(path.parent))
    except UserError:
        raise
    except FileNotFoundError as exc:
        raise UserError(f"{path}: missing external data file ({exc.filename or exc})") from exc
    except onnx.checker.ValidationError as exc:
        raise UserError(f"{path}: missing external data ({exc})") from exc
    except Exception as exc:
        raise UserError(f"{path}: not a readable ONNX model ({type(exc).__name__}: {exc})") from exc
    return normalize_proto(proto, str(path))


def normalize_proto(proto: onnx.ModelProto, name: str) -> ir.Model:
    """Check ``proto`` (UserError naming ``name``) and normalise it as ``load_model`` does; ``proto`` itself
    is consumed (the returned model may share its tensors)."""
    if not proto.graph.node:
        raise UserError(f"{name}: not an ONNX model (empty graph)")
    bad = _invalid_text(proto)
    if bad:
        raise UserError(f"{name}: invalid UTF-8 in a {bad[0]} ({bad[1]!r}); the file is damaged")
    try:
        onnx.checker.check_model(proto)
    except onnx.checker.ValidationError as exc:
        first = str(exc).strip().splitlines()[0]
        raise UserError(f"{name}: invalid ONNX model: {first}") from exc
    model = ir.from_proto(proto)
    LiftConstantsToInitializersPass(lift_all_constants=True, size_limit=0)(model)
    fold_constant_identities(model)
    NameFixPass()(model)
    return model


def _invalid_text(message) -> tuple[str, bytes] | None:
    """(field name, raw bytes) of the first string field that is not valid UTF-8 (protobuf hands such a
    field back as bytes), searching nested messages; None when all text is valid."""
    from google.protobuf.descriptor import FieldDescriptor

    for field, value in message.ListFields():
        repeated = field.is_repeated if hasattr(field, "is_repeated") else field.label == field.LABEL_REPEATED
        if field.type == FieldDescriptor.TYPE_STRING:
            values = value if repeated else [value]
            for v in values:
                if isinstance(v, bytes):
                    return field.name, v[:40]
        elif field.type == FieldDescriptor.TYPE_MESSAGE:
            for v in value if repeated else [value]:
                found = _invalid_text(v)
                if found:
                    return found
    return None


def to_proto(model: ir.Model) -> onnx.ModelProto:
    """Serialise to a ModelProto whose IR version the installed runtime accepts."""
    proto = ir.to_proto(model)
    proto.ir_version = min(proto.ir_version, max_runtime_ir_version())
    return proto


def save_model(model: ir.Model | onnx.ModelProto, path: str | os.PathLike) -> Path:
    """Write atomically (temp file in the same folder, then rename); never leaves a partial file."""
    proto = model if isinstance(model, onnx.ModelProto) else to_proto(model)
    return write_bytes_atomic(path, proto.SerializeToString())


@functools.cache
def max_runtime_ir_version() -> int:
    """Highest IR version the installed onnxruntime loads (probed once), or onnx's own if none."""
    try:
        import onnxruntime as ort
    except ImportError:
        return onnx.IR_VERSION
    x = onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1])
    y = onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1])
    graph = onnx.helper.make_graph([onnx.helper.make_node("Identity", ["x"], ["y"])], "probe", [x], [y])
    for version in range(onnx.IR_VERSION, 3, -1):
        probe = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 13)])
        probe.ir_version = version
        try:
            ort.InferenceSession(probe.SerializeToString(), providers=["CPUExecutionProvider"])
            return version
        except Exception:
            continue
    return onnx.IR_VERSION


def const_array(value: ir.Value | None) -> np.ndarray | None:
    """The numpy array of an initializer value, or None when it is not a constant."""
    if value is None or value.const_value is None:
        return None
    return value.const_value.numpy()


def opset_version(model: ir.Model) -> int:
    return int(model.opset_imports.get("", model.graph.opset_imports.get("", 17)))
