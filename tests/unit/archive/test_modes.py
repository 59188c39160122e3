"""mode="auto" picks export when it works and python when it cannot; trust is enforced."""

from __future__ import annotations

import importlib
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest
import torch

import torchferry as ferry
from torchferry.errors import UntrustedCodeError

pytestmark = pytest.mark.unit

SOURCE = '''
import torch
from torch import nn


class Gate(nn.Module):
    """Data-dependent control flow: torch.export cannot capture the branch."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(3, 3)

    def forward(self, x):
        y = self.fc(x)
        if y.sum() > 0:
            return y * 2
        return y - 1


class Plain(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(3, 2)

    def forward(self, x):
        return torch.sigmoid(self.fc(x))
'''


@pytest.fixture
def user_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[ModuleType]:
    (tmp_path / "gatenet.py").write_text(textwrap.dedent(SOURCE))
    monkeypatch.syspath_prepend(str(tmp_path))
    module = importlib.import_module("gatenet")
    yield module
    sys.modules.pop("gatenet", None)


def test_auto_exports_a_plain_model(user_module: ModuleType, tmp_path: Path) -> None:
    manifest = ferry.pack(user_module.Plain(), tmp_path / "plain.ferry", example_inputs=torch.randn(2, 3))
    assert manifest.kind == "export" and "fallback_reason" not in manifest.program


def test_auto_falls_back_to_python_for_data_dependent_control_flow(user_module: ModuleType, tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = user_module.Gate().eval()
    path = tmp_path / "gate.ferry"
    manifest = ferry.pack(model, path, example_inputs=torch.randn(2, 3))
    assert manifest.kind == "python"
    assert "torch.export could not export the model" in manifest.program["fallback_reason"]
    assert manifest.program["interned"] == ["gatenet"]
    assert "program/code/gatenet.py" in manifest.members

    with pytest.raises(UntrustedCodeError, match="trust_code=True"):
        ferry.load_model(path)
    loaded = ferry.load_model(path, trust_code=True)
    for x in (torch.full((1, 3), 5.0), torch.full((4, 3), -5.0)):
        torch.testing.assert_close(loaded(x), model(x))

    untrusted = ferry.verify(path)
    assert not untrusted.ok and untrusted.hashes_ok and "--trust-code" in str(untrusted)
    assert ferry.verify(path, trust_code=True).ok


def test_python_mode_can_be_forced(user_module: ModuleType, tmp_path: Path) -> None:
    manifest = ferry.pack(user_module.Plain(), tmp_path / "p.ferry", example_inputs=torch.randn(1, 3), mode="python")
    assert manifest.kind == "python" and manifest.batching["dynamic_batch"] is True
    assert manifest.signature.inputs[0].shape == (-1, 3)
    assert manifest.requirements["torch"] == torch.__version__.split("+")[0]
