"""Small building blocks shared by the image models."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

MNIST_MEAN = (0.1307,)
MNIST_STD = (0.3081,)


class Normalize(nn.Module):
    """``(x - mean) / std`` inside the model, so a deployment feeds raw pixels in [0, 1].

    One value per channel broadcasts over ``(N, C, H, W)``; a single value applies to every
    element, whatever the input shape.
    """

    def __init__(self, mean: Sequence[float], std: Sequence[float]):
        super().__init__()
        if len(mean) != len(std):
            raise ValueError(f"mean has {len(mean)} values but std has {len(std)}")
        shape = () if len(mean) == 1 else (len(mean), 1, 1)
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).reshape(shape))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).reshape(shape))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std
