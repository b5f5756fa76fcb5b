"""Export a torch image model to a clean ONNX graph for ttcompile.

Exporter choice (torch 2.13): the dynamo exporter (``torch.onnx.export(..., dynamo=True)``, built on
onnxscript, with its graph optimizer on) gives the cleanest graphs: weights as named initializers,
Linear as Gemm, Conv with its bias, no Identity/Constant chains; the option-A ResNet shortcut becomes
Slice + Pad. It emits opset 18 natively; a lower opset goes through a version down-conversion, which
works for the LeNets but not for Pad (ResNets), so the default is 18 and opset 17 is honoured only where
it converts. The TorchScript exporter (``dynamo=False``) emits opset 17 directly but turns ``F.pad``
into a Shape/ConstantOfShape/Concat/Transpose chain and adds Identity/Constant nodes, so it is not used.
"""

from __future__ import annotations

import copy
import logging
import os
import warnings
from pathlib import Path

import numpy as np
import onnx
import torch
from torch import nn
from torch.fx.experimental.optimization import fuse

from ttcompile.atomic import atomic_path

INPUT_NAME = "input"
OUTPUT_NAME = "logits"
COMPRESSIBLE = ("Conv", "Gemm", "MatMul")


def fold_batchnorm(model: nn.Module) -> nn.Module:
    """Return an eval-mode copy of ``model`` with every BatchNorm folded into the conv before it."""
    fused = fuse(copy.deepcopy(model).eval())
    left = [name for name, m in fused.named_modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if left:
        raise ValueError(f"BatchNorm not directly after a conv, cannot fold: {', '.join(left)}")
    return fused


def check_exported(proto: onnx.ModelProto, example_input: torch.Tensor, expected: np.ndarray,
                   rtol: float = 1e-4, atol: float = 1e-4) -> None:
    """Assert ``proto`` is valid, BatchNorm-free, has constant weights on every Conv/Gemm/MatMul,
    and that ONNX Runtime reproduces ``expected`` on ``example_input``."""
    import onnxruntime as ort

    onnx.checker.check_model(proto, full_check=True)
    graph = proto.graph
    ops = {n.op_type for n in graph.node}
    if "BatchNormalization" in ops:
        raise ValueError("exported graph still has BatchNormalization")
    weights = {init.name for init in graph.initializer}
    for node in graph.node:
        if node.op_type in COMPRESSIBLE and node.input[1] not in weights:
            raise ValueError(f"{node.op_type} node {node.name} has a non-initializer weight {node.input[1]}")
    session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    (got,) = session.run(None, {INPUT_NAME: example_input.numpy()})
    scale = float(np.abs(expected).max()) or 1.0
    np.testing.assert_allclose(got, expected, rtol=rtol, atol=atol * scale,
                               err_msg="ONNX Runtime output differs from torch")


def export_onnx(model: nn.Module, example_input: torch.Tensor, path: str | os.PathLike,
                opset: int = 18) -> Path:
    """Export ``model`` (eval mode, BatchNorm folded) to ``path`` and verify it; return the path.

    The graph has one input ``input`` shaped like ``example_input`` with a dynamic batch dim 0 and one
    output ``logits``. The file is written only after ``check_exported`` passes, atomically.
    """
    if opset < 17:
        raise ValueError(f"opset {opset} is not supported: use 17 or newer (18 is native)")
    model = copy.deepcopy(model).eval()
    example_input = example_input.detach().float()
    with torch.no_grad():
        expected = model(example_input).numpy()
    folded = fold_batchnorm(model)
    logging.getLogger("torch.onnx._internal.exporter._registration").setLevel(logging.ERROR)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch-internal deprecation notices
        program = torch.onnx.export(
            folded, (example_input,), dynamo=True, opset_version=opset, verbose=False,
            input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
            dynamic_shapes=({0: torch.export.Dim("batch")},),
        )
    proto = program.model_proto
    got = next(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx"))
    if got != opset:
        raise ValueError(f"could not export at opset {opset} (the exporter produced opset {got}); use opset={got}")
    check_exported(proto, example_input, expected)
    path = Path(path)
    with atomic_path(path, parents=True) as tmp:
        onnx.save(proto, tmp)
    return path
