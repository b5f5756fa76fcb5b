"""Olive data components of the example: the 2,000 MNIST test images shipped in
models/mnist_test_sample.npz as (image [1, 28, 28] float32, label) pairs, and top-1 of the logits."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from olive.data.registry import Registry

SAMPLE = Path(__file__).resolve().parents[2] / "models" / "mnist_test_sample.npz"


@Registry.register_dataset()
def mnist_test_sample(**kwargs) -> list[tuple[torch.Tensor, int]]:
    data = np.load(SAMPLE)
    return list(zip(torch.from_numpy(data["x"]), data["y"].tolist()))


@Registry.register_post_process()
def mnist_top1(output: torch.Tensor, **kwargs) -> torch.Tensor:
    """Logits [batch, 10] -> predicted class [batch]."""
    return output.argmax(-1)
