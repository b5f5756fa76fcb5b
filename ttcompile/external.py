"""External-data safety checks done by ttcompile itself, so they do not depend on the onnx version:
every tensor stored outside the model file must be a regular file inside the model's folder, reached
without a symbolic link, with its offset and length within the file."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import onnx

from ttcompile.errors import UserError


def _tensors(graph: onnx.GraphProto) -> Iterator[onnx.TensorProto]:
    """Initializers and attribute tensors of ``graph`` and of every subgraph."""
    yield from graph.initializer
    for node in graph.node:
        for attr in node.attribute:
            if attr.HasField("t"):
                yield attr.t
            yield from attr.tensors
            if attr.HasField("g"):
                yield from _tensors(attr.g)
            for g in attr.graphs:
                yield from _tensors(g)


def external_tensors(graph: onnx.GraphProto) -> Iterator[onnx.TensorProto]:
    """The tensors of ``graph`` (and its subgraphs) whose data is stored outside the model."""
    return (t for t in _tensors(graph) if t.data_location == onnx.TensorProto.EXTERNAL)


def _entry(tensor: onnx.TensorProto) -> dict[str, str]:
    return {e.key: e.value for e in tensor.external_data}


def _int(value: str | None, what: str, name: str, path: Path) -> int | None:
    if value is None:
        return None
    try:
        number = int(value)
    except ValueError:
        number = -1
    if number < 0:
        raise UserError(f"{path}: tensor {name!r} has external-data {what} {value!r}; expected an integer >= 0")
    return number


def check_external_data(path: Path, model: onnx.ModelProto) -> None:
    """UserError naming the tensor unless every external-data entry of ``model`` (loaded from ``path``
    without its external data) is safe to read: a relative location inside the model's folder, no
    symbolic link on the way, a regular file, and ``offset + length`` within it."""
    folder = Path(os.path.realpath(path.parent))
    for tensor in external_tensors(model.graph):
        info, name = _entry(tensor), tensor.name
        location = info.get("location", "")
        if not location or os.path.isabs(location) or ".." in Path(location).parts:
            raise UserError(f"{path}: tensor {name!r} has external-data location {location!r}; "
                            "it must be a relative path inside the model's folder")
        target = folder / location
        walked = folder
        for part in Path(location).parts:
            walked = walked / part
            if walked.is_symlink():
                raise UserError(f"{path}: tensor {name!r}: external data {location!r} goes through a symbolic link")
        try:
            st = os.stat(target)
        except OSError:
            raise UserError(f"{path}: missing external data file {location!r} (tensor {name!r})") from None
        if not stat.S_ISREG(st.st_mode):
            raise UserError(f"{path}: tensor {name!r}: external data {location!r} is not a regular file")
        offset = _int(info.get("offset"), "offset", name, path) or 0
        length = _int(info.get("length"), "length", name, path)
        end = offset + (length if length is not None else 0)
        if offset > st.st_size or end > st.st_size:
            raise UserError(f"{path}: tensor {name!r}: external data {location!r} has {st.st_size} bytes, the "
                            f"model asks for bytes {offset}..{end}")
