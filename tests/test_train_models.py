"""The torch executor on real graphs: TT-compressed layers (every realization the pass emits), the
exported LeNet-5 / LeNet-300-100 / ResNet-20 and their compressed forms, against ONNX Runtime."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest

torch = pytest.importorskip("torch")

from ttcompile.cli import main  # noqa: E402
from ttcompile.graph import load_model  # noqa: E402
from ttcompile.layers import find_layers  # noqa: E402
from ttcompile.passes import get_format  # noqa: E402
from ttcompile.rewrite.verify import random_inputs  # noqa: E402
from ttcompile.train.executor import OnnxModule, write_back  # noqa: E402

from graphs import conv_model, gemm_model, matmul_model  # noqa: E402
from rewrite_check import compress_one  # noqa: E402
from train_helpers import run_ort  # noqa: E402

MODELS_DIR = Path(__file__).resolve().parents[1] / "models"


def assert_parity(proto: onnx.ModelProto, inputs: dict[str, np.ndarray], tol: float = 1e-5) -> OnnxModule:
    """Torch executor output equals ORT's (relative to the output scale); returns the module."""
    module = OnnxModule(proto).eval()
    with torch.no_grad():
        got = module(*[torch.from_numpy(v) for v in inputs.values()])
    (expected,) = run_ort(proto, inputs)
    np.testing.assert_allclose(got.numpy(), expected, rtol=tol, atol=tol * max(1.0, np.abs(expected).max()))
    return module


def assert_trainable_round_trip(proto: onnx.ModelProto, inputs: dict[str, np.ndarray]) -> None:
    """One SGD step reaches every trainable initializer; the written-back model still matches ORT."""
    module = OnnxModule(proto)
    x = [torch.from_numpy(v) for v in inputs.values()]
    module(*x).square().mean().backward()
    trainable = {n: p for n, p in module.onnx_parameters().items() if p.requires_grad}
    assert trainable
    with torch.no_grad():
        for name, p in trainable.items():
            assert p.grad is not None and torch.isfinite(p.grad).all(), name
            p -= 0.01 * p.grad
    assert_parity(write_back(module, proto), inputs)


def realizations(tmp_path: Path, proto: onnx.ModelProto) -> list[dict]:
    path = tmp_path / "probe.onnx"
    onnx.save(proto, path)
    (layer,) = [lay for lay in find_layers(load_model(path)) if lay.compressible]
    fmt = get_format("tt")
    return fmt.options(layer, fmt.default_modes(layer))


SINGLE_LAYERS = {
    "gemm": gemm_model(), "gemm_3modes": gemm_model(n_in=120, n_out=64),
    "gemm_transA_row_bias": gemm_model(trans_a=1, trans_b=0, alpha=2.0, beta=0.25, bias="row"),
    "matmul_3d": matmul_model(lead=("N", 5)), "matmul_4d": matmul_model(lead=("N", 2, 3)),
    "conv_stride_pad": conv_model(strides=[2, 2], pads=[1, 0, 2, 1]),
    "conv_same_upper": conv_model(auto_pad="SAME_UPPER", strides=[2, 2]),
    "conv1d": conv_model(kernel=(3,), spatial=(11,), strides=[2], pads=[1, 1]),
    "conv_pointwise": conv_model(kernel=(1, 1)),
}


@pytest.mark.parametrize("name", SINGLE_LAYERS)
def test_tt_compressed_layer_every_realization(tmp_path, name):
    proto = SINGLE_LAYERS[name]
    inputs = random_inputs(proto, batch=3)
    for options in realizations(tmp_path, proto):
        out, _, _ = compress_one(tmp_path, proto, "tt", 3, options=options)
        assert_parity(out, inputs)
    assert_trainable_round_trip(out, inputs)


def exported(tmp_path_factory, name: str) -> Path:
    """A randomly initialised model from ttcompile.models exported to ONNX (BatchNorm given real stats)."""
    from ttcompile.models.export import export_onnx
    from ttcompile.models.lenet import LeNet5, LeNet300100
    from ttcompile.models.resnet import resnet20

    torch.manual_seed(0)
    model, shape = {"lenet5": (LeNet5(), (1, 28, 28)), "lenet300": (LeNet300100(), (784,)),
                    "resnet20": (resnet20(), (1, 28, 28))}[name]
    with torch.no_grad():
        model.train()(torch.rand(16, *shape))  # BatchNorm running statistics away from (0, 1)
    return export_onnx(model, torch.rand(2, *shape), tmp_path_factory.mktemp(name) / f"{name}.onnx")


@pytest.mark.slow
@pytest.mark.parametrize("name", ["lenet5", "lenet300", "resnet20"])
def test_exported_model_and_its_tt_compression(tmp_path_factory, name):
    path = exported(tmp_path_factory, name)
    proto = onnx.load(path)
    inputs = random_inputs(proto, batch=4)
    assert_parity(proto, inputs)
    assert_trainable_round_trip(proto, inputs)
    out = path.with_name(f"{name}_tt.onnx")
    assert main(["compress", str(path), "-o", str(out), "--format", "tt", "--rank", "4", "--force", "--quiet"]) == 0
    compressed = onnx.load(out)
    assert_parity(compressed, inputs)
    assert_trainable_round_trip(compressed, inputs)


@pytest.mark.parametrize("path", sorted(MODELS_DIR.glob("*.onnx")), ids=lambda p: p.name)
def test_shipped_models(path):
    proto = onnx.load(path)
    inputs = random_inputs(proto, batch=4)
    assert_parity(proto, inputs)


LENET5 = MODELS_DIR / "lenet5_mnist.onnx"


@pytest.mark.slow
@pytest.mark.skipif(not LENET5.exists(), reason="needs the trained models/lenet5_mnist.onnx")
def test_finetune_recovers_accuracy_of_compressed_lenet5(tmp_path):
    from ttcompile.models.data import Dataset, load_dataset
    from ttcompile.train.finetune import finetune

    out = tmp_path / "lenet5_tt.onnx"
    assert main(["compress", str(LENET5), "-o", str(out), "--format", "tt", "--rank", "2", "--force",
                 "--quiet"]) == 0
    train, val = load_dataset("mnist:train"), load_dataset("mnist:val")
    train = Dataset(train.x[:8000], train.y[:8000], "mnist:train[:8000]")
    val = Dataset(val.x[:2000], val.y[:2000], "mnist:val[:2000]")
    tuned, history = finetune(onnx.load(out), onnx.load(LENET5), train, val, epochs=2, lr=2e-3,
                              progress=False, threads=1)
    best = history.epochs[history.best_epoch - 1].val
    assert best > history.initial_val + 0.05
    onnx.checker.check_model(tuned, full_check=True)
    accuracy = (run_ort(tuned, {"input": val.x})[0].argmax(1) == val.y).mean()
    assert accuracy == pytest.approx(best)


ALL_FORMATS = ["tt", "tr", "tucker", "cp", "svd", "stt", "str", "sttu"]


@pytest.mark.parametrize("fmt", ALL_FORMATS)
@pytest.mark.parametrize("name", ["gemm_transA_row_bias", "matmul_3d", "conv_stride_pad", "conv1d"])
def test_every_format_runs_in_torch_like_ort(tmp_path, fmt, name):
    """Parity and a trainable round trip for each format's emitted chain (rank 4, so nothing is exact)."""
    proto = SINGLE_LAYERS[name]
    out, _, _ = compress_one(tmp_path, proto, fmt, 4)
    inputs = random_inputs(proto, batch=3)
    assert_parity(out, inputs)
    assert_trainable_round_trip(out, inputs)


@pytest.mark.slow
@pytest.mark.parametrize("fmt", ALL_FORMATS)
@pytest.mark.parametrize("path", sorted(MODELS_DIR.glob("*.onnx")), ids=lambda p: p.name)
def test_every_format_of_shipped_models(tmp_path, path, fmt):
    out = tmp_path / f"{fmt}.onnx"
    assert main(["compress", str(path), "-o", str(out), "--format", fmt, "--ratio", "0.3", "--force",
                 "--allow-more-macs", "--quiet"]) == 0
    compressed = onnx.load(out)
    assert_parity(compressed, random_inputs(compressed, batch=2))
