"""ONNX Runtime: which package is installed, which execution providers it offers, and sessions."""

from __future__ import annotations

from ttcompile.errors import UserError

PROVIDERS = {"cpu": "CPUExecutionProvider", "cuda": "CUDAExecutionProvider"}


def require_onnxruntime():
    """Return the onnxruntime module, or fail with a message naming the extras to install."""
    try:
        import onnxruntime
    except ImportError as exc:
        raise UserError(
            "onnxruntime is not installed: install ttcompile with a runtime flavour, "
            "e.g. pip install 'ttcompile[cpu]' (or [gpu], or [ort-training])"
        ) from exc
    return onnxruntime


def provider_name(provider: str) -> str:
    """Map 'cpu'/'cuda' to the ORT provider name; refuse providers that are not installed."""
    ort = require_onnxruntime()
    key = provider.lower()
    if key not in PROVIDERS:
        raise UserError(f"unknown provider {provider!r}: choose one of {', '.join(PROVIDERS)}")
    name = PROVIDERS[key]
    if name not in ort.get_available_providers():
        raise UserError(
            f"provider {provider!r} ({name}) is not available in this onnxruntime build "
            f"(available: {', '.join(ort.get_available_providers())}); for CUDA install 'ttcompile[gpu]'"
        )
    return name


def ort_errors() -> tuple[type[Exception], ...]:
    """The exception classes onnxruntime raises when it refuses a model or a run."""
    from onnxruntime.capi import onnxruntime_pybind11_state as state

    return tuple(v for v in vars(state).values()
                 if isinstance(v, type) and issubclass(v, Exception) and v.__module__ == state.__name__)


def first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def make_session(model, provider: str = "cpu", threads: int | None = None, name: str | None = None):
    """Create an InferenceSession for a path, serialized bytes or a ModelProto on one provider: the one
    way ttcompile opens sessions. A proto that cannot travel as bytes (over 2 GiB, or reading external
    data, see ``ttcompile.modelfile``) is written to a temporary folder and opened from there.

    When onnxruntime refuses the model, a UserError names it (``name``, else the path) and says why.
    """
    if not isinstance(model, (str, bytes)):  # a ModelProto
        from ttcompile import modelfile  # not at import: the CLI loads this module before it handles Ctrl-C

        if not modelfile.needs_file(model):
            return make_session(model.SerializeToString(), provider, threads, name)
        with modelfile.temporary_file(model) as path:
            return make_session(str(path), provider, threads, name or "the model")
    ort = require_onnxruntime()
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    if threads:
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
    providers = [provider_name(provider)]
    try:
        return ort.InferenceSession(model, sess_options=opts, providers=providers)
    except (*ort_errors(), RuntimeError) as exc:
        label = name or (str(model) if isinstance(model, str) else "the model")
        raise UserError(f"{label}: onnxruntime ({providers[0]}) cannot run it: {first_line(exc)}") from None
