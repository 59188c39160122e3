"""The ``torchferry`` command line, run as a real subprocess."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import torchferry
from tests.conftest import SmallNet

pytestmark = pytest.mark.e2e

CLI = [sys.executable, "-m", "torchferry.cli.main"]


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*CLI, *args], capture_output=True, text=True, timeout=120, env={"COLUMNS": "200", "PATH": ""}
    )


def test_version_and_help_with_examples() -> None:
    assert cli("--version").stdout.strip() == f"torchferry {torchferry.__version__}"
    root = cli("--help")
    assert root.returncode == 0 and "inspect" in root.stdout and "convert" in root.stdout
    for command in ("inspect", "convert", "pack", "verify"):
        help_text = cli(command, "--help").stdout
        assert "Examples:" in help_text and f"torchferry {command} " in help_text


def test_inspect_our_checkpoint_as_table_and_json(tmp_path: Path) -> None:
    model = SmallNet()
    opt = torch.optim.Adam(model.parameters())
    path = tmp_path / "ck.safetensors"
    torchferry.save_checkpoint(path, model=model, optimizer=opt, epoch=12, step=3400, best_acc=0.93)
    table = cli("inspect", str(path))
    assert table.returncode == 0, table.stderr
    assert "torchferry checkpoint" in table.stdout and "models/model/fc1.weight" in table.stdout
    assert "float32" in table.stdout and "[8, 4]" in table.stdout and "12" in table.stdout
    data = json.loads(cli("inspect", str(path), "--json").stdout)
    assert data["info"]["epoch"] == 12 and data["info"]["step"] == 3400
    assert data["info"]["extra"] == {"best_acc": 0.93}
    weight = next(t for t in data["tensors"] if t["name"] == "models/model/fc1.weight")
    assert weight == {"name": "models/model/fc1.weight", "dtype": "float32", "shape": [8, 4], "nbytes": 128}


def test_inspect_legacy_file_shows_totals(tmp_path: Path) -> None:
    torch.save({"epoch": 2, "model_state_dict": SmallNet().state_dict()}, tmp_path / "old.pth")
    result = cli("inspect", str(tmp_path / "old.pth"))
    assert result.returncode == 0, result.stderr
    assert "torch.save zip" in result.stdout and "9 tensors" in result.stdout and "epoch" in result.stdout


def test_convert_legacy_checkpoint_then_resume(tmp_path: Path) -> None:
    model = SmallNet()
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    torch.save(
        {"epoch": 9, "model_state_dict": model.state_dict(), "optimizer_state_dict": opt.state_dict(), "loss": 1.5},
        tmp_path / "old.pth",
    )
    out = tmp_path / "new.safetensors"
    result = cli("convert", str(tmp_path / "old.pth"), "-o", str(out))
    assert result.returncode == 0, result.stderr
    assert "checkpoint with 9 tensors" in result.stdout
    model2 = SmallNet()
    opt2 = torch.optim.SGD(model2.parameters(), lr=1.0)
    ckpt = torchferry.resume(out, model=model2, optimizer=opt2)
    assert ckpt.epoch == 9 and ckpt.extra == {"loss": 1.5} and opt2.param_groups[0]["lr"] == 0.05
    again = cli("convert", str(tmp_path / "old.pth"), "-o", str(out))
    assert again.returncode == 1 and "--force" in again.stderr


def test_convert_state_dict_is_readable_by_plain_safetensors(tmp_path: Path) -> None:
    import safetensors.torch

    sd = SmallNet().state_dict()
    torch.save(sd, tmp_path / "w.pth")
    assert cli("convert", str(tmp_path / "w.pth"), "-o", str(tmp_path / "w.safetensors")).returncode == 0
    plain = safetensors.torch.load_file(tmp_path / "w.safetensors")
    assert all(torch.equal(plain[k], v) for k, v in sd.items())


def test_errors_are_one_readable_line_without_traceback(tmp_path: Path) -> None:
    missing = cli("inspect", str(tmp_path / "nope.pth"))
    assert missing.returncode == 1 and "no such file" in missing.stderr and "Traceback" not in missing.stderr
    (tmp_path / "empty.pt").write_bytes(b"")
    empty = cli("inspect", str(tmp_path / "empty.pt"))
    assert empty.returncode == 1 and "is empty" in empty.stderr
    usage = cli("convert", str(tmp_path / "empty.pt"))
    assert usage.returncode == 2 and "--output" in usage.stderr
