"""Export torchvision architectures to ONNX with both torch exporters, for ``benchmarks/torchvision_exports.py``.

Runs in its own venv (torch 2.14.1 + torchvision 0.29.1 + onnx + onnxscript; not the repo's .venv):

    python3 -m venv /work/venvs/tv
    /work/venvs/tv/bin/pip install -q torch==2.14.1 torchvision==0.29.1 onnx onnxscript
    OMP_NUM_THREADS=1 /work/venvs/tv/bin/python benchmarks/tv_export.py [--models a,b] [--out DIR]

There is no network, so no pretrained weights: each architecture keeps torchvision's random init (seed 0),
in eval mode, except that a zero-initialised last layer (ViT's ``heads.head``) is re-drawn from N(0, 0.02)
(otherwise every output is zero and a comparison checks nothing). Each model goes through
``torch.onnx.export(dynamo=False)`` (TorchScript, opset 17) and ``dynamo=True`` (opset 18), input
1x3xSxS (S = 96 where the architecture allows, 224 for ViT), fixed batch 1. Files go to DIR (default
``$TTCOMPILE_CACHE/tv`` or ``~/.cache/ttcompile/tv``) with ``manifest.json``: per export its file, SHA-256,
input shape, opset, exporter, seconds, or the exporter's error (an export failure, not ttcompile's).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import traceback
from pathlib import Path

import torch
import torchvision

sys.path.insert(0, str(Path(__file__).resolve().parent))

from zoo import cache_dir, sha256  # noqa: E402  (numpy + onnx only)

MODELS = {"resnet18": 96, "mobilenet_v3_small": 96, "squeezenet1_1": 96, "efficientnet_b0": 96,
          "regnet_x_400mf": 96, "vit_b_16": 224}
EXPORTERS = {"torchscript": (False, 17), "dynamo": (True, 18)}


def build(name: str) -> torch.nn.Module:
    """torchvision's ``name`` at its random init (seed 0), eval mode, no all-zero last Linear."""
    torch.manual_seed(0)
    model = torchvision.models.get_model(name, weights=None).eval()
    last = [m for m in model.modules() if isinstance(m, torch.nn.Linear)][-1:]
    for lin in last:
        if not lin.weight.any():
            torch.nn.init.normal_(lin.weight, std=0.02)
            torch.nn.init.normal_(lin.bias, std=0.02)
    return model


def export(model: torch.nn.Module, size: int, dynamo: bool, opset: int, path: Path) -> None:
    x = torch.randn(1, 3, size, size, generator=torch.Generator().manual_seed(1))
    if dynamo:
        with torch.no_grad():
            torch.onnx.export(model, (x,), str(path), dynamo=True, opset_version=opset, external_data=False)
        return
    torch.onnx.export(model, (x,), str(path), dynamo=False, opset_version=opset, input_names=["input"],
                      output_names=["logits"])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", default=",".join(MODELS))
    p.add_argument("--out", type=Path, default=cache_dir() / "tv")
    args = p.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(1)
    # the TorchScript exporter cannot export nn.MultiheadAttention's fused fast path (no_grad + eval)
    torch.backends.mha.set_fastpath_enabled(False)
    entries = []
    for name in args.models.split(","):
        model = build(name)
        for exporter, (dynamo, opset) in EXPORTERS.items():
            path = args.out / f"{name}_{exporter}.onnx"
            entry = {"model": name, "exporter": exporter, "opset": opset, "input_shape": [1, 3, *[MODELS[name]] * 2]}
            t0 = time.perf_counter()
            try:
                export(model, MODELS[name], dynamo, opset, path)
                entry.update(file=path.name, sha256=sha256(path), bytes=path.stat().st_size)
            except Exception as exc:  # noqa: BLE001 - an exporter failure is recorded, not ours to fix
                entry["error"] = f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}"
                entry["traceback_tail"] = traceback.format_exc().strip().splitlines()[-3:]
                path.unlink(missing_ok=True)
            entry["seconds"] = round(time.perf_counter() - t0, 1)
            print(json.dumps({k: v for k, v in entry.items() if k != "traceback_tail"}), flush=True)
            entries.append(entry)
    manifest = {"torch": torch.__version__, "torchvision": torchvision.__version__, "seed": 0,
                "exports": entries}
    (args.out / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
