"""Trainers: run ONNX graphs with torch to fine-tune their initializers (needs the ``[train]`` extra)."""

from ttcompile.errors import UserError

try:
    import torch  # noqa: F401
except ImportError as exc:
    raise UserError("fine-tuning needs torch: install ttcompile with pip install 'ttcompile[train]'") from exc
