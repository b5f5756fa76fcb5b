"""LeNet models for 28x28 grayscale digits (MNIST). Layers are named conv1, conv2, fc1, ... so the
exported ONNX initializers read ``conv1.weight``, ``fc1.bias``, etc."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ttcompile.models.layers import MNIST_MEAN, MNIST_STD, Normalize


class LeNet5(nn.Module):
    """LeNet-5 as used by the tensor-ring papers (TRN, PSTRN, Cao et al. 2024).

    ``(N, 1, 28, 28)`` pixels in [0, 1] -> normalise -> conv1 1->20 5x5 pad 2 -> ReLU -> maxpool 2
    -> conv2 20->50 5x5 -> ReLU -> maxpool 2 -> flatten (50*5*5 = 1250, order C,H,W)
    -> fc1 1250->320 -> ReLU -> fc2 320->n_classes -> logits ``(N, n_classes)``. 429,100 parameters.
    """

    def __init__(self, n_classes: int = 10, mean: Sequence[float] = MNIST_MEAN,
                 std: Sequence[float] = MNIST_STD):
        super().__init__()
        self.normalize = Normalize(mean, std)
        self.conv1 = nn.Conv2d(1, 20, 5, padding=2)
        self.conv2 = nn.Conv2d(20, 50, 5)
        self.fc1 = nn.Linear(1250, 320)
        self.fc2 = nn.Linear(320, n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.max_pool2d(F.relu(self.conv1(self.normalize(x))), 2)
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        return self.fc2(F.relu(self.fc1(torch.flatten(x, 1))))


class LeNet300100(nn.Module):
    """LeNet-300-100 MLP: fc1 784->300, fc2 300->100, fc3 100->n_classes, ReLU between. 266,610 parameters.

    Takes ``(N, 1, 28, 28)`` pixels in [0, 1] (the exported ONNX input, same as the conv models)
    and flattens them row-major; an already flat ``(N, 784)`` tensor also works in torch.
    """

    def __init__(self, n_classes: int = 10, mean: Sequence[float] = MNIST_MEAN,
                 std: Sequence[float] = MNIST_STD):
        super().__init__()
        self.normalize = Normalize(mean, std)
        self.fc1 = nn.Linear(784, 300)
        self.fc2 = nn.Linear(300, 100)
        self.fc3 = nn.Linear(100, n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.flatten(self.normalize(x), 1)
        return self.fc3(F.relu(self.fc2(F.relu(self.fc1(x)))))
