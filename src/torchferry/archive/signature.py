"""Input/output signatures: inferred from the examples at pack time, checked at predict time."""

from __future__ import annotations

import inspect
from collections.abc import Mapping, Sequence
from typing import Any

import torch

from torchferry.archive.manifest import DTYPES, TensorSpec
from torchferry.errors import PackagingError, UsageError

DTYPE_BY_NAME: dict[str, torch.dtype] = {name: getattr(torch, name) for name in DTYPES}
NAME_BY_DTYPE: dict[torch.dtype, str] = {dtype: name for name, dtype in DTYPE_BY_NAME.items()}

__all__ = ["DTYPE_BY_NAME", "NAME_BY_DTYPE", "flatten_outputs", "input_names", "named_examples", "tensor_specs"]


def input_names(model: torch.nn.Module, count: int) -> list[str]:
    """Names of ``forward``'s first ``count`` positional parameters (``input_<i>`` for ``*args``)."""
    try:
        parameters = list(inspect.signature(model.forward).parameters.values())
    except (TypeError, ValueError):
        parameters = []
    names: list[str] = []
    for parameter in parameters:
        if parameter.kind in (parameter.POSITIONAL_ONLY, parameter.POSITIONAL_OR_KEYWORD):
            names.append(parameter.name)
        elif parameter.kind == parameter.VAR_POSITIONAL:
            break
    names = names[:count]
    return names + [f"input_{i}" for i in range(len(names), count)]


def named_examples(model: torch.nn.Module, example_inputs: Any) -> dict[str, torch.Tensor]:
    """The examples as ``{forward parameter name: tensor}``, in ``forward``'s order."""
    if isinstance(example_inputs, torch.Tensor):
        example_inputs = (example_inputs,)
    if isinstance(example_inputs, Mapping):
        order = input_names(model, 1_000)
        unknown = [k for k in example_inputs if k not in order]
        if unknown:
            raise UsageError(
                f"example_inputs names {unknown} are not parameters of {type(model).__name__}.forward "
                f"(it takes {order})."
            )
        named = {name: example_inputs[name] for name in order if name in example_inputs}
    elif isinstance(example_inputs, (tuple, list)):
        named = dict(zip(input_names(model, len(example_inputs)), example_inputs))
    else:
        raise UsageError(
            "example_inputs must be a tensor, a tuple of tensors (forward's positional arguments) or a dict "
            f"{{name: tensor}}, not {type(example_inputs).__name__}."
        )
    bad = [name for name, value in named.items() if not isinstance(value, torch.Tensor)]
    if bad or not named:
        raise UsageError(
            f"example_inputs {bad or '(empty)'} must be tensors: archives describe tensor inputs. "
            "Give one example tensor per forward argument."
        )
    for name, tensor in named.items():
        if tensor.dtype not in NAME_BY_DTYPE:
            raise UsageError(f"example input {name!r} has dtype {tensor.dtype}, which signatures do not support.")
    return named


def flatten_outputs(output: Any) -> tuple[str, list[str], list[torch.Tensor]]:
    """``(structure, names, tensors)`` of what ``forward`` returned."""
    if isinstance(output, torch.Tensor):
        return "tensor", ["output"], [output]
    if isinstance(output, Mapping) and all(isinstance(k, str) for k in output):
        items = list(output.items())
        structure, names, values = "dict", [k for k, _ in items], [v for _, v in items]
    elif isinstance(output, (tuple, list)):
        structure = "list" if isinstance(output, list) else "tuple"
        names, values = [f"output_{i}" for i in range(len(output))], list(output)
    else:
        raise PackagingError(
            f"forward returned {type(output).__name__}; archives support a tensor, a tuple or "
            "list of tensors, or a dict of str to tensor."
        )
    if not all(isinstance(v, torch.Tensor) for v in values):
        raise PackagingError("forward returned a container holding non-tensor values; return tensors only.")
    return structure, names, values


def tensor_specs(names: Sequence[str], tensors: Sequence[torch.Tensor], *, batch: int | None) -> tuple[TensorSpec, ...]:
    """Specs with dim 0 dynamic (``-1``) where it equals the batch size ``batch``."""
    specs = []
    for name, tensor in zip(names, tensors):
        shape = list(tensor.shape)
        if batch is not None and shape and shape[0] == batch:
            shape[0] = -1
        specs.append(TensorSpec(name, NAME_BY_DTYPE.get(tensor.dtype, str(tensor.dtype)), tuple(shape)))
    return tuple(specs)
