"""Finding the state_dict inside whatever the user hands ``load_into``.

A source may be a module, a state_dict, a nested checkpoint dict, or a path to one of
our files or a legacy ``.pt``/``.pth``. Checkpoint dicts written by hand usually keep
the weights under a conventional key (``model_state_dict``, ``state_dict``, ...): we
look there, say which key we used, and when it is ambiguous we list the candidates.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import torch

from torchferry._types import MapLocation
from torchferry.errors import UsageError
from torchferry.state.tensors import read

CONVENTIONAL_KEYS = ("state_dict", "model_state_dict", "model", "module", "net", "network", "model_state")


def is_state_dict(obj: object) -> bool:
    """A non-empty mapping of str keys whose values are tensors (``_extra_state`` aside)."""
    return (
        isinstance(obj, Mapping)
        and bool(obj)
        and all(
            isinstance(k, str) and (isinstance(v, torch.Tensor) or k.endswith("_extra_state")) for k, v in obj.items()
        )
    )


def _follow(obj: Any, key: str, where: str) -> Any:
    node = obj
    for part in key.split("/"):
        if isinstance(node, Mapping) and part in node:
            node = node[part]
        elif isinstance(node, Mapping) and part.isdigit() and int(part) in node:
            node = node[int(part)]
        else:
            options = sorted(map(str, node)) if isinstance(node, Mapping) else []
            raise UsageError(f"{where} has no entry {part!r} on the way to key={key!r}; it has {options}.")
    return node


def _candidates(obj: Mapping[Any, Any]) -> list[str]:
    found = []
    for key, value in obj.items():
        if is_state_dict(value):
            found.append(str(key))
        elif isinstance(value, Mapping):
            found += [f"{key}/{sub}" for sub, v in value.items() if is_state_dict(v)]
    return found


def find_state_dict(obj: Any, where: str, key: str | None = None) -> tuple[Mapping[str, torch.Tensor], str]:
    """Return the state_dict inside ``obj`` and a description of where it came from."""
    if key is not None:
        obj = _follow(obj, key, where)
        where = f"{where}[{key!r}]"
    if isinstance(obj, torch.nn.Module):
        return obj.state_dict(), where
    if is_state_dict(obj):
        return obj, where
    if isinstance(obj, Mapping):
        for conventional in CONVENTIONAL_KEYS:
            if is_state_dict(obj.get(conventional)):
                return obj[conventional], f"{where}[{conventional!r}]"
        candidates = _candidates(obj)
        if len(candidates) == 1:
            return _follow(obj, candidates[0], where), f"{where}[{candidates[0]!r}]"
        if candidates:
            raise UsageError(
                f"{where} holds several state_dicts: {candidates}. Choose one with key=..., "
                f"e.g. load_into(model, source, key={candidates[0]!r})."
            )
    kind = f"keys {sorted(map(str, obj))[:12]}" if isinstance(obj, Mapping) else f"a {type(obj).__name__}"
    raise UsageError(
        f"found no state_dict in {where} (it holds {kind}). Pass the state_dict itself, or name its entry with key=..."
    )


def resolve_source(
    source: object,
    *,
    map_location: MapLocation,
    key: str | None,
    trust_pickle: bool,
) -> tuple[Mapping[str, torch.Tensor], str]:
    """Turn any accepted ``load_into`` source into (state_dict, description)."""
    if isinstance(source, (str, os.PathLike)):
        obj = read(source, map_location, trust_pickle=trust_pickle).obj
        return find_state_dict(obj, os.fspath(source), key)
    if isinstance(source, torch.nn.Module):
        return find_state_dict(source, f"module {type(source).__name__}", key)
    if isinstance(source, Mapping):
        return find_state_dict(source, "the given state_dict", key)
    raise UsageError(
        f"load_into cannot read a source of type {type(source).__name__}. Pass a path, a state_dict or an nn.Module."
    )
