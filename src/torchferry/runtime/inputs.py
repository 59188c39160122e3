"""Checking ``predict`` inputs against the signature, with errors that show expected vs got."""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

from torchferry.archive.manifest import Signature, TensorSpec
from torchferry.archive.signature import DTYPE_BY_NAME
from torchferry.errors import InputError

__all__ = ["as_named", "check_same_batch", "check_tensor", "to_tensor"]


def as_named(signature: Signature, inputs: Any) -> dict[str, Any]:
    """``inputs`` as ``{input name: value}``: a dict, or one bare value for a one-input model."""
    names = [spec.name for spec in signature.inputs]
    if isinstance(inputs, Mapping):
        missing = [n for n in names if n not in inputs]
        extra = [k for k in inputs if k not in names]
        if missing or extra:
            raise InputError(
                f"inputs do not match the signature: expected {names}, got {list(inputs)}"
                + (f"; missing {missing}" if missing else "")
                + (f"; unexpected {extra}" if extra else "")
                + "."
            )
        return {n: inputs[n] for n in names}
    if len(names) != 1:
        raise InputError(f"this model takes {len(names)} inputs {names}; pass a dict {{name: value}}.")
    return {names[0]: inputs}


def to_tensor(spec: TensorSpec, value: Any) -> torch.Tensor:
    """A tensor of ``spec``'s dtype from a tensor, numpy array, nested list or scalar."""
    dtype = DTYPE_BY_NAME[spec.dtype]
    if isinstance(value, torch.Tensor):
        tensor = value
    elif isinstance(value, np.ndarray):
        if value.dtype.kind not in "biufc":
            raise InputError(f"input {spec.name!r}: expected {spec.dtype} numbers, got a numpy {value.dtype} array.")
        tensor = torch.from_numpy(np.ascontiguousarray(value))
    else:
        tensor = _from_lists(spec, value)
    if tensor.dtype == dtype:
        return tensor
    try:
        allowed = np.can_cast(_np_dtype(tensor.dtype), _np_dtype(dtype), "same_kind")
    except TypeError:  # a dtype numpy does not know (float8, complex32)
        allowed = tensor.dtype.is_floating_point == dtype.is_floating_point
    if not allowed:
        raise InputError(
            f"input {spec.name!r}: expected dtype {spec.dtype}, got {str(tensor.dtype).split('.')[-1]} "
            "(it cannot be converted without losing its kind, e.g. float to int)."
        )
    return tensor.to(dtype)


def _from_lists(spec: TensorSpec, value: Any) -> torch.Tensor:
    """Nested lists (or a scalar) as a tensor of their own dtype first, so that 1.7 never silently
    becomes 1 for an int input. numpy reads lists several times faster than ``torch.tensor``."""
    try:
        array = np.asarray(value)
    except (TypeError, ValueError) as exc:  # ragged lists
        raise InputError(
            f"input {spec.name!r}: expected {spec.describe()} as nested lists of numbers, got {type(value).__name__} "
            f"({str(exc).splitlines()[0]})."
        ) from None
    if array.dtype.kind not in "biufc":
        raise InputError(
            f"input {spec.name!r}: expected {spec.describe()} as nested lists of numbers, got "
            f"{type(value).__name__} holding {_kind_name(array)}."
        )
    return torch.from_numpy(np.ascontiguousarray(array))


def _kind_name(array: np.ndarray[Any, Any]) -> str:
    return {"U": "text", "S": "bytes", "O": "other objects (None, mixed lists?)"}.get(
        array.dtype.kind, str(array.dtype)
    )


@functools.cache
def _np_dtype(dtype: torch.dtype) -> Any:
    """numpy's twin of a torch dtype (cached: this runs for every request a server checks)."""
    if dtype == torch.bfloat16:
        return np.float32
    return torch.empty((), dtype=dtype).numpy().dtype


def check_tensor(spec: TensorSpec, tensor: torch.Tensor, *, batched: bool = True) -> None:
    """Rank and fixed dims must match ``spec`` (dim 0 is skipped for an unbatched sample)."""
    expected: Sequence[int] = spec.shape if batched else spec.shape[1:]
    got = list(tensor.shape)
    if len(got) != len(expected) or any(e >= 0 and e != g for e, g in zip(expected, got)):
        want = ",".join("?" if d < 0 else str(d) for d in expected)
        raise InputError(f"input {spec.name!r}: expected shape [{want}], got {got}.")


def check_same_batch(signature: Signature, tensors: Sequence[torch.Tensor]) -> None:
    """Inputs with a batch dimension must agree on it: [2, 5] with [3, 1] is no batch of anything,
    and [2, 5] with [1, 1] would silently broadcast one row's value over the others."""
    sizes = {
        spec.name: int(tensor.shape[0])
        for spec, tensor in zip(signature.inputs, tensors)
        if spec.shape and spec.shape[0] == -1 and tensor.dim()
    }
    if len(set(sizes.values())) > 1:
        shown = ", ".join(f"{name}: {size}" for name, size in sizes.items())
        raise InputError(f"inputs disagree on the batch size (first dimension): {shown}; send the same number of rows.")
