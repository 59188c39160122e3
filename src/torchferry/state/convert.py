"""Converting legacy ``torch.save`` files into safe torchferry files.

State_dicts become a plain safetensors state file; hand-made checkpoint dicts (with
``model_state_dict``/``optimizer_state_dict``...) become torchferry checkpoints that
``resume`` and ``inspect`` understand. Whole pickled models are converted to their
state_dict, and only when the caller trusts the pickle.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch

from torchferry._types import PathLike
from torchferry.errors import FileFormatError
from torchferry.state._legacy import legacy_kind, load_legacy
from torchferry.state._safetensors_io import ProgressFn, file_prefix
from torchferry.state._sources import CONVENTIONAL_KEYS, is_state_dict
from torchferry.state.checkpoint import from_legacy_checkpoint
from torchferry.state.tensors import write_structure

_CHECKPOINT_MARKERS = ("model_state_dict", "optimizer_state_dict", "epoch", "scheduler_state_dict")


@dataclass(frozen=True)
class Conversion:
    """What ``convert_legacy`` wrote."""

    source: str
    target: str
    kind: str
    """``"state_dict"``, ``"checkpoint"``, ``"module"`` (state_dict of a trusted pickled model) or ``"tree"``."""
    tensors: int
    nbytes: int


def _tensors(obj: Any) -> list[torch.Tensor]:
    if isinstance(obj, torch.Tensor):
        return [obj]
    if isinstance(obj, Mapping):
        return [t for v in obj.values() for t in _tensors(v)]
    if isinstance(obj, (list, tuple)):
        return [t for v in obj for t in _tensors(v)]
    return []


def _classify(obj: Any) -> tuple[str, Any]:
    if isinstance(obj, torch.nn.Module):
        return "module", obj.state_dict()
    if is_state_dict(obj):
        return "state_dict", obj
    looks_like_checkpoint = isinstance(obj, Mapping) and any(k in obj for k in _CHECKPOINT_MARKERS)
    if looks_like_checkpoint and any(is_state_dict(obj.get(k)) for k in CONVENTIONAL_KEYS):
        return "checkpoint", obj
    return "tree", obj


def convert_legacy(
    source: PathLike,
    target: PathLike,
    *,
    trust_pickle: bool = False,
    progress: ProgressFn | None = None,
) -> Conversion:
    """Read a ``torch.save`` file safely and write its contents as a torchferry file."""
    src, dst = os.fspath(source), os.fspath(target)
    if not legacy_kind(file_prefix(src)):
        raise FileFormatError(
            f"{src} is not a torch.save (.pt/.pth) file; only those need converting. "
            "torchferry reads safetensors files directly.",
            path=src,
        )
    kind, obj = _classify(load_legacy(src, "cpu", trust_pickle=trust_pickle))
    if kind == "checkpoint":
        write_structure(from_legacy_checkpoint(obj, src), dst, kind="checkpoint", progress=progress)
    else:
        write_structure(obj, dst, kind="tree", progress=progress)
    tensors = _tensors(obj)
    return Conversion(src, dst, kind, len(tensors), sum(t.numel() * t.element_size() for t in tensors))
