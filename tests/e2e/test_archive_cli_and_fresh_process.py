"""Archives on the command line and in a fresh interpreter where the model's source is gone."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

import torchferry as ferry

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

MODEL_SOURCE = '''
import torch
from torch import nn


class Classifier(nn.Module):
    """Seed 001's Multiclass: the class a pickled model cannot be loaded without."""

    def __init__(self, hidden: int = 8) -> None:
        super().__init__()
        self.hidden = nn.Linear(4, hidden)
        self.act = nn.ReLU()
        self.output = nn.Linear(hidden, 3)

    def forward(self, x):
        return self.output(self.act(self.hidden(x)))
'''


def run(args: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {"COLUMNS": "200", "PATH": "", "PYTHONPATH": ""}
    return subprocess.run(args, capture_output=True, text=True, timeout=180, cwd=cwd, env=env)


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """A user project with the model's source, its weights and labels."""
    root = tmp_path / "project"
    root.mkdir()
    (root / "irisnet.py").write_text(MODEL_SOURCE)
    (root / "labels.txt").write_text("setosa\nversicolor\nvirginica\n")
    return root


def test_cli_pack_then_load_where_the_source_does_not_exist(project: Path, tmp_path: Path) -> None:
    torch.manual_seed(0)
    weights = {
        "hidden.weight": torch.randn(16, 4),
        "hidden.bias": torch.randn(16),
        "output.weight": torch.randn(3, 16),
        "output.bias": torch.randn(3),
    }
    ferry.save(weights, project / "weights.safetensors")
    packed = run(
        [
            sys.executable,
            "-m",
            "torchferry.cli.main",
            "pack",
            "irisnet:Classifier",
            "--init-args",
            '{"hidden": 16}',
            "--weights",
            "weights.safetensors",
            "--example",
            "x=float32[1,4]",
            "--labels",
            "labels.txt",
            "--name",
            "iris",
            "--version",
            "2",
            "-o",
            "iris.ferry",
        ],
        project,
    )
    assert packed.returncode == 0, packed.stderr
    assert "iris, export program" in packed.stdout and "input  x: float32[?,4]" in packed.stdout

    elsewhere = tmp_path / "server"
    elsewhere.mkdir()
    shutil.copy(project / "iris.ferry", elsewhere)
    shutil.rmtree(project)  # the source is gone
    x = torch.randn(5, 4)
    expected = (
        torch.relu(x @ weights["hidden.weight"].T + weights["hidden.bias"]) @ weights["output.weight"].T
        + weights["output.bias"]
    )
    script = textwrap.dedent(f"""
        import json, sys, torch, torchferry
        try:
            import irisnet
        except ImportError:
            pass
        else:
            sys.exit("the model source must not be importable here")
        model = torchferry.load_model("iris.ferry")
        out = model(torch.tensor({x.tolist()}))
        print(json.dumps({{"out": out.tolist(), "labels": list(model.labels), "repr": repr(model)}}))
    """)
    loaded = run([sys.executable, "-c", script], elsewhere)
    assert loaded.returncode == 0, loaded.stderr
    result = json.loads(loaded.stdout)
    torch.testing.assert_close(torch.tensor(result["out"]), expected, rtol=1e-5, atol=1e-5)
    assert result["labels"] == ["setosa", "versicolor", "virginica"]

    inspected = run([sys.executable, "-m", "torchferry.cli.main", "inspect", "iris.ferry", "--json"], elsewhere)
    manifest = json.loads(inspected.stdout)
    assert manifest["format"] == "torchferry.archive/1" and manifest["version"] == "2"
    assert manifest["program"]["kind"] == "export" and manifest["labels"] == result["labels"]
    table = run([sys.executable, "-m", "torchferry.cli.main", "inspect", "iris.ferry"], elsewhere)
    assert "export (torch.export graph; runs no Python code)" in table.stdout and "setosa" in table.stdout

    verified = run([sys.executable, "-m", "torchferry.cli.main", "verify", "iris.ferry"], elsewhere)
    assert verified.returncode == 0 and "OK" in verified.stdout and "max abs error" in verified.stdout
    data = bytearray((elsewhere / "iris.ferry").read_bytes())
    start = data.find(b"program/graph.json", 100)  # central directory aside, the local header comes first
    data[data.find(b'"nodes"', start) + 2] ^= 0x01
    (elsewhere / "bad.ferry").write_bytes(bytes(data))
    failed = run([sys.executable, "-m", "torchferry.cli.main", "verify", "bad.ferry"], elsewhere)
    assert failed.returncode == 1 and "program/graph.json" in failed.stderr


def test_cli_convert_state_dict_pth_into_an_archive(project: Path) -> None:
    torch.manual_seed(1)
    state = {
        "hidden.weight": torch.randn(8, 4),
        "hidden.bias": torch.randn(8),
        "output.weight": torch.randn(3, 8),
        "output.bias": torch.randn(3),
    }
    torch.save(state, project / "legacy.pth")
    converted = run(
        [
            sys.executable,
            "-m",
            "torchferry.cli.main",
            "convert",
            "legacy.pth",
            "--class",
            "irisnet:Classifier",
            "--example",
            "x=float32[2,4]",
            "-o",
            "legacy.ferry",
        ],
        project,
    )
    assert converted.returncode == 0, converted.stderr
    model = ferry.load_model(project / "legacy.ferry")
    torch.testing.assert_close(model(torch.ones(1, 4)).shape, torch.Size([1, 3]))
    refused = run(
        [
            sys.executable,
            "-m",
            "torchferry.cli.main",
            "convert",
            "legacy.pth",
            "--example",
            "x=float32[2,4]",
            "-o",
            "other.ferry",
        ],
        project,
    )
    assert refused.returncode == 1 and "--class" in refused.stderr
    assert not (project / "other.ferry").exists()


def test_cli_convert_whole_pickled_model_only_with_trust_pickle(project: Path) -> None:
    script = (
        "import torch, irisnet; torch.manual_seed(2); "
        "torch.save(irisnet.Classifier(), 'whole.pt'); print(irisnet.Classifier.__name__)"
    )
    made = run([sys.executable, "-c", script], project)
    assert made.returncode == 0, made.stderr
    args = [sys.executable, "-m", "torchferry.cli.main", "convert", "whole.pt", "--example", "x=float32[2,4]"]
    refused = run([*args, "-o", "refused.ferry"], project)
    assert refused.returncode == 1 and "--trust-pickle" in refused.stderr
    assert not (project / "refused.ferry").exists()
    converted = run([*args, "--trust-pickle", "-o", "whole.ferry"], project)
    assert converted.returncode == 0, converted.stderr
    manifest = ferry.inspect(project / "whole.ferry")
    assert manifest.kind == "export" and manifest.signature.outputs[0].shape == (-1, 3)
    assert ferry.verify(project / "whole.ferry").ok


def test_cli_pack_usage_errors_say_what_to_do(project: Path) -> None:
    bad = run(
        [
            sys.executable,
            "-m",
            "torchferry.cli.main",
            "pack",
            "irisnet:Nope",
            "--example",
            "x=float32[1,4]",
            "-o",
            "x.ferry",
        ],
        project,
    )
    assert bad.returncode == 1 and "has no attribute 'Nope'" in bad.stderr
    spec = run(
        [
            sys.executable,
            "-m",
            "torchferry.cli.main",
            "pack",
            "irisnet:Classifier",
            "--example",
            "x=f32[1,4]",
            "-o",
            "x.ferry",
        ],
        project,
    )
    assert spec.returncode == 1 and "unknown dtype 'f32'" in spec.stderr
