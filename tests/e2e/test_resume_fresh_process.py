"""N steps + checkpoint + M steps in a *new process* equals N+M uninterrupted steps, bit for bit."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

import torchferry

pytestmark = pytest.mark.e2e

# Every source of randomness a training loop typically has: torch (init, dropout,
# shuffling), NumPy (augmentation noise) and Python's random (sampling a step size).
TRAINER = textwrap.dedent(
    """
    import random, sys
    import numpy as np
    import torch
    import torchferry

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.body = torch.nn.Sequential(torch.nn.Linear(4, 16), torch.nn.ReLU(), torch.nn.Dropout(0.3))
            self.bn = torch.nn.BatchNorm1d(16)
            self.head = torch.nn.Linear(16, 3)
        def forward(self, x):
            return self.head(self.bn(self.body(x)))

    def setup():
        torch.manual_seed(0); np.random.seed(0); random.seed(0)
        model = Net()
        opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=20)
        return model, opt, sched

    DATA = torch.linspace(-1, 1, 64 * 4).reshape(64, 4)
    LABELS = (torch.arange(64) % 3)

    def step(model, opt, sched):
        idx = torch.randperm(64)[:16]
        noise = torch.from_numpy(np.random.normal(0, 0.1, (16, 4)).astype("float32"))
        scale = 1.0 + random.random() * 0.1
        loss = torch.nn.functional.cross_entropy(model(DATA[idx] * scale + noise), LABELS[idx])
        opt.zero_grad(); loss.backward(); opt.step(); sched.step()

    mode, n, ckpt, out = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
    model, opt, sched = setup()
    if mode == "resume":
        torchferry.resume(ckpt, model=model, optimizer=opt, scheduler=sched)
    for _ in range(n):
        step(model, opt, sched)
    if mode == "first":
        torchferry.save_checkpoint(ckpt, model=model, optimizer=opt, scheduler=sched, step=n)
    torchferry.save(model.state_dict(), out)
    """
)


def run(tmp_path: Path, *args: str) -> None:
    script = tmp_path / "trainer.py"
    script.write_text(TRAINER)
    proc = subprocess.run([sys.executable, str(script), *args], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr


def test_resumed_training_is_bit_identical(tmp_path: Path) -> None:
    ckpt = str(tmp_path / "ckpt.safetensors")
    run(tmp_path, "straight", "12", ckpt, str(tmp_path / "straight.safetensors"))
    run(tmp_path, "first", "5", ckpt, str(tmp_path / "first.safetensors"))
    run(tmp_path, "resume", "7", ckpt, str(tmp_path / "resumed.safetensors"))
    straight = torchferry.load(tmp_path / "straight.safetensors")
    resumed = torchferry.load(tmp_path / "resumed.safetensors")
    first = torchferry.load(tmp_path / "first.safetensors")
    assert straight.keys() == resumed.keys()
    for key in straight:
        assert torch.equal(straight[key], resumed[key]), key
    assert not torch.equal(first["head.weight"], straight["head.weight"])  # training really moved on
