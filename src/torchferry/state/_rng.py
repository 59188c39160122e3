"""Capturing and restoring every global random number generator a training loop uses.

Bit-identical resumption needs the exact generator states: torch (CPU, and CUDA when
it has been initialised), NumPy's legacy global generator and Python's ``random``.
States are kept as tensors and JSON scalars so they go through the safe format.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import torch


def capture() -> dict[str, Any]:
    """Snapshot the global generators."""
    version, internal, gauss_next = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state(legacy=True)
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "python": {"version": version, "state": torch.tensor(internal, dtype=torch.int64), "gauss_next": gauss_next},
        "numpy": {
            "kind": kind,
            "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached),
        },
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():  # type: ignore[no-untyped-call]
        state["cuda"] = list(torch.cuda.get_rng_state_all())
    return state


Restorer = Callable[[], list[str]]


def prepare(state: Any) -> Restorer:
    """Validate saved generator states and return a function that applies them.

    Everything that can fail (a damaged file) fails here, before ``resume`` changes any
    object; the returned function only sets the generators.
    """
    if not isinstance(state, Mapping):
        raise ValueError(f"rng state is a {type(state).__name__}, not a map")
    actions: list[tuple[str, Callable[[], None]]] = []
    if "torch" in state:
        torch_state = _byte_tensor(state["torch"])
        actions.append(("torch", lambda: torch.set_rng_state(torch_state)))
    if "python" in state:
        py = state["python"]
        python_state = (int(py["version"]), tuple(int(v) for v in py["state"].tolist()), py["gauss_next"])
        random.Random().setstate(python_state)  # noqa: S311 - validates without touching the global one
        actions.append(("python", lambda: random.setstate(python_state)))
    if "numpy" in state:
        nps = state["numpy"]
        keys = nps["keys"].cpu().numpy().astype(np.uint32)
        numpy_state = (str(nps["kind"]), keys, int(nps["pos"]), int(nps["has_gauss"]), float(nps["cached_gaussian"]))
        np.random.RandomState().set_state(numpy_state)
        actions.append(("numpy", lambda: np.random.set_state(numpy_state)))
    cuda = [_byte_tensor(s) for s in state.get("cuda", [])]
    if cuda and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        actions.append(("cuda", lambda: torch.cuda.set_rng_state_all(cuda)))

    def apply() -> list[str]:
        for _, action in actions:
            action()
        return [name for name, _ in actions]

    return apply


def _byte_tensor(value: Any) -> torch.Tensor:
    if not isinstance(value, torch.Tensor) or value.dtype != torch.uint8:
        raise ValueError("a generator state is not a uint8 tensor")
    return value.cpu()
