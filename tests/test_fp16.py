"""FP16 models end to end: layers found, decomposed in float64, chains emitted in float16, model stays FP16."""

from __future__ import annotations

import re
from pathlib import Path

import onnx
import pytest

from ttcompile.cli import main
from ttcompile.models.fp16 import to_fp16

LENET = Path(__file__).resolve().parents[1] / "models" / "lenet5_mnist.onnx"
FORMATS = ["tt", "tr", "tucker", "cp", "svd", "stt", "str", "sttu"]


@pytest.fixture(scope="module")
def lenet_fp16(tmp_path_factory):
    path = tmp_path_factory.mktemp("fp16") / "lenet5_fp16.onnx"
    onnx.save(to_fp16(onnx.load(LENET)), path)
    return path


def _compress(path, out, fmt, *rank, capsys) -> tuple[float, str]:
    assert main(["compress", str(path), "--format", fmt, *rank, "--quiet", "-o", str(out)]) == 0, fmt
    printed = capsys.readouterr().out
    return max(float(v) for v in re.findall(r"relative error (\S+) vs original", printed)), printed


def test_inspect_reports_fp16_weights(lenet_fp16, capsys):
    assert main(["inspect", str(lenet_fp16)]) == 0
    assert "weights: 4 float16" in capsys.readouterr().out


@pytest.mark.parametrize("fmt", FORMATS)
def test_fp16_chains_keep_the_model_fp16_and_match_the_float_rewrite(lenet_fp16, tmp_path, capsys, fmt):
    error, printed = _compress(lenet_fp16, tmp_path / "full.onnx", fmt, "--rank", "4096", "--force", capsys=capsys)
    assert "their chains are float16" in printed
    assert error < 2e-3, error  # fp16 rounding of the cores only (float16 eps = 9.8e-4)
    out = onnx.load(tmp_path / "full.onnx")
    floats = {t.data_type for t in out.graph.initializer} - {onnx.TensorProto.INT64}
    assert floats == {onnx.TensorProto.FLOAT16}
    assert out.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT16
    lossy16, _ = _compress(lenet_fp16, tmp_path / "h.onnx", fmt, "--ratio", "0.5", capsys=capsys)
    lossy32, _ = _compress(LENET, tmp_path / "f.onnx", fmt, "--ratio", "0.5", capsys=capsys)
    assert lossy16 < 1.02 * lossy32 + 2e-3, (lossy16, lossy32)  # no worse than the float32 rewrite
