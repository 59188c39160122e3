"""load_into: sources, renames, prefix hints, shape/dtype handling, strictness."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

import torchferry
from tests.conftest import SmallNet
from torchferry.errors import StateDictMismatchError, UsageError

pytestmark = pytest.mark.unit


def snapshot(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items()}


def same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_loads_from_path_state_dict_and_module(tmp_path: Path) -> None:
    torch.manual_seed(1)
    src, dst = SmallNet(), SmallNet()
    torchferry.save(src.state_dict(), tmp_path / "w.safetensors")
    for source in (tmp_path / "w.safetensors", str(tmp_path / "w.safetensors"), src.state_dict(), src):
        torch.nn.init.zeros_(dst.fc1.weight)
        report = torchferry.load_into(dst, source)
        assert report.ok and len(report.loaded) == report.model_keys == len(src.state_dict())
        assert same(snapshot(dst), snapshot(src))


@pytest.mark.parametrize(
    ("prefix", "why"),
    [("module.", "DataParallel/DistributedDataParallel"), ("_orig_mod.", "torch.compile"), ("net.", "extra prefix")],
)
def test_wrapper_prefix_is_diagnosed_and_rename_fixes_it(prefix: str, why: str) -> None:
    src, dst = SmallNet(), SmallNet()
    wrapped = {prefix + k: v for k, v in src.state_dict().items()}
    before = snapshot(dst)
    with pytest.raises(StateDictMismatchError) as info:
        torchferry.load_into(dst, wrapped)
    message = str(info.value)
    assert f"pass rename={{'{prefix}': ''}}" in message and why in message
    assert re.search(r"\nmissing +fc1\.weight +- +float32\[8, 4\]\n", message)
    assert re.search(rf"\nunexpected +{re.escape(prefix)}fc1\.weight +float32\[8, 4\] +-\n", message)
    assert "Nothing was loaded" in message and same(snapshot(dst), before)
    assert info.value.report.hint is not None
    report = torchferry.load_into(dst, wrapped, rename={prefix: ""})
    assert report.ok and report.renamed == len(wrapped)
    assert same(snapshot(dst), snapshot(src))


def test_real_dataparallel_and_compile_prefixes() -> None:
    src = SmallNet()
    dp = torch.nn.DataParallel(src)
    report = torchferry.load_into(SmallNet(), dp.state_dict(), strict=False)
    assert report.hint is not None and "'module.'" in report.hint
    dst = torch.nn.DataParallel(SmallNet())
    report = torchferry.load_into(dst, src.state_dict(), strict=False)
    assert report.hint == "the model's keys start with 'module.' but the source's do not; pass rename={'': 'module.'}"
    assert torchferry.load_into(dst, src.state_dict(), rename={"": "module."}).ok


def test_regex_and_callable_renames() -> None:
    src, dst = SmallNet(), SmallNet()
    renamed = {k.replace("fc", "dense"): v for k, v in src.state_dict().items()}
    assert torchferry.load_into(dst, renamed, rename=[(r"^dense(\d)", r"fc\1")]).ok
    assert torchferry.load_into(dst, renamed, rename=lambda k: k.replace("dense", "fc")).ok
    report = torchferry.load_into(
        dst, renamed, rename=lambda k: None if k.startswith("dense2") else k.replace("dense", "fc"), strict=False
    )
    assert set(report.missing) == {"fc2.weight", "fc2.bias"} and not report.unexpected


def test_renames_that_collide_or_are_malformed_are_usage_errors() -> None:
    sd = SmallNet().state_dict()
    with pytest.raises(UsageError, match="maps both"):
        torchferry.load_into(SmallNet(), sd, rename=lambda k: "same")
    with pytest.raises(UsageError, match="not understood"):
        torchferry.load_into(SmallNet(), sd, rename=[("(", "x")])


def test_shape_mismatches_are_skipped_when_not_strict_and_listed_with_both_shapes() -> None:
    src, dst = SmallNet(hidden=16), SmallNet(hidden=8)
    before = snapshot(dst)
    with pytest.raises(StateDictMismatchError) as info:
        torchferry.load_into(dst, src)
    assert re.search(r"\nshape +fc1\.weight +float32\[16, 4\] +float32\[8, 4\]\n", str(info.value))
    assert same(snapshot(dst), before)
    report = torchferry.load_into(dst, src, strict=False)
    assert {m.key for m in report.mismatched} >= {"fc1.weight", "bn.weight", "fc2.weight"}
    assert report.loaded == ("bn.num_batches_tracked", "fc2.bias")
    assert torch.equal(dst.fc2.bias, src.fc2.bias)


def test_dtype_casts_are_loaded_and_reported() -> None:
    src, dst = SmallNet(), SmallNet()
    half = {k: (v.half() if v.is_floating_point() else v) for k, v in src.state_dict().items()}
    report = torchferry.load_into(dst, half)
    assert report.ok and len(report.casts) == 8
    assert re.search(r"\ncast +fc1\.weight +float16\[8, 4\] +float32\[8, 4\]\n", str(report))
    assert dst.fc1.weight.dtype == torch.float32
    assert torch.equal(dst.fc1.weight, src.fc1.weight.half().float())


def test_transformer_weights_into_an_encoder_only_model() -> None:
    """Seed 003: load a full Transformer's weights into an encoder-only model."""
    torch.manual_seed(0)
    sizes = {"d_model": 16, "nhead": 2, "dim_feedforward": 32, "batch_first": True}
    full = torch.nn.Transformer(num_encoder_layers=2, num_decoder_layers=2, **sizes)  # type: ignore[arg-type]
    encoder_only = torch.nn.Module()
    encoder_only.encoder = torch.nn.TransformerEncoder(
        torch.nn.TransformerEncoderLayer(**sizes),  # type: ignore[arg-type]
        num_layers=2,
        norm=torch.nn.LayerNorm(16),
    )
    report = torchferry.load_into(encoder_only, full, strict=False)
    assert not report.missing and not report.mismatched
    assert all(k.startswith("decoder.") for k in report.unexpected)
    assert torch.equal(encoder_only.encoder.layers[1].linear2.weight, full.encoder.layers[1].linear2.weight)


def test_checkpoint_dicts_are_searched_for_their_state_dict(tmp_path: Path) -> None:
    src = SmallNet()
    torch.save({"epoch": 3, "model_state_dict": src.state_dict(), "loss": 0.4}, tmp_path / "legacy.pth")
    report = torchferry.load_into(SmallNet(), tmp_path / "legacy.pth")
    assert report.ok and report.source.endswith("legacy.pth['model_state_dict']")
    gan = {"models": {"g": SmallNet().state_dict(), "d": SmallNet().state_dict()}}
    with pytest.raises(UsageError, match=r"several state_dicts: \['models/g', 'models/d'\]"):
        torchferry.load_into(SmallNet(), gan)
    assert torchferry.load_into(SmallNet(), gan, key="models/d").ok
    torchferry.save_checkpoint(tmp_path / "ck.safetensors", models={"g": src, "d": SmallNet()})
    dst = SmallNet()
    assert torchferry.load_into(dst, tmp_path / "ck.safetensors", key="models/g").ok
    assert same(snapshot(dst), snapshot(src))
    with pytest.raises(UsageError, match="no entry 'x'"):
        torchferry.load_into(dst, gan, key="models/x")


def test_meta_device_models_get_the_tensors_assigned(tmp_path: Path) -> None:
    src = SmallNet()
    torchferry.save(src.state_dict(), tmp_path / "w.safetensors")
    with torch.device("meta"):
        dst = SmallNet()
    report = torchferry.load_into(dst, tmp_path / "w.safetensors")
    assert report.ok and dst.fc1.weight.device.type == "cpu"
    assert torch.equal(dst.fc1.weight, src.fc1.weight)


def test_report_prints_a_summary_line() -> None:
    report = torchferry.load_into(SmallNet(), SmallNet())
    assert str(report).startswith("matched 9 of 9 model keys from module SmallNet")
