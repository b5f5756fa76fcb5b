"""ttcompile: ONNX-to-ONNX compression of Gemm/MatMul/Conv layers with tensor decompositions.

The Python API (``ttcompile.api``): ``inspect``, ``analyze``, ``plan``, ``compress``, ``finetune``, ``bench``.
Its names are imported on first use (PEP 562), so ``import ttcompile.cli`` stays light: the command line
handles Ctrl-C before onnx, onnx-ir and numpy are loaded."""

from __future__ import annotations

import importlib

__version__ = "0.1.0"
_WHERE = {
    "Analysis": "ttcompile.analysis.lwiq", "BenchReport": "ttcompile.benchmark.bench",
    "Budget": "ttcompile.planning.budget", "BudgetInfeasible": "ttcompile.planning.budget",
    "CompressPass": "ttcompile.rewrite.compress", "CompressReport": "ttcompile.rewrite.pipeline",
    "Compressed": "ttcompile.rewrite.pipeline", "Finetuned": "ttcompile.api", "OptionError": "ttcompile.errors",
    "Plan": "ttcompile.planning.plan", "UserError": "ttcompile.errors", "VerificationError": "ttcompile.errors",
    **{name: "ttcompile.api" for name in ("analyze", "bench", "compress", "finetune", "inspect", "plan")},
}
__all__ = sorted(_WHERE)


def __getattr__(name: str):
    if name not in _WHERE:
        raise AttributeError(f"module 'ttcompile' has no attribute {name!r}")
    value = getattr(importlib.import_module(_WHERE[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_WHERE])
