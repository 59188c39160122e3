"""``load_into``: load weights into a model, tolerating what the user allows and
reporting everything.

Unlike ``Module.load_state_dict``, shape mismatches never abort a non-strict load (they
are skipped and reported), wrapper prefixes are diagnosed with the exact ``rename`` to
pass, and a strict load checks everything *before* touching the model, so a failed load
leaves the model exactly as it was.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from torchferry._types import MapLocation
from torchferry.errors import StateDictMismatchError
from torchferry.state._rename import RenameSpec, apply_rename, prefix_hint
from torchferry.state._sources import resolve_source
from torchferry.state.report import DtypeCast, LoadReport, ShapeMismatch, describe_tensor

__all__ = ["load_into", "plan_load", "apply_plan"]


def _default_location(model: torch.nn.Module) -> MapLocation:
    for tensor in model.state_dict().values():
        if isinstance(tensor, torch.Tensor) and tensor.device.type != "meta":
            return tensor.device
    return "cpu"


def _describe(value: object) -> str:
    return describe_tensor(value) if isinstance(value, torch.Tensor) else type(value).__name__


def plan_load(
    model: torch.nn.Module,
    state_dict: Mapping[str, torch.Tensor],
    source: str,
    rename: RenameSpec = None,
) -> tuple[LoadReport, dict[str, torch.Tensor]]:
    """Compare a state_dict with a model without changing either; return what would load."""
    targets = model.state_dict()
    names = apply_rename(state_dict.keys(), rename)
    incoming = {new: state_dict[old] for old, new in names.items()}
    loaded, mismatched, casts = [], [], []
    to_load: dict[str, torch.Tensor] = {}
    for key, target in targets.items():
        value = incoming.get(key)
        if value is None:
            continue
        if not isinstance(target, torch.Tensor) or not isinstance(value, torch.Tensor):
            to_load[key] = value
            loaded.append(key)
            continue
        if value.shape != target.shape:
            mismatched.append(ShapeMismatch(key, describe_tensor(value), describe_tensor(target)))
            continue
        if value.dtype != target.dtype:
            casts.append(DtypeCast(key, describe_tensor(value), describe_tensor(target)))
            value = value.to(target.dtype)
        to_load[key] = value
        loaded.append(key)
    missing = [k for k in targets if k not in incoming]
    unexpected = [k for k in incoming if k not in targets]
    report = LoadReport(
        source=source,
        loaded=tuple(loaded),
        missing=tuple(missing),
        unexpected=tuple(unexpected),
        mismatched=tuple(mismatched),
        casts=tuple(casts),
        renamed=sum(1 for old, new in names.items() if old != new),
        hint=prefix_hint(missing, unexpected),
        model_keys=len(targets),
        shapes={k: _describe(targets[k]) for k in missing} | {k: _describe(incoming[k]) for k in unexpected},
    )
    return report, to_load


def raise_if_strict(report: LoadReport, strict: bool) -> None:
    """Raise the strict-mode error (carrying the report's table) when keys do not match."""
    if strict and not report.ok:
        raise StateDictMismatchError(
            f"{report}\nNothing was loaded: the model is unchanged. Fix the keys (see the hint and "
            "rename=...), or pass strict=False to load every key that matches.",
            report=report,
        )


def apply_plan(model: torch.nn.Module, to_load: Mapping[str, torch.Tensor], assign: bool | None) -> None:
    """Copy the planned tensors into the model (assigning them for meta-device models)."""
    if assign is None:
        assign = any(t.is_meta for t in model.state_dict().values() if isinstance(t, torch.Tensor))
    model.load_state_dict(dict(to_load), strict=False, assign=assign)


def load_into(
    model: torch.nn.Module,
    source: object,
    *,
    strict: bool = True,
    rename: RenameSpec = None,
    map_location: MapLocation = None,
    key: str | None = None,
    assign: bool | None = None,
    trust_pickle: bool = False,
) -> LoadReport:
    """Load weights from ``source`` into ``model`` and report every key.

    ``source``: a path (a torchferry/safetensors file or a legacy ``.pt``/``.pth``), a
    state_dict, a checkpoint dict, or another module. ``rename``: ``{"module.": ""}``,
    ``[(regex, repl), ...]`` or a function of the key. ``strict=True`` raises
    ``StateDictMismatchError`` (with the report's table) and changes nothing unless all
    keys match; ``strict=False`` loads every key whose shape matches. ``key`` selects a
    state_dict inside a checkpoint (``"models/generator"``). ``map_location`` defaults
    to the model's device. Meta-device models get the tensors assigned (``assign=True``).

    >>> import torch, torchferry
    >>> src = torch.nn.Linear(2, 2); dst = torch.nn.Linear(2, 2)
    >>> torchferry.load_into(dst, src).ok
    True
    """
    location = _default_location(model) if map_location is None else map_location
    state_dict, where = resolve_source(source, map_location=location, key=key, trust_pickle=trust_pickle)
    report, to_load = plan_load(model, state_dict, where, rename)
    raise_if_strict(report, strict)
    apply_plan(model, to_load, assign)
    return report
