"""``describe``: what a state file holds, without reading (or running) its contents.

For our files and plain safetensors only the header is read: tensors are rebuilt on
the ``meta`` device, so describing a 10 GB checkpoint reads a few KB. Legacy zip files
are opened with ``weights_only`` and ``mmap``, so their data is not read either.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch

from torchferry._types import PathLike
from torchferry.state import _tree
from torchferry.state._legacy import legacy_kind, load_legacy
from torchferry.state._safetensors_io import Header, file_prefix, looks_like_safetensors, read_header
from torchferry.state.tensors import parse_meta, restore_complex, unknown_format


@dataclass(frozen=True)
class TensorInfo:
    name: str
    dtype: str
    shape: tuple[int, ...]
    nbytes: int

    @property
    def numel(self) -> int:
        return math.prod(self.shape)


@dataclass(frozen=True)
class StateSummary:
    """The contents of a state file: its tensors, and for checkpoints their bookkeeping."""

    path: str
    format: str
    file_bytes: int
    tensors: tuple[TensorInfo, ...]
    data_bytes: int
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def numel(self) -> int:
        return sum(t.numel for t in self.tensors)


def _leaves(obj: Any, prefix: str = "") -> Iterator[tuple[str, Any]]:
    if isinstance(obj, Mapping):
        for key, value in obj.items():
            yield from _leaves(value, f"{prefix}{key}/")
    elif isinstance(obj, (list, tuple)) and not isinstance(obj, torch.Size):
        for i, value in enumerate(obj):
            yield from _leaves(value, f"{prefix}{i}/")
    else:
        yield prefix.rstrip("/") or "tensor", obj


def _tensor_infos(obj: Any) -> tuple[TensorInfo, ...]:
    return tuple(
        TensorInfo(name, str(t.dtype).removeprefix("torch."), tuple(t.shape), t.numel() * t.element_size())
        for name, t in _leaves(obj)
        if isinstance(t, torch.Tensor)
    )


def _brief(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return f"tensor {str(value.dtype).removeprefix('torch.')}{list(value.shape)}"
    if isinstance(value, Mapping):
        return {str(k): _brief(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_brief(v) for v in value][:20]
    return value


def _names(section: Any) -> list[str]:
    """The entry names of a checkpoint section; a damaged section shows as empty."""
    return sorted(str(k) for k in section) if isinstance(section, Mapping) else []


def _checkpoint_info(state: Mapping[str, Any]) -> dict[str, Any]:
    modes = state.get("modes")
    models: Any = _names(state.get("models"))
    if isinstance(modes, Mapping) and modes:
        models = {
            str(name): ("train" if isinstance(m, Mapping) and m.get("training") else "eval")
            for name, m in modes.items()
        }
    return {
        "epoch": state.get("epoch"),
        "step": state.get("step"),
        "models": models,
        "optimizers": _names(state.get("optimizers")),
        "schedulers": _names(state.get("schedulers")),
        "scaler": bool(state.get("scaler")),
        "rng": _names(state.get("rng")),
        "extra": _brief(state.get("extra") or {}),
    }


def _describe_ours(header: Header, size: int) -> StateSummary:
    meta = parse_meta(header)
    if meta is None:
        tensors = tuple(
            TensorInfo(e.name, str(e.dtype).removeprefix("torch."), e.shape, e.nbytes) for e in header.entries.values()
        )
        return StateSummary(header.path, "safetensors", size, tensors, header.data_bytes, dict(header.metadata))
    stored = {name: torch.empty(e.shape, dtype=e.dtype, device="meta") for name, e in header.entries.items()}
    for name, info in meta.get("stored", {}).items():
        if isinstance(info, dict) and name in stored:
            stored[name] = restore_complex(stored[name], info, header.path)
    try:
        obj = _tree.decode(meta.get("tree"), stored)
    except (_tree.TreeError, KeyError, TypeError, ValueError, RuntimeError):
        obj = stored
    if meta["kind"] == "checkpoint" and isinstance(obj, Mapping):
        info = _checkpoint_info(obj)
        info["saved with"] = f"torch {meta.get('torch')}, torchferry {meta.get('torchferry')}"
        return StateSummary(header.path, "torchferry checkpoint", size, _tensor_infos(obj), header.data_bytes, info)
    info = {"saved with": f"torch {meta.get('torch')}, torchferry {meta.get('torchferry')}"}
    return StateSummary(header.path, "torchferry state", size, _tensor_infos(obj), header.data_bytes, info)


def describe(path: PathLike) -> StateSummary:
    """Summarize a torchferry, safetensors or legacy ``torch.save`` file."""
    spath = os.fspath(path)
    prefix = file_prefix(spath)
    size = os.path.getsize(spath)
    if looks_like_safetensors(prefix):
        return _describe_ours(read_header(spath), size)
    kind = legacy_kind(prefix)
    if kind is None:
        raise unknown_format(spath, prefix)
    obj = load_legacy(spath, "cpu")
    tensors = _tensor_infos(obj)
    info: dict[str, Any] = {}
    if isinstance(obj, Mapping):
        info = {str(k): _brief(v) for k, v in obj.items() if not isinstance(v, (Mapping, torch.Tensor))}
    label = "torch.save zip" if kind == "zip" else "torch.save legacy pickle"
    return StateSummary(spath, label, size, tensors, sum(t.nbytes for t in tensors), info)
