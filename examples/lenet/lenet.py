"""``TheModelClass`` from seed 003 (PyTorch's "saving and loading models" tutorial), and its data.

A LeNet-style CIFAR-10 network: conv 3->6 (5x5), 2x2 max-pool, conv 6->16 (5x5), pool,
then 400 -> 120 -> 84 -> 10 fully connected. The training script imports it; the process
that uses the packed archive does not, and cannot.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F  # noqa: N812 - the tutorial's spelling
from torch import nn

CLASSES = ("plane", "car", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
"""CIFAR-10's class names, in the order of the network's 10 outputs."""


class TheModelClass(nn.Module):
    """3x32x32 images -> 10 class scores (logits)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 6, 5)
        self.pool = nn.MaxPool2d(2, 2)
        self.conv2 = nn.Conv2d(6, 16, 5)
        self.fc1 = nn.Linear(16 * 5 * 5, 120)
        self.fc2 = nn.Linear(120, 84)
        self.fc3 = nn.Linear(84, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(F.relu(self.conv1(x)))
        x = self.pool(F.relu(self.conv2(x)))
        x = x.view(-1, 16 * 5 * 5)
        x = F.relu(self.fc1(x))
        x = F.relu(self.fc2(x))
        return self.fc3(x)


def synthetic_cifar(count: int, *, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``count`` CIFAR-shaped images with labels, no download: each class is a colour tint plus
    noise, so a few SGD steps already lower the loss. Seeded by a private generator."""
    generator = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, len(CLASSES), (count,), generator=generator)
    tints = torch.linspace(-1, 1, len(CLASSES) * 3).reshape(len(CLASSES), 3, 1, 1)
    images = tints[labels] + 0.5 * torch.randn(count, 3, 32, 32, generator=generator)
    return images, labels
