"""Applying the manifest's declarative pre/post-processing steps (see ``archive/processing.py``)."""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

from torchferry.errors import InputError

__all__ = ["apply_classify", "apply_image", "is_image_value"]


def is_image_value(value: Any) -> bool:
    """Whether ``value`` is something the image step takes (bytes, a PIL image, an HxWxC uint8 array)."""
    if isinstance(value, (bytes, bytearray, memoryview)):
        return True
    if isinstance(value, np.ndarray):
        return value.dtype == np.uint8 and value.ndim in (2, 3)
    return type(value).__module__.startswith("PIL.")


def _decode(value: Any, channels: str) -> Any:
    try:
        from PIL import Image, UnidentifiedImageError
    except ImportError:
        raise InputError("decoding images needs Pillow: pip install pillow") from None
    if isinstance(value, np.ndarray):
        image = Image.fromarray(value)
    elif isinstance(value, (bytes, bytearray, memoryview)):
        try:
            image = Image.open(io.BytesIO(bytes(value)))
            image.load()
        except (UnidentifiedImageError, OSError, ValueError) as exc:
            reason = "not an image format Pillow reads" if isinstance(exc, UnidentifiedImageError) else str(exc)
            raise InputError(
                f"the image could not be decoded ({reason}; {len(value)} bytes); send PNG or JPEG bytes."
            ) from None
    else:
        image = value
    return image.convert("L" if channels == "L" else "RGB")


def _resize_crop(image: Any, resize: int | None, crop: int | None) -> Any:
    from PIL import Image

    if resize is not None:
        width, height = image.size
        scale = resize / min(width, height)
        image = image.resize((max(1, round(width * scale)), max(1, round(height * scale))), Image.Resampling.BILINEAR)
    if crop is not None:
        width, height = image.size
        if crop > min(width, height):
            raise InputError(f"the image is {width}x{height}, smaller than the {crop}x{crop} crop.")
        left, top = (width - crop) // 2, (height - crop) // 2
        image = image.crop((left, top, left + crop, top + crop))
    return image


def apply_image(step: Mapping[str, Any], value: Any) -> torch.Tensor:
    """One image as a float32 tensor laid out as the step says (no batch dimension)."""
    image = _resize_crop(_decode(value, step["channels"]), step.get("resize"), step.get("center_crop"))
    array: Any = np.asarray(image, dtype=np.float32)
    if array.ndim == 2:
        array = array[:, :, None]
    if step["channels"] == "BGR":
        array = array[:, :, ::-1]
    array = array * float(step["scale"])
    if step.get("mean") is not None:
        array = array - np.asarray(step["mean"], dtype=np.float32)
    if step.get("std") is not None:
        array = array / np.asarray(step["std"], dtype=np.float32)
    if step["layout"] == "CHW":
        array = array.transpose(2, 0, 1)
    return torch.from_numpy(np.ascontiguousarray(array))


def apply_classify(step: Mapping[str, Any], scores: torch.Tensor, labels: Sequence[str]) -> list[list[dict[str, Any]]]:
    """Per sample, the ``top_k`` labels with their scores (probabilities when ``softmax``)."""
    values = scores.detach().float().cpu()
    if values.dim() == 1:
        values = values.unsqueeze(0)
    if values.shape[-1] != len(labels):
        raise InputError(
            f"the model returned {values.shape[-1]} scores per sample but the archive has "
            f"{len(labels)} labels; re-pack it with matching labels."
        )
    if step["softmax"]:
        values = values.softmax(-1)
    top = values.topk(min(step["top_k"], len(labels)), dim=-1)
    return [
        [{"label": labels[i], "score": float(s)} for s, i in zip(row_scores.tolist(), row_index.tolist())]
        for row_scores, row_index in zip(top.values, top.indices)
    ]
