"""Capturing and restoring every global random number generator a training loop uses.

Bit-identical resumption needs the exact generator states: torch (CPU, and CUDA when
it has been initialised), NumPy's legacy global generator and Python's ``random``.
States are kept as tensors and JSON scalars so they go through the safe format.
"""

from __future__ import annotations

import random
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


def restore(state: dict[str, Any]) -> list[str]:
    """Put the generators back; return the names of those restored."""
    restored = []
    if "torch" in state:
        torch.set_rng_state(state["torch"].cpu())
        restored.append("torch")
    if "python" in state:
        py = state["python"]
        random.setstate((py["version"], tuple(int(v) for v in py["state"].tolist()), py["gauss_next"]))
        restored.append("python")
    if "numpy" in state:
        nps = state["numpy"]
        keys = nps["keys"].cpu().numpy().astype(np.uint32)
        np.random.set_state((nps["kind"], keys, nps["pos"], nps["has_gauss"], nps["cached_gaussian"]))
        restored.append("numpy")
    if "cuda" in state and torch.cuda.is_available():
        states = [s.cpu() for s in state["cuda"]]
        if len(states) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(states)
            restored.append("cuda")
    return restored
