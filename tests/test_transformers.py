"""Transformer encoders exported by both torch exporters: every format compresses them, exact at full rank."""

from __future__ import annotations

import json
import re

import onnx
import pytest
import torch

from ttcompile.cli import main
from ttcompile.graph import load_model
from ttcompile.layers import find_layers
from ttcompile.models.transformer import PlainEncoder, TinyBert, export_encoder

FORMATS = ["tt", "tr", "tucker", "cp", "svd", "stt", "str", "sttu"]
MODELS = {"bert": TinyBert, "encoder": PlainEncoder}


@pytest.fixture(scope="module", params=[(m, e) for m in MODELS for e in ("dynamo", "torchscript")],
                ids=lambda p: f"{p[0]}-{p[1]}")
def exported(request, tmp_path_factory):
    name, exporter = request.param
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("tf") / f"{name}_{exporter}.onnx"
    return export_encoder(MODELS[name](), path, dynamo=exporter == "dynamo")


def _errors(out: str) -> list[float]:
    return [float(v) for v in re.findall(r"relative error (\S+) vs original", out)]


def test_every_linear_is_a_matmul_layer(exported):
    layers = [ly for ly in find_layers(load_model(exported), {"ids": (1, 8)}) if ly.compressible]
    # 2 blocks x (q, k, v, out, ffn1, ffn2); nn.MultiheadAttention packs q/k/v into one (32, 96) weight
    want = 12 if "bert" in exported.name else 8
    assert len(layers) == want
    assert all(ly.kind in ("matmul", "gemm") for ly in layers)


def test_full_rank_is_exact_in_every_format_and_the_plan_round_trips(exported, tmp_path, capsys):
    for fmt in FORMATS:
        out = tmp_path / f"{fmt}.onnx"
        rc = main(["compress", str(exported), "--format", fmt, "--rank", "4096", "--force", "--quiet",
                   "--input-shape", "ids=1x8", "-o", str(out)])
        printed = capsys.readouterr().out
        assert rc == 0, fmt
        errors = _errors(printed)
        assert errors and max(errors) < 1e-4, (fmt, errors)
        plan = json.loads(out.with_suffix(".plan.json").read_text())
        assert sum(lp["action"] == "compress" for lp in plan["layers"]) >= 8, fmt
    again = tmp_path / "again.onnx"
    assert main(["compress", str(exported), "--plan", str(tmp_path / "svd.plan.json"), "--quiet",
                 "--input-shape", "ids=1x8", "-o", str(again)]) == 0
    assert max(_errors(capsys.readouterr().out)) < 1e-4


def test_lossy_rank_runs_and_is_lossy(exported, tmp_path, capsys):
    rc = main(["compress", str(exported), "--format", "tt", "--ratio", "0.5", "--allow-more-macs", "--quiet",
               "--input-shape", "ids=1x8", "-o", str(tmp_path / "o.onnx")])
    assert rc == 0
    assert 1e-4 < max(_errors(capsys.readouterr().out)) < 2


def test_torchscript_identity_copies_of_cloned_layers_are_separate_weights(tmp_path):
    torch.manual_seed(0)
    path = export_encoder(PlainEncoder(distinct=False), tmp_path / "clones.onnx", dynamo=False)
    assert any(n.op_type == "Identity" for n in onnx.load(path).graph.node)
    layers = find_layers(load_model(path), {"ids": (1, 8)})
    assert sum(ly.compressible for ly in layers) == 8, [(ly.name, ly.skip) for ly in layers]
