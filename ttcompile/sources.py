"""What the Python API accepts as a model and as data, turned into what the library works on.

A model is a path, an ``onnx.ModelProto`` or an ``onnx_ir.Model``; it becomes a ``Source``: a normalised
``ir.Model`` (a copy: the caller's object is never changed), its ``ModelId`` (name and SHA-256: of the file
for a path, of the deterministic serialisation for an in-memory model) and the kind to hand results back as.
Data is a path or dataset spec (``ttcompile.models.data.load_dataset``), an array ``x``, a pair ``(x, y)``,
a ``Dataset``, or an iterable of such batches (concatenated); it becomes a ``Dataset``.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import onnx_ir as ir

from ttcompile.errors import UserError
from ttcompile.graph import load_model, load_proto, normalize_proto, to_proto
from ttcompile.models.data import Dataset, load_dataset

ModelLike = str | os.PathLike | onnx.ModelProto | ir.Model
Batch = np.ndarray | tuple
DataLike = str | os.PathLike | np.ndarray | tuple | Dataset | Iterable[Batch]


@dataclass(frozen=True)
class ModelId:
    """How a plan or an analysis names the model it was made for."""

    name: str
    sha256: str


def file_sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def proto_sha256(proto: onnx.ModelProto) -> str:
    """SHA-256 of the deterministic serialisation (an in-memory model has no file to hash)."""
    return hashlib.sha256(proto.SerializeToString(deterministic=True)).hexdigest()


def model_id(model: str | os.PathLike | onnx.ModelProto | ir.Model | ModelId) -> ModelId:
    """The id of a file (its bytes), an in-memory model (its serialisation) or an id itself."""
    if isinstance(model, ModelId):
        return model
    if isinstance(model, ir.Model):
        model = to_proto(model)
    if isinstance(model, onnx.ModelProto):
        return ModelId(f"<in-memory model {model.graph.name or 'graph'}>", proto_sha256(model))
    try:
        return ModelId(str(model), file_sha256(model))
    except OSError as exc:
        raise UserError(f"{model}: cannot read ({exc.strerror or exc})") from None


@dataclass
class Source:
    """A model as the library uses it: ``model`` (normalised copy), ``id``, the input's ``path`` (None in
    memory), ``kind`` (``onnx.ModelProto`` or ``ir.Model``: the type results are returned as) and the
    ``original`` proto as given (what outputs are compared with)."""

    model: ir.Model
    id: ModelId
    path: Path | None
    kind: type
    original: onnx.ModelProto

    def give_back(self, proto: onnx.ModelProto) -> onnx.ModelProto | ir.Model:
        """``proto`` as the caller's kind: a ModelProto for a path or a ModelProto, else an ``ir.Model``."""
        return ir.from_proto(proto) if self.kind is ir.Model else proto


def resolve_model(model: ModelLike) -> Source:
    """Read, check and normalise ``model`` like ``graph.load_model`` does a file (UserError naming it)."""
    if isinstance(model, (str, os.PathLike)):
        model_ir = load_model(model)  # UserError naming the file when unreadable
        return Source(model_ir, model_id(model), Path(model), onnx.ModelProto, load_proto(model))
    if isinstance(model, ir.Model):
        proto, kind = to_proto(model), ir.Model
    elif isinstance(model, onnx.ModelProto):
        proto, kind = model, onnx.ModelProto
    else:
        raise UserError(f"a model is a path, an onnx.ModelProto or an onnx_ir.Model, not {type(model).__name__}")
    mid = model_id(proto)
    copy = onnx.ModelProto()
    copy.CopyFrom(proto)
    return Source(normalize_proto(copy, mid.name), mid, None, kind, proto)


def as_dataset(data: DataLike, what: str = "data") -> Dataset:
    """``data`` as a Dataset (see the module docstring); ``what`` names it in errors."""
    if isinstance(data, Dataset):
        return data
    if isinstance(data, (str, os.PathLike)):
        return load_dataset(os.fspath(data))
    if isinstance(data, (np.ndarray, tuple)):
        return _arrays(data, what)
    if isinstance(data, Iterable):
        parts = [_arrays(b, what) if not isinstance(b, Dataset) else b for b in data]
        if not parts:
            raise UserError(f"{what}: no batches")
        if len({p.y is None for p in parts}) > 1:
            raise UserError(f"{what}: some batches have labels and some do not")
        try:
            x = np.concatenate([p.x for p in parts])
        except ValueError as exc:
            raise UserError(f"{what}: batches of different sample shapes ({exc})") from None
        y = None if parts[0].y is None else np.concatenate([p.y for p in parts])
        return Dataset(x, y, what)
    raise UserError(f"{what}: expected a path, a dataset spec, an array, (x, y) or batches, not {type(data).__name__}")


def data_spec(data: DataLike, what: str = "data") -> str | Dataset:
    """A path or spec as its string (loaded later, errors naming it), anything else ``as_dataset``."""
    return os.fspath(data) if isinstance(data, (str, os.PathLike)) else as_dataset(data, what)


def _arrays(batch: Batch, what: str) -> Dataset:
    """``x`` or ``(x, y)`` (``y`` may be None) as a Dataset of float32 inputs and int64 labels."""
    if isinstance(batch, tuple):
        if len(batch) != 2:
            raise UserError(f"{what}: a batch is x or (x, y), got a tuple of {len(batch)}")
        x, y = batch
    else:
        x, y = batch, None
    x = np.asarray(x)
    if x.ndim < 1 or len(x) == 0:
        raise UserError(f"{what}: x must be an array of shape (N, ...) with N >= 1, got shape {x.shape}")
    if y is not None:
        y = np.asarray(y)
        if y.shape != (len(x),) or not np.issubdtype(y.dtype, np.integer):
            raise UserError(f"{what}: y must be {len(x)} integer labels, got {y.dtype} of shape {y.shape}")
        y = y.astype(np.int64)
    x = x.astype(np.float32, copy=False) if np.issubdtype(x.dtype, np.floating) else x
    return Dataset(x, y, what)
