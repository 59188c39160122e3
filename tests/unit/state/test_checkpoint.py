"""save_checkpoint/resume: several models, modes, schedulers, scaler, legacy dicts, all-or-nothing."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest
import torch

import torchferry
from tests.conftest import SmallNet
from torchferry.errors import CheckpointError, StateDictMismatchError

pytestmark = pytest.mark.unit


def train_step(model: torch.nn.Module, opt: torch.optim.Optimizer) -> None:
    opt.zero_grad()
    model(torch.randn(8, 4)).pow(2).mean().backward()
    opt.step()


def params(model: torch.nn.Module) -> list[torch.Tensor]:
    return [p.detach().clone() for p in model.state_dict().values()]


def test_gan_style_checkpoint_with_two_models_and_two_optimizers(tmp_path: Path) -> None:
    torch.manual_seed(0)
    gen, disc = SmallNet(), SmallNet(hidden=6)
    opt_g, opt_d = torch.optim.Adam(gen.parameters(), lr=1e-3), torch.optim.SGD(disc.parameters(), lr=0.1, momentum=0.9)
    for _ in range(3):
        train_step(gen, opt_g)
        train_step(disc, opt_d)
    disc.eval()
    path = tmp_path / "gan.safetensors"
    torchferry.save_checkpoint(
        path, models={"generator": gen, "discriminator": disc},
        optimizers={"generator": opt_g, "discriminator": opt_d}, epoch=7, step=300, loss_g=0.25, note="ok",
    )  # fmt: skip
    gen2, disc2 = SmallNet(), SmallNet(hidden=6)
    opt_g2, opt_d2 = torch.optim.Adam(gen2.parameters(), lr=1.0), torch.optim.SGD(disc2.parameters(), lr=1.0)
    ckpt = torchferry.resume(
        path,
        models={"generator": gen2, "discriminator": disc2},
        optimizers={"generator": opt_g2, "discriminator": opt_d2},
    )
    assert (ckpt.epoch, ckpt.step, ckpt.extra) == (7, 300, {"loss_g": 0.25, "note": "ok"})
    assert ckpt.modes == {"generator": "train", "discriminator": "eval"} and not disc2.training
    assert all(torch.equal(a, b) for a, b in zip(params(gen), params(gen2)))
    assert opt_g2.param_groups[0]["lr"] == 1e-3 and opt_d2.param_groups[0]["momentum"] == 0.9
    assert torch.equal(
        opt_d2.state[disc2.fc1.weight]["momentum_buffer"], opt_d.state[disc.fc1.weight]["momentum_buffer"]
    )
    assert "generator in train mode" in str(ckpt) and "discriminator in eval mode" in str(ckpt)


def test_mixed_submodule_modes_come_back(tmp_path: Path) -> None:
    model = SmallNet()
    model.train()
    model.bn.eval()  # a frozen BatchNorm inside a training model
    torchferry.save_checkpoint(tmp_path / "c.safetensors", model=model)
    fresh = SmallNet().eval()
    ckpt = torchferry.resume(tmp_path / "c.safetensors", model=fresh)
    assert ckpt.modes == {"model": "train"} and fresh.training and not fresh.bn.training and fresh.drop.training


def test_scheduler_scaler_and_rng_are_restored(tmp_path: Path) -> None:
    model = SmallNet()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=2, gamma=0.5)
    plateau_opt = torch.optim.SGD(model.parameters(), lr=0.1)
    plateau = torch.optim.lr_scheduler.ReduceLROnPlateau(plateau_opt)  # holds float("inf")
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    for _ in range(5):
        train_step(model, opt)
        sched.step()
    torch.manual_seed(123)
    random.seed(5)
    np.random.seed(9)
    torchferry.save_checkpoint(
        tmp_path / "c.safetensors", model=model, optimizer=opt,
        schedulers={"step": sched, "plateau": plateau}, scaler=scaler,
    )  # fmt: skip
    expected = (torch.rand(3), random.random(), np.random.rand())
    model2 = SmallNet()
    opt2 = torch.optim.SGD(model2.parameters(), lr=0.1)
    sched2 = torch.optim.lr_scheduler.StepLR(opt2, step_size=2, gamma=0.5)
    plateau2 = torch.optim.lr_scheduler.ReduceLROnPlateau(torch.optim.SGD(model2.parameters(), lr=0.1))
    scaler2 = torch.amp.GradScaler("cpu")
    ckpt = torchferry.resume(
        tmp_path / "c.safetensors", model=model2, optimizer=opt2,
        schedulers={"step": sched2, "plateau": plateau2}, scaler=scaler2,
    )  # fmt: skip
    assert sched2.state_dict() == sched.state_dict() and sched2.get_last_lr() == sched.get_last_lr()
    assert plateau2.best == float("inf") and scaler2.state_dict() == scaler.state_dict()
    assert (
        torch.equal(torch.rand(3), expected[0]) and random.random() == expected[1] and np.random.rand() == expected[2]
    )
    assert {"rng torch", "rng numpy", "rng python", "scaler"} <= set(ckpt.restored)


def test_checkpoint_from_a_wrapped_model_resumes_with_rename(tmp_path: Path) -> None:
    model = SmallNet()
    torchferry.save_checkpoint(tmp_path / "c.safetensors", model=torch.nn.DataParallel(model))
    with pytest.raises(StateDictMismatchError, match=r"pass rename=\{'module.': ''\}"):
        torchferry.resume(tmp_path / "c.safetensors", model=SmallNet())
    fresh = SmallNet()
    assert torchferry.resume(tmp_path / "c.safetensors", model=fresh, rename={"module.": ""}).reports["model"].ok
    assert all(torch.equal(a, b) for a, b in zip(params(model), params(fresh)))


def test_a_lone_model_matches_whatever_name_it_was_saved_under(tmp_path: Path) -> None:
    torchferry.save_checkpoint(tmp_path / "c.safetensors", models={"student": SmallNet()})
    assert torchferry.resume(tmp_path / "c.safetensors", model=SmallNet()).reports["model"].ok


def test_failed_checks_leave_every_object_untouched(tmp_path: Path) -> None:
    model, other = SmallNet(), SmallNet(hidden=5)
    opt = torch.optim.Adam(model.parameters())
    train_step(model, opt)
    torchferry.save_checkpoint(tmp_path / "c.safetensors", models={"a": model, "b": model}, optimizer=opt)
    live_a, live_b = SmallNet(), other
    before = params(live_a)
    with pytest.raises(StateDictMismatchError):
        torchferry.resume(tmp_path / "c.safetensors", models={"a": live_a, "b": live_b})
    assert all(torch.equal(x, y) for x, y in zip(before, params(live_a)))
    live_opt = torch.optim.Adam(list(live_a.parameters())[:2])
    with pytest.raises(CheckpointError, match=r"parameter groups of sizes \[6\].*live optimizer has \[2\]"):
        torchferry.resume(tmp_path / "c.safetensors", models={"a": live_a}, optimizer=live_opt)
    assert all(torch.equal(x, y) for x, y in zip(before, params(live_a)))
    with pytest.raises(CheckpointError, match=r"no models named \['c'\]; it has \['a', 'b'\]"):
        torchferry.resume(tmp_path / "c.safetensors", models={"c": live_a})


def test_resume_reads_hand_made_legacy_checkpoints(tmp_path: Path) -> None:
    """Seed 003's checkpoint dict, saved with torch.save, resumes through torchferry."""
    model = SmallNet()
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    train_step(model, opt)
    torch.save(
        {"epoch": 4, "model_state_dict": model.state_dict(), "optimizer_state_dict": opt.state_dict(), "loss": 0.7},
        tmp_path / "old.tar",
    )
    model2 = SmallNet()
    opt2 = torch.optim.SGD(model2.parameters(), lr=1.0)
    ckpt = torchferry.resume(tmp_path / "old.tar", model=model2, optimizer=opt2)
    assert ckpt.epoch == 4 and ckpt.extra == {"loss": 0.7} and opt2.param_groups[0]["lr"] == 0.01
    assert all(torch.equal(a, b) for a, b in zip(params(model), params(model2)))


def test_plain_state_files_are_not_checkpoints(tmp_path: Path) -> None:
    torchferry.save(SmallNet().state_dict(), tmp_path / "w.safetensors")
    with pytest.raises(CheckpointError, match="load_into"):
        torchferry.resume(tmp_path / "w.safetensors", model=SmallNet())
