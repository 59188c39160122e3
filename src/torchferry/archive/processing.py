"""Declarative pre- and post-processing, stored in the manifest as data, never as code.

Seed 002's services decode an image, resize, center-crop, scale and normalize it, and
return label names; TorchServe and BentoML ship that as Python handlers, which must run
at load. Here the same steps are a few JSON fields the runtime knows how to apply.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from torchferry.errors import UsageError

__all__ = ["Classify", "ImageInput", "check_step", "processing_steps"]


@dataclass(frozen=True)
class ImageInput:
    """Turn an encoded image (PNG/JPEG bytes, a PIL image or an HxWxC uint8 array) into the model input.

    Steps, in order: decode to ``channels`` (``"RGB"``, ``"BGR"`` or ``"L"``), resize the shorter
    side to ``resize``, center-crop to ``center_crop``, multiply by ``scale``, subtract
    ``mean`` and divide by ``std`` per channel, lay out as ``"CHW"`` or ``"HWC"``.
    """

    input: str | None = None
    resize: int | None = None
    center_crop: int | None = None
    scale: float = 1 / 255
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    channels: str = "RGB"
    layout: str = "CHW"

    def to_step(self, inputs: Sequence[str]) -> dict[str, Any]:
        step = {"op": "image", **asdict(self)}
        step["input"] = self.input or inputs[0]
        step["mean"] = None if self.mean is None else list(self.mean)
        step["std"] = None if self.std is None else list(self.std)
        return step


@dataclass(frozen=True)
class Classify:
    """Turn scores into ``[{"label": ..., "score": ...}]``: optional softmax, then the top ``top_k``."""

    output: str | None = None
    top_k: int = 1
    softmax: bool = True

    def to_step(self, inputs: Sequence[str]) -> dict[str, Any]:
        return {"op": "classify", "output": self.output, "top_k": self.top_k, "softmax": self.softmax}


_CHANNELS = {"RGB": 3, "BGR": 3, "L": 1}


def _bad(step: Mapping[str, Any], what: str) -> UsageError:
    return UsageError(f"processing step {dict(step)!r}: {what}")


def _check_image(step: Mapping[str, Any], inputs: Sequence[str]) -> None:
    if step.get("input") not in inputs:
        raise _bad(step, f"'input' must name one of the model inputs {list(inputs)}")
    for key in ("resize", "center_crop"):
        value = step.get(key)
        if value is not None and (type(value) is not int or not 0 < value <= 16384):
            raise _bad(step, f"{key!r} must be a size between 1 and 16384")
    if step.get("channels") not in _CHANNELS or step.get("layout") not in ("CHW", "HWC"):
        raise _bad(step, "'channels' must be RGB, BGR or L and 'layout' CHW or HWC")
    count = _CHANNELS[step["channels"]]
    for key in ("mean", "std"):
        value = step.get(key)
        if value is not None and (
            not isinstance(value, list) or len(value) != count or not all(isinstance(v, (int, float)) for v in value)
        ):
            raise _bad(step, f"{key!r} must list {count} numbers (one per channel)")
    if step.get("std") is not None and any(v == 0 for v in step["std"]):
        raise _bad(step, "'std' must not contain 0")
    if not isinstance(step.get("scale"), (int, float)):
        raise _bad(step, "'scale' must be a number")


def _check_classify(step: Mapping[str, Any], labels: Sequence[str] | None) -> None:
    if type(step.get("top_k")) is not int or step["top_k"] < 1:
        raise _bad(step, "'top_k' must be a positive integer")
    if not isinstance(step.get("softmax"), bool):
        raise _bad(step, "'softmax' must be true or false")
    if not labels:
        raise _bad(step, "classify needs labels: pass labels=[...] (one name per class)")


def check_step(step: Mapping[str, Any], inputs: Sequence[str], labels: Sequence[str] | None) -> None:
    """Raise ``UsageError`` unless ``step`` is a processing step this release applies."""
    op = step.get("op")
    if op == "image":
        _check_image(step, inputs)
    elif op == "classify":
        _check_classify(step, labels)
    else:
        raise _bad(step, f"unknown op {op!r} (known: image, classify)")


def _as_steps(value: Any, inputs: Sequence[str]) -> list[dict[str, Any]]:
    if value is None:
        return []
    items = value if isinstance(value, (list, tuple)) else [value]
    steps = []
    for item in items:
        if isinstance(item, (ImageInput, Classify)):
            steps.append(item.to_step(inputs))
        elif isinstance(item, Mapping):
            steps.append(dict(item))
        else:
            raise UsageError(f"a processing step must be ImageInput, Classify or a dict, not {type(item).__name__}.")
    return steps


def processing_steps(
    preprocess: Any, postprocess: Any, inputs: Sequence[str], labels: Sequence[str] | None
) -> tuple[tuple[dict[str, Any], ...], tuple[dict[str, Any], ...]]:
    """Validated manifest entries for ``pack``'s ``preprocess``/``postprocess`` arguments."""
    pre, post = _as_steps(preprocess, inputs), _as_steps(postprocess, inputs)
    for step in pre + post:
        check_step(step, inputs, labels)
    if any(s["op"] != "image" for s in pre) or any(s["op"] != "classify" for s in post):
        raise UsageError("preprocess takes ImageInput steps and postprocess takes Classify steps.")
    return tuple(pre), tuple(post)
