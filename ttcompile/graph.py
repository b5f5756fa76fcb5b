"""Loading, validating and saving ONNX models (onnx-ir in memory, onnx for checks)."""

from __future__ import annotations

import functools
import os
from pathlib import Path

import numpy as np
import onnx
import onnx_ir as ir
from onnx_ir.passes.common import LiftConstantsToInitializersPass, NameFixPass

from ttcompile import modelfile
from ttcompile.errors import UserError
from ttcompile.external import check_external_data, external_tensors
from ttcompile.normalize import fold_constant_identities


def load_model(path: str | os.PathLike) -> ir.Model:
    """Read, check and normalise an ONNX model.

    Constants are lifted to initializers (so weights are always initializers), Identity copies of
    initializers are folded (``ttcompile.normalize``), and every node and value gets a unique name.
    External data next to the file is loaded, unless the model takes more than
    ``modelfile.LARGE_BYTES``: then onnx.checker reads it by path and the weights stay in their files,
    read (memory-mapped) when used; protos of such a model reference them by absolute path (see
    ``ttcompile.modelfile``).
    """
    path = Path(path)
    if not path.exists():
        raise UserError(f"{path}: no such file")
    if not path.is_file():
        raise UserError(f"{path}: not a file")
    try:
        proto = onnx.load(str(path), load_external_data=False)
        check_external_data(path, proto)
        large = _stored_bytes(path, proto) > modelfile.LARGE_BYTES
        if not large:
            onnx.external_data_helper.load_external_data_for_model(proto, str(path.parent))
    except UserError:
        raise
    except FileNotFoundError as exc:
        raise UserError(f"{path}: missing external data file ({exc.filename or exc})") from exc
    except onnx.checker.ValidationError as exc:
        raise UserError(f"{path}: missing external data ({exc})") from exc
    except Exception as exc:
        raise UserError(f"{path}: not a readable ONNX model ({type(exc).__name__}: {exc})") from exc
    return normalize_proto(proto, str(path), path if large else None)


def normalize_proto(proto: onnx.ModelProto, name: str, large_file: Path | None = None) -> ir.Model:
    """Check ``proto`` (UserError naming ``name``) and normalise it as ``load_model`` does; ``proto`` itself
    is consumed (the returned model may share its tensors). ``large_file``: the file of a large model whose
    external data stays in its files (checked by path, tensors pinned to absolute locations)."""
    if not proto.graph.node:
        raise UserError(f"{name}: not an ONNX model (empty graph)")
    bad = _invalid_text(proto)
    if bad:
        raise UserError(f"{name}: invalid UTF-8 in a {bad[0]} ({bad[1]!r}); the file is damaged")
    try:
        onnx.checker.check_model(proto if large_file is None else str(large_file))
    except onnx.checker.ValidationError as exc:
        first = str(exc).strip().splitlines()[0]
        raise UserError(f"{name}: invalid ONNX model: {first}") from exc
    model = ir.from_proto(proto)
    if large_file is not None:
        ir.external_data.set_base_dir(model.graph, os.path.realpath(large_file.parent))
    LiftConstantsToInitializersPass(lift_all_constants=True, size_limit=0)(model)
    fold_constant_identities(model)
    NameFixPass()(model)
    if large_file is not None:
        _pin_external(model)
    return model


def _stored_bytes(path: Path, proto: onnx.ModelProto) -> int:
    """Bytes of the model file plus the external data its tensors read (locations already checked)."""
    total = path.stat().st_size
    for tensor in external_tensors(proto.graph):
        info = {e.key: e.value for e in tensor.external_data}
        offset = int(info.get("offset") or 0)
        total += int(info["length"]) if info.get("length") else os.path.getsize(path.parent / info["location"]) - offset
    return total


def _pin_external(model: ir.Model) -> None:
    """Give every external initializer of ``model`` its absolute location (its base folder joined in), so
    that its protos still find the data wherever they are used."""
    for graph in model.graphs():
        for value in graph.initializers.values():
            t = value.const_value
            if isinstance(t, ir.ExternalTensor) and t.base_dir:
                value.const_value = ir.ExternalTensor(t.path, t.offset, t.length, t.dtype, shape=t.shape,
                                                      name=t.name, base_dir="")


def load_proto(path: str | os.PathLike) -> onnx.ModelProto:
    """The proto of a model ``load_model`` accepted, as stored (not normalised): its external data read in,
    or, over ``modelfile.LARGE_BYTES``, referenced by absolute path (see ``ttcompile.modelfile``)."""
    path = Path(path)
    proto = onnx.load(str(path), load_external_data=False)
    if _stored_bytes(path, proto) <= modelfile.LARGE_BYTES:
        onnx.external_data_helper.load_external_data_for_model(proto, str(path.parent))
        return proto
    folder = os.path.realpath(path.parent)
    for tensor in external_tensors(proto.graph):
        for entry in tensor.external_data:
            if entry.key == "location":
                entry.value = os.path.join(folder, entry.value)
    return proto


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


def save_model(model: ir.Model | onnx.ModelProto, path: str | os.PathLike,
               companions: dict[str | os.PathLike, bytes] | None = None) -> Path:
    """Write ``companions`` (e.g. a plan) and the model atomically, never leaving a partial file; a model
    over ``modelfile.LARGE_BYTES`` goes with its weights in ``modelfile.data_path(path)``."""
    proto = model if isinstance(model, onnx.ModelProto) else to_proto(model)
    return modelfile.save(proto, path, companions)[-1]


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
