"""Parsing what CLI users type: ``MODULE:FACTORY`` references and ``name=dtype[shape]`` examples."""

from __future__ import annotations

import importlib
import json
import re
import sys
from pathlib import Path
from typing import Any

import torch

from torchferry.archive.signature import DTYPE_BY_NAME
from torchferry.errors import UsageError

_EXAMPLE = re.compile(r"(?:(?P<name>[A-Za-z_]\w*)=)?(?P<dtype>\w+)\[(?P<shape>[0-9, ]*)\]")

__all__ = ["build_model", "examples_argument", "parse_example", "read_labels"]


def _resolve(reference: str) -> Any:
    module_name, sep, attribute = reference.partition(":")
    if not sep or not module_name or not attribute:
        raise UsageError(f"{reference!r} is not MODULE:NAME (for example models.net:build_model or net:Net).")
    if str(Path.cwd()) not in sys.path:
        sys.path.insert(0, str(Path.cwd()))  # so a model file in the current directory is importable
    try:
        target: Any = importlib.import_module(module_name)
    except ImportError as exc:
        raise UsageError(
            f"cannot import {module_name!r} ({exc}); run from the directory that contains it or add it to PYTHONPATH."
        ) from None
    for part in attribute.split("."):
        if not hasattr(target, part):
            raise UsageError(f"{module_name!r} has no attribute {attribute!r}.")
        target = getattr(target, part)
    return target


def build_model(reference: str, init_args: str | None = None) -> torch.nn.Module:
    """The module ``MODULE:FACTORY`` names: a module instance, or a class/function called with ``init_args``."""
    target = _resolve(reference)
    kwargs: Any = {}
    if init_args:
        try:
            kwargs = json.loads(init_args)
        except ValueError as exc:
            raise UsageError(
                f"--init-args is not valid JSON ({exc}); e.g. --init-args '{{\"classes\": 10}}'."
            ) from None
    if isinstance(target, torch.nn.Module):
        return target
    if not callable(target):
        raise UsageError(f"{reference} is neither a torch.nn.Module nor a callable that returns one.")
    model = target(*kwargs) if isinstance(kwargs, list) else target(**kwargs)
    if not isinstance(model, torch.nn.Module):
        raise UsageError(f"{reference}(...) returned {type(model).__name__}, not a torch.nn.Module.")
    return model


def parse_example(spec: str) -> tuple[str | None, torch.Tensor]:
    """``x=float32[1,4]`` → ("x", a random tensor of that dtype and shape)."""
    match = _EXAMPLE.fullmatch(spec.strip())
    if match is None:
        raise UsageError(f"--example {spec!r} is not NAME=DTYPE[SHAPE], e.g. --example 'x=float32[1,4]'.")
    dtype_name = match["dtype"]
    if dtype_name not in DTYPE_BY_NAME:
        raise UsageError(f"--example {spec!r}: unknown dtype {dtype_name!r}; use one of {', '.join(DTYPE_BY_NAME)}.")
    shape = [int(d) for d in match["shape"].replace(" ", "").split(",") if d]
    dtype = DTYPE_BY_NAME[dtype_name]
    generator = torch.Generator().manual_seed(0)
    if dtype.is_floating_point or dtype.is_complex:
        tensor = torch.randn(shape, generator=generator).to(dtype)
    elif dtype == torch.bool:
        tensor = torch.randint(0, 2, shape, generator=generator).bool()
    else:
        tensor = torch.randint(0, 10, shape, generator=generator).to(dtype)
    return match["name"], tensor


def examples_argument(specs: list[str]) -> Any:
    """The ``example_inputs`` for ``pack``: a dict when every spec is named, else a tuple."""
    if not specs:
        raise UsageError("give at least one --example, e.g. --example 'x=float32[1,4]'.")
    parsed = [parse_example(s) for s in specs]
    if all(name for name, _ in parsed):
        return {name: tensor for name, tensor in parsed}
    return tuple(tensor for _, tensor in parsed)


def read_labels(path: Path | None) -> list[str] | None:
    """Labels from a text file (one per line) or a JSON list."""
    if path is None:
        return None
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise UsageError(f"cannot read --labels {path} ({exc.strerror or exc}).") from None
    if text.lstrip().startswith("["):
        try:
            labels = json.loads(text)
        except ValueError as exc:
            raise UsageError(f"--labels {path} looks like JSON but is not valid ({exc}).") from None
        if not isinstance(labels, list):
            raise UsageError(f"--labels {path} must hold a JSON list of names.")
        return [str(label) for label in labels]
    return [line.strip() for line in text.splitlines() if line.strip()]
