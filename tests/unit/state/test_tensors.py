"""save/load: structures, dtypes, sharing, safetensors compatibility, map_location, atomicity."""

from __future__ import annotations

import json
import math
import os
import struct
import subprocess
import sys
import textwrap
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pytest
import safetensors.torch
import torch

import torchferry
from tests.conftest import rewrite_torchferry_meta
from torchferry.errors import DeviceError, FileFormatError, UnsupportedObjectError

pytestmark = pytest.mark.unit

ALL_DTYPES = [
    torch.bool, torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64, torch.uint16, torch.uint32,
    torch.uint64, torch.float16, torch.bfloat16, torch.float32, torch.float64, torch.float8_e4m3fn,
    torch.float8_e5m2, torch.complex64, torch.complex128,
]  # fmt: skip


def random_bits(shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
    """Random bit patterns of a dtype: NaN payloads, subnormals and all."""
    nbytes = math.prod(shape) * dtype.itemsize
    raw = torch.randint(0, 256, (nbytes,), dtype=torch.uint8)
    if dtype == torch.bool:
        return (raw % 2).bool().reshape(shape)
    return raw.view(dtype).reshape(shape)


def bits(t: torch.Tensor) -> bytes:
    return t.contiguous().reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b""


@pytest.mark.parametrize("dtype", ALL_DTYPES, ids=str)
def test_every_dtype_round_trips_bit_exactly(tmp_path: Path, dtype: torch.dtype) -> None:
    values = {
        "scalar": random_bits((), dtype),
        "matrix": random_bits((3, 5), dtype),
        "empty": random_bits((0, 4), dtype),
    }
    torchferry.save(values, tmp_path / "t.safetensors")
    back = torchferry.load(tmp_path / "t.safetensors")
    for key, tensor in values.items():
        assert back[key].dtype == dtype and back[key].shape == tensor.shape
        assert bits(back[key]) == bits(tensor)


def test_nested_structure_keeps_types_and_int_keys(tmp_path: Path) -> None:
    ordered = OrderedDict(w=torch.ones(2))
    ordered._metadata = OrderedDict({"": {"version": 2}})  # type: ignore[attr-defined]
    obj = {
        "state": {0: {"step": torch.tensor(3.0)}, 1: {}},
        "groups": [{"lr": 0.1, "betas": (0.9, 0.999), "params": [0, 1], "fused": None}],
        "sd": ordered,
        "flags": [True, False, None, "ü", 2**70, float("inf"), float("-inf")],
        "size": torch.Size([2, 3]),
    }
    torchferry.save(obj, tmp_path / "s.safetensors")
    back = torchferry.load(tmp_path / "s.safetensors")
    assert list(back["state"]) == [0, 1] and back["state"][0]["step"].item() == 3.0
    assert back["groups"][0]["betas"] == (0.9, 0.999) and isinstance(back["groups"][0]["betas"], tuple)
    assert type(back["sd"]) is OrderedDict and back["sd"]._metadata == {"": {"version": 2}}
    assert back["flags"] == obj["flags"]
    assert type(back["size"]) is torch.Size and back["size"] == torch.Size([2, 3])
    nan = torchferry.load(_save(tmp_path, {"x": float("nan")}))["x"]
    assert math.isnan(nan)


def _save(tmp_path: Path, obj: object, name: str = "f.safetensors") -> Path:
    path = tmp_path / name
    torchferry.save(obj, path)
    return path


def test_tied_weights_are_stored_once_and_stay_shared(tmp_path: Path) -> None:
    emb = torch.nn.Embedding(1000, 64)
    head = torch.nn.Linear(64, 1000, bias=False)
    head.weight = emb.weight
    model = torch.nn.ModuleDict({"emb": emb, "head": head})
    path = _save(tmp_path, model.state_dict())
    assert os.path.getsize(path) < 1000 * 64 * 4 * 1.1  # one copy, not two
    back = torchferry.load(path)
    assert back["emb.weight"].data_ptr() == back["head.weight"].data_ptr()
    back["emb.weight"][0, 0] = 42.0
    assert back["head.weight"][0, 0].item() == 42.0


def test_overlapping_views_share_memory_and_slices_do_not_drag_their_base(tmp_path: Path) -> None:
    base = torch.arange(24.0)
    matrix = base.view(4, 6)
    obj = {"base": base, "row": matrix[1], "col": matrix[:, 2], "t": matrix.t()}
    back = torchferry.load(_save(tmp_path, obj))
    for key in obj:
        assert torch.equal(back[key], obj[key])
    back["base"][8] = -1.0
    assert back["col"][1].item() == -1.0 and back["row"][2].item() == -1.0 and back["t"][2, 1].item() == -1.0
    big = torch.zeros(1_000_000)
    path = _save(tmp_path, {"small": big[:10]}, "slice.safetensors")
    assert os.path.getsize(path) < 4096


def test_views_of_different_dtypes_share_one_byte_span(tmp_path: Path) -> None:
    raw = torch.arange(16, dtype=torch.uint8)
    obj = {"bytes": raw, "ints": raw.view(torch.int32)}
    back = torchferry.load(_save(tmp_path, obj))
    assert torch.equal(back["ints"], obj["ints"]) and back["ints"].dtype == torch.int32
    back["bytes"][0] = 255
    assert back["ints"][0].item() == obj["ints"][0].item() + 255 - 0


def test_non_contiguous_and_parameters(tmp_path: Path) -> None:
    t = torch.randn(6, 8)[::2, 1::3]
    p = torch.nn.Parameter(torch.randn(3), requires_grad=False)
    back = torchferry.load(_save(tmp_path, {"t": t, "p": p, "g": torch.zeros(2, requires_grad=True)}))
    assert torch.equal(back["t"], t)
    assert isinstance(back["p"], torch.nn.Parameter) and not back["p"].requires_grad
    assert back["g"].requires_grad


def test_plain_safetensors_readers_see_a_state_dict(tmp_path: Path, small_net: torch.nn.Module) -> None:
    path = _save(tmp_path, small_net.state_dict())
    plain = safetensors.torch.load_file(path)
    assert set(plain) == set(small_net.state_dict())
    for key, value in small_net.state_dict().items():
        assert torch.equal(plain[key], value)


def test_plain_safetensors_files_load_as_dicts(tmp_path: Path) -> None:
    safetensors.torch.save_file({"a": torch.ones(2), "b": torch.zeros(3, dtype=torch.int64)}, tmp_path / "p.st")
    back = torchferry.load(tmp_path / "p.st")
    assert set(back) == {"a", "b"} and back["b"].dtype == torch.int64


@pytest.mark.parametrize(
    ("value", "where", "advice"),
    [
        ({"model": torch.nn.Linear(2, 2)}, "['model']", "model.state_dict()"),
        ({"a": [1, {"b": np.zeros(3)}]}, "['a'][1]['b']", "torch.from_numpy"),
        ({"s": {1, 2}}, "['s']", "sorted list"),
        ({"sparse": torch.eye(3).to_sparse()}, "['sparse']", "dense"),
        ({"m": torch.empty(2, device="meta")}, "['m']", "Materialize"),
        ({(1, 2): torch.ones(1)}, "[(1, 2)]", "keys"),
    ],
)
def test_unsupported_values_name_the_key_path(tmp_path: Path, value: object, where: str, advice: str) -> None:
    target = tmp_path / "x.safetensors"
    with pytest.raises(UnsupportedObjectError) as info:
        torchferry.save(value, target)
    assert info.value.key_path == where
    assert f"cannot save {where}" in str(info.value) and advice in str(info.value)
    assert not target.exists() and list(tmp_path.iterdir()) == []


def test_cycles_are_refused(tmp_path: Path) -> None:
    loop: dict[str, object] = {}
    loop["self"] = loop
    with pytest.raises(UnsupportedObjectError, match="contains itself"):
        torchferry.save(loop, tmp_path / "x")


# ------------------------------------------------------------------------------- map_location


def _cuda_file(tmp_path: Path) -> Path:
    """A file whose tensors say they were saved on cuda:0 (we have no GPU to save from)."""
    path = _save(tmp_path, {"w": torch.arange(4.0), "n": 1}, "gpu.safetensors")
    rewrite_torchferry_meta(path, lambda meta: meta["stored"].update({"w": {"device": "cuda:0"}}))
    return path


def test_gpu_saved_file_loads_on_cpu_with_each_map_location_form(tmp_path: Path) -> None:
    path = _cuda_file(tmp_path)
    seen: list[str] = []

    def keep_on_cpu(storage: torch.UntypedStorage, location: str) -> torch.UntypedStorage:
        seen.append(location)
        return storage

    for location in ("cpu", torch.device("cpu"), {"cuda:0": "cpu"}, keep_on_cpu):
        back = torchferry.load(path, map_location=location)
        assert back["w"].device.type == "cpu" and torch.equal(back["w"], torch.arange(4.0))
    assert seen == ["cuda:0"]


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_gpu_saved_file_without_map_location_explains_the_fix(tmp_path: Path) -> None:
    path = _cuda_file(tmp_path)
    with pytest.raises(DeviceError, match=r"were saved on cuda:0, which is not available here .*map_location='cpu'"):
        torchferry.load(path)
    with pytest.raises(DeviceError, match=r"cannot place tensors saved on cuda:0 onto cuda:1 .*map_location"):
        torchferry.load(path, map_location={"cuda:0": "cuda:1"})


def test_bad_map_location_values(tmp_path: Path) -> None:
    path = _save(tmp_path, {"w": torch.ones(1)})
    with pytest.raises(DeviceError, match="not a device"):
        torchferry.load(path, map_location="gpu-please")
    with pytest.raises(DeviceError, match="must return a storage"):
        torchferry.load(path, map_location=lambda storage, loc: "nope")


def test_newer_format_asks_for_an_upgrade(tmp_path: Path) -> None:
    path = _save(tmp_path, {"w": torch.ones(1)})
    rewrite_torchferry_meta(path, lambda meta: meta.update(format="torchferry.state/99"))
    with pytest.raises(FileFormatError, match="pip install -U torchferry"):
        torchferry.load(path)


# ------------------------------------------------------------------------------- atomicity

_KILLED_WRITER = textwrap.dedent(
    """
    import os, signal, sys, torch, torchferry
    def die(n):
        os.kill(os.getpid(), signal.SIGKILL)
    torchferry.save({"w": torch.full((4, 1 << 20), 7.0), "v": torch.ones(1 << 20)}, sys.argv[1], progress=die)
    """
)


def test_killed_writer_leaves_the_old_file_intact(tmp_path: Path) -> None:
    target = tmp_path / "ckpt.safetensors"
    torchferry.save({"w": torch.ones(3)}, target)
    before = target.read_bytes()
    proc = subprocess.run([sys.executable, "-c", _KILLED_WRITER, str(target)], capture_output=True, timeout=120)
    assert proc.returncode == -9, proc.stderr.decode()
    assert target.read_bytes() == before
    assert torch.equal(torchferry.load(target)["w"], torch.ones(3))
    leftovers = [p for p in tmp_path.iterdir() if p != target]
    assert len(leftovers) == 1 and leftovers[0].name.startswith(".ckpt.safetensors.")  # the dead writer's temp
    torchferry.save({"w": torch.zeros(3)}, target)  # the next writer sweeps it away
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt.safetensors"]


def test_failed_save_leaves_nothing_behind(tmp_path: Path) -> None:
    target = tmp_path / "x.safetensors"
    torchferry.save({"ok": torch.ones(1)}, target)

    def fail(n: int) -> None:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        torchferry.save({"w": torch.ones(10)}, target, progress=fail)
    assert [p.name for p in tmp_path.iterdir()] == ["x.safetensors"]
    assert torch.equal(torchferry.load(target)["ok"], torch.ones(1))


# ------------------------------------------------------------------------------- mmap


def test_default_load_maps_the_file_copy_on_write(tmp_path: Path) -> None:
    path = _save(tmp_path, {"w": torch.arange(1000.0), "i": torch.arange(7)})
    on_disk = path.read_bytes()
    mapped = torchferry.load(path)
    eager = torchferry.load(path, mmap=False)
    for key in ("w", "i"):
        assert torch.equal(mapped[key], eager[key])
    mapped["w"].add_(1.0)  # private mapping: the file never changes
    assert path.read_bytes() == on_disk
    assert torch.equal(torchferry.load(path)["w"], torch.arange(1000.0))


def test_mapped_tensors_outlive_a_replaced_file(tmp_path: Path) -> None:
    path = _save(tmp_path, {"w": torch.full((256,), 3.0)})
    old = torchferry.load(path)["w"]
    torchferry.save({"w": torch.zeros(256)}, path)  # atomic rename: the old mapping stays valid
    assert torch.equal(old, torch.full((256,), 3.0))
    assert torch.equal(torchferry.load(path)["w"], torch.zeros(256))


def test_unaligned_tensors_from_other_writers_are_read_not_mapped(tmp_path: Path) -> None:
    """Other writers may leave a tensor at an offset its dtype cannot be mapped at."""
    path = tmp_path / "odd.safetensors"
    safetensors.torch.save_file({"a": torch.arange(3, dtype=torch.uint8), "b": torch.arange(4.0)}, path)
    raw = bytearray(path.read_bytes())
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8 : 8 + n])
    data = raw[8 + n :]
    a_begin, a_end = header["a"]["data_offsets"]
    b_begin, b_end = header["b"]["data_offsets"]
    header["a"]["data_offsets"], header["b"]["data_offsets"] = [0, 3], [3, 19]  # b now starts at byte 3
    body = json.dumps(header).encode()
    body += b" " * (-len(body) % 8)
    path.write_bytes(struct.pack("<Q", len(body)) + body + data[a_begin:a_end] + data[b_begin:b_end])
    back = torchferry.load(path)
    assert torch.equal(back["b"], torch.arange(4.0)) and torch.equal(back["a"], torch.arange(3, dtype=torch.uint8))


@pytest.mark.parametrize("pad", [0, 8, 16, 24])
def test_wide_views_of_shared_bytes_are_aligned_and_still_shared(tmp_path: Path, pad: int) -> None:
    """A complex128 tensor and a uint8 view of it are stored as one byte span; mapped from the file
    that span may be only 8-byte aligned, and complex128 kernels crash on that (found by hypothesis)."""
    value = torch.tensor([1 + 2j, -3 + 0.5j], dtype=torch.complex128)
    obj = {"pad": torch.zeros(pad, dtype=torch.uint8), "c": value, "bytes": value.view(torch.uint8)}
    torchferry.save(obj, tmp_path / "c.safetensors", fsync=False)
    out = torchferry.load(tmp_path / "c.safetensors")
    assert out["c"].data_ptr() % 16 == 0
    assert torch.equal(out["c"].clone(), value)
    assert out["c"].untyped_storage().data_ptr() == out["bytes"].untyped_storage().data_ptr()
