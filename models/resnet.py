"""CIFAR-style ResNet-20/32/56 (He et al. 2016, section 4.2) for any input size and channel count.

Three stages of ``n`` BasicBlocks with 16/32/64 channels (depth = 6n + 2); stages 2 and 3 start with
stride 2. Shortcuts are "option A": identity, or on a downsampling block a parameter-free stride-2
subsample plus zero padding of the new channels. Normalisation is the first layer, so inputs are
``(N, C, H, W)`` pixels in [0, 1]; output is logits ``(N, n_classes)``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ttcompile.models.layers import MNIST_MEAN, MNIST_STD, Normalize


def _conv3x3(c_in: int, c_out: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False)


class BasicBlock(nn.Module):
    """conv3x3-BN-ReLU-conv3x3-BN, plus the option-A shortcut, then ReLU."""

    def __init__(self, c_in: int, c_out: int, stride: int):
        super().__init__()
        self.conv1 = _conv3x3(c_in, c_out, stride)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = _conv3x3(c_out, c_out)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.stride = stride
        self.pad_channels = c_out - c_in

    def shortcut(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride != 1:
            x = x[:, :, :: self.stride, :: self.stride]
        if self.pad_channels:
            x = F.pad(x, (0, 0, 0, 0, 0, self.pad_channels))
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class CifarResNet(nn.Module):
    """ResNet of depth ``6 * blocks_per_stage + 2``; see the module docstring."""

    def __init__(self, blocks_per_stage: int, n_classes: int = 10, in_channels: int = 1,
                 mean: Sequence[float] = MNIST_MEAN, std: Sequence[float] = MNIST_STD):
        super().__init__()
        self.normalize = Normalize(mean, std)
        self.conv1 = _conv3x3(in_channels, 16)
        self.bn1 = nn.BatchNorm2d(16)
        stages, c_in = [], 16
        for i, width in enumerate((16, 32, 64)):
            blocks = [BasicBlock(c_in, width, 1 if i == 0 else 2)]
            blocks += [BasicBlock(width, width, 1) for _ in range(blocks_per_stage - 1)]
            stages.append(nn.Sequential(*blocks))
            c_in = width
        self.stages = nn.Sequential(*stages)
        self.fc = nn.Linear(64, n_classes)
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.kaiming_normal_(m.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn1(self.conv1(self.normalize(x))))
        x = self.stages(x)
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


def resnet(depth: int, **kwargs) -> CifarResNet:
    """CIFAR ResNet of ``depth`` in {20, 32, 44, 56, 110, ...} (depth = 6n + 2)."""
    if depth < 8 or (depth - 2) % 6:
        raise ValueError(f"CIFAR ResNet depth must be 6n + 2 with n >= 1, got {depth}")
    return CifarResNet((depth - 2) // 6, **kwargs)


def resnet20(**kwargs) -> CifarResNet:
    return resnet(20, **kwargs)


def resnet32(**kwargs) -> CifarResNet:
    return resnet(32, **kwargs)


def resnet56(**kwargs) -> CifarResNet:
    return resnet(56, **kwargs)
