"""Check a rewritten model: full onnx.checker pass, ONNX Runtime session, outputs against the original."""

from __future__ import annotations

from math import prod

import numpy as np
import onnx

from ttcompile import modelfile
from ttcompile.errors import UserError, opt
from ttcompile.feeds import split_feeds
from ttcompile.protos import graph_inputs
from ttcompile.runtime import first_line, make_session, ort_errors
from ttcompile.shapes import fix_input_dims

MAX_INPUT_BYTES = 1 << 30  # random comparison inputs, per graph input
_NP_TYPES = {onnx.TensorProto.FLOAT: np.float32, onnx.TensorProto.DOUBLE: np.float64,
             onnx.TensorProto.FLOAT16: np.float16, onnx.TensorProto.INT64: np.int64, onnx.TensorProto.INT32: np.int32}


def check_model(proto: onnx.ModelProto) -> None:
    """Full checker (incl. strict shape inference), by path for a proto that cannot travel as bytes;
    raises UserError with the first message line."""
    try:
        if modelfile.needs_file(proto):
            with modelfile.temporary_file(proto) as path:
                onnx.checker.check_model(str(path), full_check=True)
        else:
            onnx.checker.check_model(proto, full_check=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as exc:
        raise UserError(f"rewritten model fails onnx.checker: {str(exc).strip().splitlines()[0]}") from exc


def random_inputs(
    proto: onnx.ModelProto, batch: int = 4, seed: int = 0, input_shapes: dict | None = None
) -> dict[str, np.ndarray]:
    """Seeded standard-normal inputs of each graph input's shape (dynamic batch -> ``batch``)."""
    fixed = fix_input_dims(proto, batch, input_shapes)
    rng = np.random.default_rng(seed)
    feeds = {}
    for inp in graph_inputs(fixed):
        tt = inp.type.tensor_type
        shape = [d.dim_value for d in tt.shape.dim]
        dtype = _NP_TYPES.get(tt.elem_type)
        if dtype is None:
            raise UserError(f"input {inp.name!r} has an element type random inputs cannot fill; pass {opt('data')}")
        size = prod(shape) * np.dtype(dtype).itemsize
        if size > MAX_INPUT_BYTES:
            raise UserError(f"input {inp.name!r} of shape {'x'.join(map(str, shape))} would take {size / 2**30:.3g} "
                            f"GiB (limit {MAX_INPUT_BYTES / 2**30:g} GiB); give a smaller shape with "
                            f"{opt('input_shapes')}")
        feeds[inp.name] = rng.standard_normal(shape).astype(dtype)
    return feeds


def run(proto: onnx.ModelProto, feeds: dict[str, np.ndarray], provider: str = "cpu",
        name: str = "the model") -> dict[str, np.ndarray]:
    """Run one session (created and released here, so sessions never overlap); ORT refusing the
    model or the inputs is a UserError naming ``name``."""
    (out,) = run_split(proto, [feeds], provider, name)
    return out


def run_split(proto: onnx.ModelProto, feed_list, provider: str = "cpu",
              name: str = "the model") -> list[dict[str, np.ndarray]]:
    """Outputs of one session for each feed dict of ``feed_list`` (e.g. ``feeds.split_feeds``)."""
    sess = make_session(proto, provider, name=name)
    names = [o.name for o in sess.get_outputs()]
    try:
        outs = [dict(zip(names, sess.run(names, feeds))) for feeds in feed_list]
    except (*ort_errors(), RuntimeError) as exc:
        raise UserError(f"{name}: onnxruntime cannot run it on the comparison inputs: {first_line(exc)}") from None
    del sess
    return outs


def relative_errors(
    original: onnx.ModelProto, compressed: onnx.ModelProto, feeds: dict[str, np.ndarray],
    names: tuple[str, str] = ("the original model", "the compressed model"),
) -> dict[str, float]:
    """||y - y_ref|| / ||y_ref|| per graph output over all samples of ``feeds``, in runs of the model's
    batch (not finite when the compressed output is not)."""
    return compare_outputs(original, compressed, feeds, names)[0]


def compare_outputs(
    original: onnx.ModelProto, compressed: onnx.ModelProto, feeds: dict[str, np.ndarray],
    names: tuple[str, str] = ("the original model", "the compressed model"),
) -> tuple[dict[str, float], dict[str, str]]:
    """``relative_errors``, and the outputs that comparison cannot check (``constant_outputs``)."""
    try:
        ref, got = [run_split(p, split_feeds(original, feeds), name=n) for p, n in zip((original, compressed), names)]
    except UserError as exc:
        raise UserError(f"{exc}; so the output comparison cannot run (nothing written)") from None
    if not all(np.isfinite(v).all() for r in ref for v in r.values()):
        raise UserError(f"{names[0]}: its outputs are not finite on the comparison inputs; nothing to compare with")
    return run_errors(ref, got), constant_outputs(ref)


def constant_outputs(ref: list[dict[str, np.ndarray]]) -> dict[str, str]:
    """Floating-point outputs whose original values are one value over all runs (all zero, or one value in
    more than one element), so that a wrong rewrite of the layers before them goes unseen; name -> why."""
    out = {}
    for name in ref[0] if ref else ():
        y = np.concatenate([r[name].ravel() for r in ref])
        if not np.issubdtype(y.dtype, np.floating):  # labels, masks: one class for every input is an answer
            continue
        if y.size and not np.any(y):
            out[name] = "original outputs are all zero on these inputs"
        elif y.size > 1 and np.all(y == y[0]):
            out[name] = f"original outputs are all {y[0]:.6g} on these inputs"
    return out


def run_errors(ref: list[dict[str, np.ndarray]], got: list[dict[str, np.ndarray]]) -> dict[str, float]:
    """Relative error per output name over matching lists of runs (``run_split`` results)."""
    diff: dict[str, float] = {}
    norm: dict[str, float] = {}
    for r, g in zip(ref, got):
        for name, y in r.items():
            y = y.astype(np.float64)
            diff[name] = diff.get(name, 0.0) + float(np.sum((g[name].astype(np.float64) - y) ** 2))
            norm[name] = norm.get(name, 0.0) + float(np.sum(y ** 2))
    return {name: float(np.sqrt(diff[name]) / max(np.sqrt(norm[name]), 1e-30)) for name in diff}
