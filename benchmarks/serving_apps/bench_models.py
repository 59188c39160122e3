"""The three models of benchmarks/serving.py, shared with the baseline apps that serve them.

* ``iris``: an MLP 4 -> 16 -> 3; a forward costs microseconds, so serving it measures overhead.
* ``lenet``: the classic LeNet-5 shape on 3 x 32 x 32 (conv-pool-conv-pool-fc-fc-fc, 10 classes).
* ``resnet18``: ResNet-18 (BasicBlock, layers [2, 2, 2, 2]) on 3 x 64 x 64 with a 200-class head
  (Tiny-ImageNet's size); a forward costs milliseconds, so serving it is compute-bound.

No torchvision: the definitions are here so that every server runs the same modules.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

__all__ = ["INPUT_SHAPES", "MODELS", "IrisMLP", "LeNet", "ResNet18", "build"]


class IrisMLP(nn.Module):
    """4 measurements -> 16 hidden -> 3 class scores."""

    def __init__(self) -> None:
        super().__init__()
        self.hidden = nn.Linear(4, 16)
        self.act = nn.ReLU()
        self.output = nn.Linear(16, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.output(self.act(self.hidden(x)))


class LeNet(nn.Module):
    """conv(5x5, 6) - maxpool - conv(5x5, 16) - maxpool - fc 120 - fc 84 - fc 10, ReLU between."""

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 6, 5),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(6, 16, 5),
            nn.ReLU(),
            nn.MaxPool2d(2),
        )
        self.classifier = nn.Sequential(
            nn.Linear(16 * 5 * 5, 120),
            nn.ReLU(),
            nn.Linear(120, 84),
            nn.ReLU(),
            nn.Linear(84, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.features(x), 1))


class BasicBlock(nn.Module):
    """Two 3x3 convolutions with batch norm, and the identity (or a strided 1x1 projection) added back."""

    def __init__(self, inplanes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU()
        self.conv2 = nn.Conv2d(planes, planes, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample: nn.Module = nn.Identity()
        if stride != 1 or inplanes != planes:
            self.downsample = nn.Sequential(
                nn.Conv2d(inplanes, planes, 1, stride=stride, bias=False), nn.BatchNorm2d(planes)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + self.downsample(x))


class ResNet18(nn.Module):
    """ResNet-18: 7x7/2 stem and 3x3/2 max pool, four stages of two BasicBlocks (64-128-256-512), avg pool, fc."""

    def __init__(self, num_classes: int = 200, layers: tuple[int, ...] = (2, 2, 2, 2)) -> None:
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(3, 64, 7, stride=2, padding=3, bias=False),
            nn.BatchNorm2d(64),
            nn.ReLU(),
            nn.MaxPool2d(3, stride=2, padding=1),
        )
        stages: list[nn.Module] = []
        inplanes = 64
        for index, (planes, blocks) in enumerate(zip((64, 128, 256, 512), layers)):
            stride = 1 if index == 0 else 2
            stage = [BasicBlock(inplanes, planes, stride)] + [BasicBlock(planes, planes) for _ in range(blocks - 1)]
            stages.append(nn.Sequential(*stage))
            inplanes = planes
        self.stages = nn.Sequential(*stages)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(512, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.pool(self.stages(self.stem(x))), 1))


MODELS: dict[str, Callable[[], nn.Module]] = {"iris": IrisMLP, "lenet": LeNet, "resnet18": ResNet18}
INPUT_SHAPES: dict[str, tuple[int, ...]] = {"iris": (4,), "lenet": (3, 32, 32), "resnet18": (3, 64, 64)}
"""One sample's shape, without the batch dimension."""


def build(name: str, *, seed: int = 0) -> nn.Module:
    """The model ``name`` with seeded random weights (batch-norm statistics made non-trivial), in eval mode."""
    torch.manual_seed(seed)
    model = MODELS[name]()
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.running_mean.uniform_(-0.1, 0.1)
            module.running_var.uniform_(0.5, 1.5)
    return model.eval()
