"""ModelProtos on disk, weights inline or in one external-data file beside the model.

Protobuf refuses messages over 2 GiB, so a model whose bytes exceed ``LARGE_BYTES`` is written (and handed
to onnx.checker and ONNX Runtime) as a pair: ``NAME`` plus ``NAME.data`` holding every tensor of
``EXTERNAL_MIN_BYTES`` or more. In memory, a lazily loaded large model (``graph.load_model``) keeps its
weights in the input's data files: its protos reference them by absolute path, a form only this module
reads (onnx and ONNX Runtime accept relative locations only, so such a proto is always written out first).
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import onnx
import onnx_ir as ir

from ttcompile.atomic import atomic_paths
from ttcompile.errors import UserError
from ttcompile.external import external_tensors

LARGE_BYTES = 1_800_000_000  # above this a model is written with external data (protobuf's limit is 2 GiB)
EXTERNAL_MIN_BYTES = 1024  # tensors this large or larger go to the data file


def data_path(path: str | os.PathLike) -> Path:
    """``out.onnx`` -> ``out.onnx.data``: where ``save`` puts the weights of a large model."""
    path = Path(path)
    return path.with_name(path.name + ".data")


def input_files(option: str, path: str | os.PathLike | None) -> list[tuple[str, Path | None]]:
    """``(option, path)`` and ``(option's external data, file)`` for each data file the model at ``path``
    reads, for ``paths.check_outputs``; a file that cannot be read as a model lists only itself (loading it
    reports why later)."""
    if path is None or not os.path.isfile(path):  # never read a FIFO or device here
        return [(option, None if path is None else Path(path))]
    try:
        proto = onnx.load(os.fspath(path), load_external_data=False)
    except Exception:  # not a model at all: load_model says so
        return [(option, Path(path))]
    folder = Path(path).parent
    return [(option, Path(path))] + [(f"external data of {option}", folder / location)
                                     for location in sorted(external_files(proto)) if location]


def output_files(option: str, path: str | os.PathLike) -> list[tuple[str, Path]]:
    """``(option, path)`` and ``(data of option, data_path(path))``, the files ``save`` may write."""
    return [(option, Path(path)), (f"data of {option}", data_path(path))]


def _entry(tensor: onnx.TensorProto, key: str) -> str | None:
    return next((e.value for e in tensor.external_data if e.key == key), None)


def external_files(proto: onnx.ModelProto) -> set[str]:
    """The locations of the external data ``proto`` references (as written in it)."""
    return {_entry(t, "location") or "" for t in external_tensors(proto.graph)}


def total_bytes(proto: onnx.ModelProto) -> int:
    """Bytes of ``proto`` once every external tensor is inline (a tensor without a length counts 0)."""
    return proto.ByteSize() + sum(int(_entry(t, "length") or 0) for t in external_tensors(proto.graph))


def needs_file(proto: onnx.ModelProto) -> bool:
    """True when ``proto`` cannot be handed over as bytes: it references external data or is large."""
    return bool(external_files(proto)) or total_bytes(proto) > LARGE_BYTES


def _inline_bytes(proto: onnx.ModelProto) -> bytes:
    """``proto`` serialized with every external tensor read into it."""
    if not external_files(proto):
        return proto.SerializeToString()
    model = ir.from_proto(proto)
    ir.external_data.load_to_model(model)
    out = ir.to_proto(model)
    _refuse_stray_external(out, set())
    return out.SerializeToString()


def _write_pair(proto: onnx.ModelProto, model_file: Path, data_file: Path, location: str) -> None:
    """Write ``proto`` to ``model_file`` with its large tensors in ``data_file``, which the model names as
    ``location`` (relative to the folder the model will end up in)."""
    model = ir.from_proto(proto)
    ir.external_data.unload_from_model(model, data_file.parent, data_file.name,
                                       size_threshold_bytes=EXTERNAL_MIN_BYTES)
    out = ir.to_proto(model)
    _refuse_stray_external(out, {data_file.name})
    for tensor in external_tensors(out.graph):
        for entry in tensor.external_data:
            if entry.key == "location":
                entry.value = location
    model_file.write_bytes(out.SerializeToString())


def _refuse_stray_external(proto: onnx.ModelProto, allowed: set[str]) -> None:
    """UserError when a tensor of ``proto`` still reads external data other than ``allowed`` (onnx-ir moves
    initializers only; a node attribute's external tensor would be left pointing at the input)."""
    for tensor in external_tensors(proto.graph):
        if _entry(tensor, "location") not in allowed:
            raise UserError(f"tensor {tensor.name!r}: external data in a node attribute cannot be written; "
                            "store it as an initializer")


def _refuse_own_data(proto: onnx.ModelProto, target: Path) -> None:
    """UserError when ``target`` is a file whose data ``proto`` still reads (e.g. the input's weights)."""
    for location in external_files(proto):
        with contextlib.suppress(OSError):
            if os.path.samefile(location, target):
                raise UserError(f"{target} holds external data of the model being written; refusing to "
                                "overwrite it")


def save(proto: onnx.ModelProto, path: str | os.PathLike,
         companions: dict[str | os.PathLike, bytes] | None = None) -> list[Path]:
    """Write ``companions`` (e.g. the plan) and ``proto`` at ``path`` as one atomic step: all temporaries
    written and fsynced, then renamed (companions, then ``data_path(path)`` when the model is large, then
    ``path``). Returns the paths written, model last. A failure leaves no file created or changed."""
    path, companions = Path(path), dict(companions or {})
    files = model_files(proto, path)
    targets = [*map(Path, companions), *files]
    large = len(files) > 1  # files = [data, model]
    if large:
        _refuse_own_data(proto, files[0])
    with atomic_paths(*targets) as tmps:
        for tmp, content in zip(tmps, companions.values()):
            tmp.write_bytes(content)
        if large:
            _write_pair(proto, tmps[-1], tmps[-2], files[0].name)
        else:
            tmps[-1].write_bytes(_inline_bytes(proto))
    return targets


def model_files(proto: onnx.ModelProto, path: str | os.PathLike) -> list[Path]:
    """The files ``save`` writes for ``proto`` at ``path``: ``[data_path(path), path]`` when large, else
    ``[path]``."""
    path = Path(path)
    return [data_path(path), path] if total_bytes(proto) > LARGE_BYTES else [path]


def write(proto: onnx.ModelProto, path: Path) -> None:
    """``proto`` at ``path``, with ``data_path(path)`` when large; not atomic: for temporary folders."""
    if total_bytes(proto) > LARGE_BYTES:
        _write_pair(proto, path, data_path(path), data_path(path).name)
    else:
        path.write_bytes(_inline_bytes(proto))


@contextlib.contextmanager
def temporary_file(proto: onnx.ModelProto) -> Iterator[Path]:
    """``proto`` written to a temporary folder (``write``), removed afterwards; for tools that read a model
    by path (onnx.checker, ONNX Runtime)."""
    with tempfile.TemporaryDirectory(prefix="ttcompile-model-") as folder:
        path = Path(folder) / "model.onnx"
        write(proto, path)
        yield path
