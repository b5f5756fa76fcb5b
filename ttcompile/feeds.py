"""Feeding many samples to models that take few: split feeds into runs of the model's own (fixed) batch.

Real models often declare a fixed batch (``x: (1, 3, 48, 320)``, silero-vad's ``state: (2, 1, 128)``),
and ONNX Runtime refuses any other size. Given feeds holding ``N`` samples, the *sample axis* of an input
is the one axis where the feed's size differs from the input's fixed declared dim (axis 0, or an axis
declared 1); its declared dim ``b`` is the run's batch. Every input with such an axis must agree on
``N`` and ``b``; an input whose feed fits its declared shape (a scalar sample rate, or one state shared
by all samples) is passed whole to every run. The last run is padded by repeating its last sample. A
model with dynamic batch dims takes its feeds in one run.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnx

from ttcompile.errors import UserError
from ttcompile.protos import declared_shape, graph_inputs

MAX_BATCH = 1 << 16  # samples per ONNX Runtime run; larger batches only exhaust memory


def declared_dims(proto: onnx.ModelProto) -> dict[str, tuple[int | None, ...] | None]:
    """Graph input name -> declared dims (None per dynamic dim; None when the rank is unknown)."""
    return {inp.name: declared_shape(inp) for inp in graph_inputs(proto)}


def sample_axes(proto: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> tuple[int, int, dict[str, int]]:
    """``(N samples, run batch b, {input: sample axis})``; ``(1, 1, {})`` when the feeds fit as they are."""
    dims = declared_dims(proto)
    missing = sorted(set(dims) - set(feeds))
    if missing:
        raise UserError(f"no data for model input(s) {', '.join(missing)}")
    axes: dict[str, int] = {}
    sizes: set[tuple[int, int]] = set()
    for name, want in dims.items():
        got = np.shape(feeds[name])
        if want is None:
            continue
        if len(got) != len(want):
            raise UserError(f"input {name!r}: data of shape {got}, the model expects rank {len(want)} {want}")
        off = [i for i, (w, g) in enumerate(zip(want, got)) if w is not None and w != g]
        if len(off) > 1:
            raise UserError(f"input {name!r}: data of shape {got} differs from the model's {want} in several dims")
        if off and off[0] != 0 and want[off[0]] != 1:  # only axis 0 or a fixed batch of 1 holds samples
            raise UserError(f"input {name!r}: data of shape {got} does not fit the model's {_dims(want)}")
        if off:
            axes[name] = off[0]
            sizes.add((got[off[0]], want[off[0]]))
    if len(sizes) > 1:
        raise UserError("inputs disagree on the number of samples: "
                        + ", ".join(f"{n}: {np.shape(feeds[n])[a]}" for n, a in axes.items()))
    n, b = sizes.pop() if sizes else (1, 1)
    return n, b, axes


def _dims(dims: tuple[int | None, ...]) -> str:
    return "(" + ", ".join("?" if d is None else str(d) for d in dims) + ")"


def split_feeds(proto: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> Iterator[dict[str, np.ndarray]]:
    """Feeds for successive runs of at most the model's batch each (see the module docstring)."""
    n, b, axes = sample_axes(proto, feeds)
    if not axes:
        yield feeds
        return
    for start in range(0, n, b):
        run = dict(feeds)
        for name, axis in axes.items():
            idx = np.minimum(np.arange(start, start + b), n - 1)  # pad by repeating the last sample
            run[name] = np.take(feeds[name], idx, axis=axis)
        yield run


def load_named_feeds(path: str | Path, proto: onnx.ModelProto) -> dict[str, np.ndarray] | None:
    """An ``.npz`` whose arrays are named after *every* graph input, cast to each input's dtype; else None
    (also for a single input named ``x``: that is the ordinary data file, validated by ``load_npz``)."""
    from ttcompile.models.data import check_npz_sizes

    names = set(declared_dims(proto))
    if not str(path).endswith(".npz") or not Path(path).is_file() or names == {"x"}:
        return None
    check_npz_sizes(Path(path))
    try:
        with np.load(path, allow_pickle=False) as archive:
            if not names <= set(archive.files):
                return None
            arrays = {k: archive[k] for k in names}
    except (ValueError, OSError, EOFError) as exc:
        raise UserError(f"{path}: not an .npz file ({exc})") from exc
    types = {i.name: onnx.helper.tensor_dtype_to_np_dtype(i.type.tensor_type.elem_type)
             for i in proto.graph.input if i.name in names}
    for name, arr in arrays.items():
        if arr.dtype.kind not in "iuf" or (arr.dtype.kind == "f" and not np.isfinite(arr).all()):
            raise UserError(f"{path}: array {name!r} must be finite numbers, got dtype {arr.dtype}")
        if arr.size == 0:
            raise UserError(f"{path}: array {name!r} is empty (shape {arr.shape})")
        arrays[name] = arr.astype(types[name])
    return arrays
