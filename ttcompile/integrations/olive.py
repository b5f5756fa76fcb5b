"""A Microsoft Olive pass that compresses an ONNX model with ``ttcompile.compress``.

Olive finds third-party passes through a *package config* (``olive run --package-config P.json``, or
``olive.workflows.run(config, package_config=...)``) that maps the pass type to its module path::

    {"passes": {"TTCompress": {"module_path": "ttcompile.integrations.olive.TTCompress"}}}

``package_config()`` returns Olive's own package config with this entry added, so a workflow can mix
``TTCompress`` with Olive's passes. A workflow then names the pass by type, with the options of
``ttcompile.compress``::

    "passes": {"compress": {"type": "TTCompress", "format": "tt", "budget": "params=0.1", "calib": "calib.npz"}}

The output model is written with its plan beside it (``model.onnx`` + ``model.plan.json``). Importing
this module needs olive-ai (the ``[olive]`` extra); importing ``ttcompile`` does not.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from olive.hardware.accelerator import AcceleratorSpec
from olive.model import ONNXModelHandler
from olive.model.utils import resolve_onnx_path
from olive.package_config import OlivePackageConfig
from olive.passes import Pass
from olive.passes.pass_config import BasePassConfig, PassConfigParam

import ttcompile

logger = logging.getLogger(__name__)

PASS_TYPE = "TTCompress"
PASS_MODULE = {"module_path": f"{__name__}.{PASS_TYPE}", "supported_providers": ["*"],
               "supported_accelerators": ["*"], "supported_precisions": ["*"]}
# the ttcompile.compress options a workflow may set: name -> (type, description)
OPTIONS: dict[str, tuple[object, str]] = {
    "ratio": (float | None, "uniform parameter ratio per layer, e.g. 0.1 (no budget needed)"),
    "ranks": (int | dict[str, list[int]] | None, "one rank for every layer, or {layer: [r, ...]}"),
    "budget": (str | dict[str, float] | None, "whole-model target, e.g. 'params=0.1' or {'macs': 0.5}"),
    "calib": (str | None, "calibration data (.npz path or dataset spec such as 'mnist:val') for the "
              "allocator, the data-aware init and recovery"),
    "allocator": (str | None, "how a budget is spent: lwiq, uniform, energy, greedy, datafree"),
    "recover": (str | None, "with calib: none, layer or model"),
    "max_error": (float | None, "refuse the result when its output error exceeds this (default: predicted)"),
}


class TTCompress(Pass):
    """Rewrite the Gemm/MatMul/Conv layers of an ONNX model into tensor-decomposed chains (ttcompile)."""

    @classmethod
    def _default_config(cls, accelerator_spec: AcceleratorSpec) -> dict[str, PassConfigParam]:
        return {
            "format": PassConfigParam(type_=str, default_value="tt",
                                      description="tt, tr, tucker, cp, svd, stt, str, sttu or auto"),
            **{name: PassConfigParam(type_=type_, default_value=None, description=text)
               for name, (type_, text) in OPTIONS.items()},
        }

    def _run_for_config(self, model: ONNXModelHandler, config: type[BasePassConfig],
                        output_model_path: str) -> ONNXModelHandler:
        """``ttcompile.compress(model file, **options)`` saved as ``output_model_path``'s ONNX file + plan."""
        options = {"format": config.format, **{name: getattr(config, name) for name in OPTIONS}}
        options = {k: v for k, v in options.items() if v is not None}
        out = Path(resolve_onnx_path(output_model_path))  # DIR/model.onnx, plan DIR/model.plan.json
        out.parent.mkdir(parents=True, exist_ok=True)
        result = ttcompile.compress(model.model_path, **options)
        result.save(out)
        logger.info("%s: compressed with %s into %s", model.model_path, options, out)
        return ONNXModelHandler(model_path=str(out.parent), onnx_file_name=out.name,
                                inference_settings=model.inference_settings)


def package_config() -> dict:
    """Olive's default package config (its own passes, as in its olive_config.json) with ``TTCompress`` added,
    for ``olive.workflows.run(config, package_config=package_config())``."""
    config = json.loads(Path(OlivePackageConfig.get_default_config_path()).read_text())
    config["passes"][PASS_TYPE] = PASS_MODULE
    return config
