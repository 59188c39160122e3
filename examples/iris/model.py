"""The Iris classifier and its data, shared by ``train.py``, ``evaluate.py`` and ``pack.py``.

These scripts import this module so that the process that loads the weights builds
exactly the same architecture, and scores exactly the same test rows, as the process
that trained them. That is what makes "same accuracy after reloading" a real check.
``predict.py`` is the exception on purpose: it must work where this module is absent.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from sklearn.datasets import load_iris
from sklearn.model_selection import train_test_split
from torch import nn

SPLIT_SEED = 7
"""``random_state`` of the train/test split: a fixed split is what lets another process
score the very same 45 test flowers."""

TORCH_SEED = 1
"""Seed of the weight initialisation, so every run of the demo prints the same numbers."""

WEIGHTS = "iris.safetensors"
"""The trained weights (a plain state_dict), what inference needs."""
CHECKPOINT = "iris-ckpt.safetensors"
"""Weights + Adam state + epoch + last loss, what continuing training needs."""
ACCURACY = "accuracy.txt"
"""The test accuracy the saved weights reached, for another process to check against."""
SPECIES = ("setosa", "versicolor", "virginica")
"""The class names, in the order of the model's outputs (scikit-learn's ``target_names``)."""


class Multiclass(nn.Module):
    """4 measurements -> 8 hidden units -> log-probabilities of the 3 Iris species."""

    def __init__(self) -> None:
        super().__init__()
        self.hidden = nn.Linear(4, 8)
        self.act = nn.ReLU()
        self.output = nn.Linear(8, 3)
        self.logsoftmax = nn.LogSoftmax(dim=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.logsoftmax(self.output(self.act(self.hidden(x))))


@dataclass(frozen=True)
class IrisData:
    """The 70/30 split of the 150 Iris flowers, as tensors ready for ``Multiclass``."""

    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor


def load_data() -> IrisData:
    """Load Iris from scikit-learn's bundled copy (no download) and split it reproducibly."""
    iris = load_iris()
    x_train, x_test, y_train, y_test = train_test_split(
        iris["data"], iris["target"], train_size=0.7, shuffle=True, random_state=SPLIT_SEED
    )
    return IrisData(
        x_train=torch.tensor(x_train, dtype=torch.float32),
        y_train=torch.tensor(y_train, dtype=torch.long),
        x_test=torch.tensor(x_test, dtype=torch.float32),
        y_test=torch.tensor(y_test, dtype=torch.long),
    )


def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[int, int]:
    """Count correct predictions as ``(correct, total)``.

    Integers, not a float, so two processes can compare their results exactly.
    """
    model.eval()
    with torch.no_grad():
        predicted = model(x).argmax(dim=1)
    return int((predicted == y).sum()), len(y)


def read_accuracy(path: Path) -> float:
    """The accuracy train.py wrote; a missing or garbled file is an error, not a pass."""
    try:
        return float(path.read_text(encoding="utf-8").strip())
    except (OSError, ValueError) as exc:
        raise SystemExit(f"error: cannot read the training accuracy from {path} ({exc}); run train.py first") from exc


def format_accuracy(correct: int, total: int) -> str:
    """The one line both scripts print, so the demo and the tests can compare them."""
    return f"test accuracy {correct / total:.4f} ({correct}/{total})"


def setup_torch() -> None:
    """Seed torch and use one thread: tiny matmuls run faster single-threaded, and every
    run then follows the same arithmetic path."""
    torch.manual_seed(TORCH_SEED)
    torch.set_num_threads(1)
