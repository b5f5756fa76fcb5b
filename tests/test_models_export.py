"""Model zoo and ONNX export: architecture details, BatchNorm folding, ORT parity, dynamic batch."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from torch import nn

from ttcompile.models.export import export_onnx, fold_batchnorm
from ttcompile.models.lenet import LeNet5, LeNet300100
from ttcompile.models.resnet import BasicBlock, resnet, resnet20, resnet32, resnet56

CASES = {
    "lenet5": (LeNet5, (1, 28, 28)),
    "lenet300": (LeNet300100, (1, 28, 28)),
    "resnet20_mnist": (resnet20, (1, 28, 28)),
    "resnet20_rgb_odd": (lambda: resnet20(in_channels=3, n_classes=7, mean=(0.5, 0.4, 0.3),
                                          std=(0.2, 0.25, 0.3)), (3, 23, 17)),
}


def randomize_batchnorm(model: nn.Module, seed: int = 0) -> nn.Module:
    """Give every BatchNorm non-trivial statistics and affine terms, so folding is really tested."""
    gen = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            c = m.num_features
            m.running_mean.copy_(torch.rand(c, generator=gen) - 0.5)
            m.running_var.copy_(torch.rand(c, generator=gen) + 0.5)
            m.weight.data.copy_(torch.rand(c, generator=gen) + 0.5)
            m.bias.data.copy_(torch.rand(c, generator=gen) - 0.5)
    return model


@pytest.fixture(scope="module", params=sorted(CASES))
def exported(request, tmp_path_factory):
    build, sample_shape = CASES[request.param]
    torch.manual_seed(0)
    model = randomize_batchnorm(build()).eval()
    path = tmp_path_factory.mktemp(request.param) / "model.onnx"
    export_onnx(model, torch.rand(2, *sample_shape), path)
    return model, sample_shape, path


def test_graph_is_clean(exported):
    model, sample_shape, path = exported
    proto = onnx.load(path)
    ops = [n.op_type for n in proto.graph.node]
    assert "BatchNormalization" not in ops and "Identity" not in ops and "Constant" not in ops
    assert proto.opset_import[0].version >= 17
    n_convs = sum(isinstance(m, nn.Conv2d) for m in model.modules())
    n_linears = sum(isinstance(m, nn.Linear) for m in model.modules())
    assert ops.count("Conv") == n_convs and ops.count("Gemm") == n_linears
    weights = {init.name: init for init in proto.graph.initializer}
    for node in proto.graph.node:
        if node.op_type in ("Conv", "Gemm"):
            assert node.input[1] in weights and len(node.input) == 3, node.name  # folded BN gives a bias
    params = sum(p.numel() for name, p in model.named_parameters() if "bn" not in name)
    conv_bias = sum(m.out_channels for m in model.modules() if isinstance(m, nn.Conv2d) and m.bias is None)
    stored = sum(int(np.prod(weights[n.input[i]].dims)) for n in proto.graph.node
                 if n.op_type in ("Conv", "Gemm") for i in (1, 2))
    assert stored == params + conv_bias
    (inp,) = proto.graph.input
    dims = inp.type.tensor_type.shape.dim
    assert inp.name == "input" and dims[0].dim_param and [d.dim_value for d in dims[1:]] == list(sample_shape)


@pytest.mark.parametrize("batch", [1, 5])
def test_onnx_runtime_matches_torch(exported, batch):
    model, sample_shape, path = exported
    x = torch.rand(batch, *sample_shape, generator=torch.Generator().manual_seed(batch))
    with torch.no_grad():
        expected = model(x).numpy()
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (got,) = session.run(None, {"input": x.numpy()})
    assert got.shape == expected.shape
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4 * np.abs(expected).max())


def test_fold_batchnorm_keeps_outputs_and_leaves_original_alone():
    model = randomize_batchnorm(resnet20()).eval()
    folded = fold_batchnorm(model)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in folded.modules())
    assert any(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    x = torch.rand(3, 1, 28, 28)
    with torch.no_grad():
        torch.testing.assert_close(folded(x), model(x), rtol=1e-4, atol=1e-5)


def test_unfoldable_batchnorm_is_refused_and_nothing_written(tmp_path):
    model = nn.Sequential(nn.BatchNorm2d(1), nn.Conv2d(1, 2, 3), nn.Flatten(), nn.Linear(2 * 6 * 6, 3))
    path = tmp_path / "bad.onnx"
    with pytest.raises(ValueError, match="BatchNorm not directly after a conv"):
        export_onnx(model, torch.rand(2, 1, 8, 8), path)
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(ValueError, match="opset 16 is not supported"):
        export_onnx(LeNet300100(), torch.rand(2, 1, 28, 28), path, opset=16)


def test_opset_17_where_it_converts(tmp_path):
    path = export_onnx(LeNet300100(), torch.rand(2, 1, 28, 28), tmp_path / "mlp17.onnx", opset=17)
    assert onnx.load(path).opset_import[0].version == 17
    with pytest.raises(ValueError, match="could not export at opset 17 .* use opset=18"):
        export_onnx(resnet20(), torch.rand(2, 1, 28, 28), tmp_path / "r17.onnx", opset=17)
    assert not (tmp_path / "r17.onnx").exists()


def test_lenet_shapes():
    x = torch.rand(4, 1, 28, 28)
    assert LeNet5()(x).shape == (4, 10)
    assert [m.out_channels for m in LeNet5().modules() if isinstance(m, nn.Conv2d)] == [20, 50]
    assert [(m.in_features, m.out_features) for m in LeNet5().modules() if isinstance(m, nn.Linear)] == [
        (1250, 320), (320, 10)]
    assert sum(p.numel() for p in LeNet5().parameters()) == 429_100
    mlp = LeNet300100()
    assert sum(p.numel() for p in mlp.parameters()) == 266_610
    torch.testing.assert_close(mlp(x), mlp(x.reshape(4, 784)))


def test_normalisation_is_inside_the_model():
    model = LeNet300100().eval()
    first = model.fc1
    x = torch.rand(2, 1, 28, 28)
    normalised = (x.reshape(2, 784) - 0.1307) / 0.3081
    torch.testing.assert_close(first(normalised), first(model.normalize(x).reshape(2, 784)))


def test_resnet_depths_and_parameter_counts():
    # CIFAR-10 counts of He et al. / akamaster: 0.27M, 0.46M, 0.85M
    counts = [sum(p.numel() for p in f(in_channels=3).parameters()) for f in (resnet20, resnet32, resnet56)]
    assert counts == [269_722, 464_154, 853_018]
    assert sum(isinstance(m, BasicBlock) for m in resnet56().modules()) == 27
    with pytest.raises(ValueError, match="6n \\+ 2"):
        resnet(21)


def test_option_a_shortcut_subsamples_and_zero_pads():
    block = BasicBlock(16, 32, stride=2)
    x = torch.rand(2, 16, 7, 7)
    out = block.shortcut(x)
    assert out.shape == (2, 32, 4, 4)
    torch.testing.assert_close(out[:, :16], x[:, :, ::2, ::2])
    assert not out[:, 16:].any()
    assert sum(p.numel() for p in block.parameters()) == 2 * 32 + 2 * 32 + 32 * 16 * 9 + 32 * 32 * 9
