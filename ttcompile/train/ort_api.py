"""Load onnxruntime-training's on-device training API (``api``, ``artifacts``, ``onnxblock``) without torch.

``onnxruntime-training-cpu`` 1.19.2's ``onnxruntime/training/__init__.py`` imports its ORTModule/FP16
helpers, which import torch, although the on-device API needs none of it. Where torch is missing, the
package is registered without running that ``__init__`` (its subpackages load normally from its path).
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
import types
from pathlib import Path

from ttcompile.errors import UserError, opt

MISSING = (f"{opt('backend')} ort needs onnxruntime-training, which is not installed: pip install "
           "'ttcompile[ort-training]' in its own environment (it replaces onnxruntime)")


def _register_package() -> None:
    """Make ``onnxruntime.training`` importable as a bare package (its ``__init__`` not run)."""
    import onnxruntime

    path = Path(onnxruntime.__file__).parent / "training"
    if not (path / "api" / "__init__.py").is_file():
        raise ImportError("onnxruntime has no training API")
    package = types.ModuleType("onnxruntime.training")
    package.__path__ = [str(path)]
    package.__package__ = "onnxruntime.training"
    sys.modules["onnxruntime.training"] = package


def load() -> types.SimpleNamespace:
    """``api``, ``artifacts`` and ``onnxblock`` of onnxruntime-training, or a UserError naming the extra."""
    try:
        if "onnxruntime.training" not in sys.modules:
            if importlib.util.find_spec("torch") is None:
                _register_package()
            else:
                importlib.import_module("onnxruntime.training")
        modules = {name: importlib.import_module(f"onnxruntime.training.{name}")
                   for name in ("api", "artifacts", "onnxblock")}
    except (ImportError, AttributeError):
        sys.modules.pop("onnxruntime.training", None)
        raise UserError(MISSING) from None
    return types.SimpleNamespace(**modules)
