"""Training checkpoints: everything needed to continue training exactly where it stopped.

A checkpoint is a torchferry state file (kind ``checkpoint``) holding the models'
state_dicts and train/eval modes, optimizers, schedulers, a GradScaler, epoch, step,
user extras and the global RNG states. ``resume`` checks everything against the live
objects first and only then restores, so a checkpoint that does not fit leaves the
models and optimizers untouched.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch

from torchferry._types import MapLocation, PathLike
from torchferry.errors import CheckpointError, CorruptFileError, FerryError
from torchferry.state import _rng
from torchferry.state._rename import RenameSpec
from torchferry.state._safetensors_io import ProgressFn
from torchferry.state.load_into import apply_plan, plan_load, raise_if_strict
from torchferry.state.report import LoadReport
from torchferry.state.tensors import read, write_structure

__all__ = ["Checkpoint", "resume", "save_checkpoint"]


class Stateful(Protocol):
    def state_dict(self) -> dict[str, Any]: ...
    def load_state_dict(self, state_dict: dict[str, Any]) -> Any: ...


def _named(kind: str, one: Any, many: Mapping[str, Any] | None) -> dict[str, Any]:
    result = dict(many or {})
    if one is not None:
        if kind in result:
            raise CheckpointError(f"both {kind}= and {kind}s={{'{kind}': ...}} were given; pass it once.")
        result[kind] = one
    return result


def _modes(model: torch.nn.Module) -> dict[str, Any]:
    """The root's mode and the submodules whose mode differs from it."""
    return {
        "training": model.training,
        "differs": [name for name, sub in model.named_modules() if name and sub.training != model.training],
    }


def save_checkpoint(
    path: PathLike,
    *,
    model: torch.nn.Module | None = None,
    models: Mapping[str, torch.nn.Module] | None = None,
    optimizer: Stateful | None = None,
    optimizers: Mapping[str, Stateful] | None = None,
    scheduler: Stateful | None = None,
    schedulers: Mapping[str, Stateful] | None = None,
    scaler: Stateful | None = None,
    epoch: int | None = None,
    step: int | None = None,
    rng: bool = True,
    fsync: bool = True,
    progress: ProgressFn | None = None,
    **extra: Any,
) -> None:
    """Atomically save a full training checkpoint.

    ``model``/``optimizer``/``scheduler`` are stored under those names; ``models={...}``
    etc. store several (a GAN's generator and discriminator). ``extra`` keyword values
    (loss, best metric, config dicts) must be tensors or JSON-like. RNG states are kept
    unless ``rng=False``.
    """
    named_models = _named("model", model, models)
    state: dict[str, Any] = {
        "models": {name: m.state_dict() for name, m in named_models.items()},
        "modes": {name: _modes(m) for name, m in named_models.items()},
        "optimizers": {n: o.state_dict() for n, o in _named("optimizer", optimizer, optimizers).items()},
        "schedulers": {n: s.state_dict() for n, s in _named("scheduler", scheduler, schedulers).items()},
        "scaler": None if scaler is None else scaler.state_dict(),
        "epoch": epoch,
        "step": step,
        "extra": extra,
        "rng": _rng.capture() if rng else None,
    }
    write_structure(state, path, kind="checkpoint", fsync=fsync, progress=progress)


@dataclass(frozen=True)
class Checkpoint:
    """What ``resume`` restored, and the values saved beside the state.

    ``modes`` tells the mode ("train"/"eval") each model was put back in; ``reports``
    holds one :class:`LoadReport` per model.
    """

    path: str
    epoch: int | None
    step: int | None
    extra: dict[str, Any]
    modes: dict[str, str] = field(default_factory=dict)
    reports: dict[str, LoadReport] = field(default_factory=dict)
    restored: tuple[str, ...] = ()

    def __str__(self) -> str:
        modes = ", ".join(f"{name} in {mode} mode" for name, mode in self.modes.items())
        return f"resumed {self.path}: epoch={self.epoch} step={self.step}; restored {', '.join(self.restored)}" + (
            f"; {modes}" if modes else ""
        )


_LEGACY_MODEL_KEYS = ("model_state_dict", "state_dict", "model")
_LEGACY_OPTIMIZER_KEYS = ("optimizer_state_dict", "optimizer")
_LEGACY_SCHEDULER_KEYS = ("scheduler_state_dict", "lr_scheduler", "scheduler")


def _first(obj: Mapping[str, Any], keys: tuple[str, ...]) -> tuple[str | None, Any]:
    for key in keys:
        if isinstance(obj.get(key), Mapping):
            return key, obj[key]
    return None, None


def from_legacy_checkpoint(obj: Any, path: str) -> dict[str, Any]:
    """Read a hand-made ``torch.save`` checkpoint dict (``model_state_dict`` etc.)."""
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"{path} holds a {type(obj).__name__}, not a checkpoint dict.")
    used = set()
    state: dict[str, Any] = {"models": {}, "optimizers": {}, "schedulers": {}, "modes": {}}
    for section, name, keys in (
        ("models", "model", _LEGACY_MODEL_KEYS),
        ("optimizers", "optimizer", _LEGACY_OPTIMIZER_KEYS),
        ("schedulers", "scheduler", _LEGACY_SCHEDULER_KEYS),
    ):
        key, value = _first(obj, keys)
        if key is not None:
            state[section][name] = value
            used.add(key)
    state["epoch"], state["step"] = obj.get("epoch"), obj.get("step")
    state["extra"] = {k: v for k, v in obj.items() if k not in used | {"epoch", "step"}}
    state["scaler"] = None
    state["rng"] = None
    return state


def _pick(saved: Mapping[str, Any], wanted: Mapping[str, Any], section: str, path: str) -> dict[str, Any]:
    """Match the live objects to saved entries by name (a lone one matches a lone one)."""
    if len(wanted) == 1 and len(saved) == 1:
        return {next(iter(wanted)): next(iter(saved.values()))}
    absent = [name for name in wanted if name not in saved]
    if absent:
        raise CheckpointError(
            f"{path} has no {section} named {absent}; it has {sorted(saved)}. "
            f"Pass {section}={{name: obj}} with those names."
        )
    return {name: saved[name] for name in wanted}


def _check_optimizer(name: str, live: Stateful, saved: Mapping[str, Any], path: str) -> None:
    groups = getattr(live, "param_groups", None)
    saved_groups = saved.get("param_groups")
    if groups is None or not isinstance(saved_groups, list):
        return
    live_sizes = [len(g["params"]) for g in groups]
    saved_sizes = [len(g.get("params", [])) for g in saved_groups]
    if live_sizes != saved_sizes:
        raise CheckpointError(
            f"optimizer {name!r} in {path} has parameter groups of sizes {saved_sizes}, but the live "
            f"optimizer has {live_sizes}. Build the optimizer over the same parameters as when saving."
        )


_MAP_SECTIONS = ("models", "optimizers", "schedulers", "modes")


def _validated(obj: Any, path: str) -> dict[str, Any]:
    """Check the shape of a checkpoint tree before anything is taken from it."""
    problem = None
    if not isinstance(obj, Mapping):
        problem = f"it holds a {type(obj).__name__}, not a map"
    else:
        for section in _MAP_SECTIONS:
            value = obj.get(section)
            if value is not None and not (
                isinstance(value, Mapping) and all(isinstance(v, Mapping) for v in value.values())
            ):
                problem = f"its {section!r} section is not a map of names to state"
        for section in ("extra", "rng", "scaler"):
            if obj.get(section) is not None and not isinstance(obj[section], Mapping):
                problem = f"its {section!r} section is not a map"
    if problem:
        raise CorruptFileError(f"{path} is damaged: {problem}. Re-create the checkpoint.", path=path)
    return dict(obj)


def _load_checkpoint_state(path: str, map_location: MapLocation, progress: ProgressFn | None) -> dict[str, Any]:
    loaded = read(path, map_location, progress=progress)
    if loaded.kind == "checkpoint":
        return _validated(loaded.obj, path)
    if loaded.kind == "legacy":
        return from_legacy_checkpoint(loaded.obj, path)
    raise CheckpointError(
        f"{path} is a plain tensor file, not a checkpoint. Load weights with torchferry.load_into(model, path), "
        "or write checkpoints with torchferry.save_checkpoint."
    )


def resume(
    path: PathLike,
    *,
    model: torch.nn.Module | None = None,
    models: Mapping[str, torch.nn.Module] | None = None,
    optimizer: Stateful | None = None,
    optimizers: Mapping[str, Stateful] | None = None,
    scheduler: Stateful | None = None,
    schedulers: Mapping[str, Stateful] | None = None,
    scaler: Stateful | None = None,
    map_location: MapLocation = "cpu",
    strict: bool = True,
    rename: RenameSpec = None,
    restore_rng: bool = True,
    progress: ProgressFn | None = None,
) -> Checkpoint:
    """Restore a checkpoint into live objects and return what else it held.

    Everything is checked before anything is changed: a strict key mismatch, a missing
    model or optimizer, or a wrong optimizer shape raises and leaves all objects as they
    were. Models are put back in the train/eval mode they were saved in. Also reads
    legacy ``torch.save`` dicts with ``model_state_dict``/``optimizer_state_dict`` keys.
    ``map_location`` defaults to ``"cpu"``: loading copies into the live objects, which
    stay on their own devices, so a GPU checkpoint resumes on a CPU-only host too.
    ``rename`` applies to every model's keys, as in ``load_into`` (e.g. a checkpoint
    saved from a DDP-wrapped model: ``rename={"module.": ""}``).
    """
    spath = os.fspath(path)
    state = _load_checkpoint_state(spath, map_location, progress)
    live: dict[str, dict[str, Any]] = {
        "models": _named("model", model, models),
        "optimizers": _named("optimizer", optimizer, optimizers),
        "schedulers": _named("scheduler", scheduler, schedulers),
    }
    saved = {section: _pick(state.get(section) or {}, live[section], section, spath) for section in live}
    if scaler is not None and not state.get("scaler"):
        raise CheckpointError(f"{spath} holds no GradScaler state; do not pass scaler=, or save it with scaler=.")
    plans = {}
    for name, module in live["models"].items():
        report, to_load = plan_load(module, saved["models"][name], f"{spath} (model {name!r})", rename)
        raise_if_strict(report, strict)
        plans[name] = (report, to_load)
    for name, live_opt in live["optimizers"].items():
        _check_optimizer(name, live_opt, saved["optimizers"][name], spath)
    restore_generators = _prepare_rng(state.get("rng") if restore_rng else None, spath)

    modes = {}
    for name, module in live["models"].items():
        apply_plan(module, plans[name][1], assign=None)
        modes[name] = _restore_mode(module, (state.get("modes") or {}).get(name))
    restored = [f"model {name!r}" for name in live["models"]]
    restored += _restore_stateful(live, saved, scaler, state.get("scaler"), spath)
    restored += [f"rng {n}" for n in restore_generators()]
    return Checkpoint(
        path=spath,
        epoch=state.get("epoch"),
        step=state.get("step"),
        extra=dict(state.get("extra") or {}),
        modes=modes,
        reports={name: plan[0] for name, plan in plans.items()},
        restored=tuple(restored),
    )


def _prepare_rng(state: Any, path: str) -> _rng.Restorer:
    if not state:
        return list
    try:
        return _rng.prepare(state)
    except (KeyError, TypeError, ValueError, AttributeError, RuntimeError) as exc:
        raise CorruptFileError(
            f"{path}: the saved RNG states are damaged ({exc}). Re-create the checkpoint.", path=path
        ) from None


def _restore_stateful(
    live: dict[str, dict[str, Any]],
    saved: dict[str, dict[str, Any]],
    scaler: Stateful | None,
    scaler_state: Any,
    path: str,
) -> list[str]:
    """Load optimizers, schedulers and the scaler, whose checks already passed."""
    restored = []
    try:
        for section, label in (("optimizers", "optimizer"), ("schedulers", "scheduler")):
            for name, obj in live[section].items():
                obj.load_state_dict(saved[section][name])
                restored.append(f"{label} {name!r}")
        if scaler is not None:
            scaler.load_state_dict(scaler_state)
            restored.append("scaler")
    except FerryError:
        raise
    except (ValueError, KeyError, TypeError, RuntimeError) as exc:
        raise CheckpointError(f"{path}: restoring failed after checks passed ({exc}).") from exc
    return restored


def _restore_mode(model: torch.nn.Module, saved: Any) -> str:
    if not isinstance(saved, Mapping):
        return "train" if model.training else "eval"
    model.train(bool(saved.get("training", True)))
    submodules = dict(model.named_modules())
    for name in saved.get("differs", []):
        if name in submodules:
            submodules[name].train(not model.training)
    return "train" if model.training else "eval"
