"""Shared type aliases: the common vocabulary of every layer."""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from typing import Any, TypeAlias

import torch

PathLike: TypeAlias = str | os.PathLike[str]
"""A filesystem path as users pass it."""

DeviceLike: TypeAlias = str | int | torch.device
"""Anything ``torch.device()`` accepts."""

MapLocation: TypeAlias = DeviceLike | Mapping[str, str] | Callable[[torch.UntypedStorage, str], Any] | None
"""Where loaded tensors go, with the same meanings as ``torch.load``'s ``map_location``."""

TensorTree = Any
"""A tensor, a JSON scalar, or any nesting of dict/list/tuple of them."""

StateDict = Mapping[str, torch.Tensor]
"""A flat mapping of parameter/buffer names to tensors."""
