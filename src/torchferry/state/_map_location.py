"""``map_location`` with the meanings ``torch.load`` gives it.

* ``None``: each tensor goes back to the device it was saved from.
* a string, int or ``torch.device``: every tensor goes there.
* a mapping of location tags: ``{"cuda:1": "cuda:0"}``; unmapped tags keep their device.
* a callable ``(storage, location) -> storage | None``: called once per stored tensor with
  its CPU storage and saved location; ``None`` means "the default for that location".

Unlike ``torch.load``, an unavailable device never surfaces as a bare ``RuntimeError``:
the error names the file, the device and the ``map_location`` that fixes it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import torch

from torchferry._types import MapLocation
from torchferry.errors import DeviceError

Placer = Callable[[torch.Tensor, str], torch.Tensor]


def _device(spec: object, source: str) -> torch.device:
    try:
        if isinstance(spec, torch.device):
            return spec
        if not isinstance(spec, (str, int)):
            raise TypeError(f"a {type(spec).__name__} is not a device")
        return torch.device(spec)
    except (RuntimeError, TypeError, ValueError) as exc:
        raise DeviceError(
            f"map_location={spec!r} is not a device ({exc}). Pass a device such as 'cpu' or 'cuda:0' ({source})."
        ) from None


def _move(tensor: torch.Tensor, target: torch.device, saved: str, where: str) -> torch.Tensor:
    if tensor.device == target:
        return tensor
    try:
        return tensor.to(target)
    except (RuntimeError, AssertionError) as exc:
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0].rstrip(".")
        what = (
            f"tensors were saved on {saved}, which is not available here ({reason})"
            if str(target) == saved
            else f"cannot place tensors saved on {saved} onto {target} ({reason})"
        )
        raise DeviceError(
            f"{where}: {what}. Load them onto the CPU with map_location='cpu', or onto another device with "
            f"map_location={{'{saved}': '<device>'}}."
        ) from None


def _rebuild(tensor: torch.Tensor, storage: object, where: str) -> torch.Tensor:
    if isinstance(storage, torch.TypedStorage):
        storage = storage.untyped()  # type: ignore[no-untyped-call]
    if not isinstance(storage, torch.UntypedStorage):
        raise DeviceError(
            f"{where}: the map_location callable returned a {type(storage).__name__}; "
            "it must return a storage (e.g. `lambda storage, loc: storage`) or None."
        )
    out = torch.empty(0, dtype=tensor.dtype, device=storage.device)
    return out.set_(storage, 0, tensor.shape, tensor.stride())


def placer(map_location: MapLocation, where: str) -> Placer:
    """Return a function that moves one loaded CPU tensor to where it belongs."""
    if map_location is None:
        return lambda t, saved: _move(t, _device(saved, where), saved, where)
    if isinstance(map_location, (str, int, torch.device)):
        target = _device(map_location, where)
        return lambda t, saved: _move(t, target, saved, where)
    if isinstance(map_location, Mapping):
        table = {str(k): _device(v, where) for k, v in map_location.items()}
        return lambda t, saved: _move(t, table.get(saved, _device(saved, where)), saved, where)
    if callable(map_location):
        fn = map_location

        def call(t: torch.Tensor, saved: str) -> torch.Tensor:
            result = fn(t.untyped_storage(), saved)
            if result is None:
                return _move(t, _device(saved, where), saved, where)
            return _rebuild(t, result, where)

        return call
    raise DeviceError(
        f"map_location of type {type(map_location).__name__} is not supported. "
        "Pass a device string, a torch.device, a dict of location tags or a callable."
    )
