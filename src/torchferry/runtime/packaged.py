"""``Packaged``: an opened archive that behaves like the module it was packed from."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch

from torchferry.archive.manifest import Manifest, Signature
from torchferry.errors import InputError
from torchferry.runtime.inputs import as_named, check_same_batch, check_tensor, to_tensor
from torchferry.runtime.processing import apply_classify, apply_image, is_image_value

__all__ = ["Packaged"]

Runner = Callable[..., Sequence[torch.Tensor]]
"""Takes the inputs in signature order, returns the outputs flat, in signature order."""


class Packaged:
    """A model opened from a ``.ferry`` archive.

    Call it like the original module (tensors in, the same output structure out; it runs
    in inference mode on ``.device``), or use :meth:`predict` for checked, converted
    inputs with the archive's pre/post-processing applied.
    """

    def __init__(self, manifest: Manifest, runner: Runner, device: torch.device, path: str) -> None:
        self.manifest = manifest
        self.device = device
        self.path = path
        self._runner = runner

    @property
    def signature(self) -> Signature:
        return self.manifest.signature

    @property
    def labels(self) -> tuple[str, ...] | None:
        return self.manifest.labels

    @property
    def kind(self) -> str:
        return self.manifest.kind

    def __repr__(self) -> str:
        ins = ", ".join(s.describe() for s in self.signature.inputs)
        outs = ", ".join(s.describe() for s in self.signature.outputs)
        return f"<Packaged {self.manifest.name}:{self.manifest.version or '-'} ({self.kind}) ({ins}) -> ({outs})>"

    def run(self, inputs: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """The flat outputs for inputs already in signature order (no checks)."""
        with torch.inference_mode():
            return list(self._runner(*[t.to(self.device) for t in inputs]))

    def __call__(self, *args: torch.Tensor, **kwargs: torch.Tensor) -> Any:
        names = [s.name for s in self.signature.inputs]
        if len(args) > len(names):
            raise InputError(f"{self.manifest.name} takes {len(names)} inputs {names}, got {len(args)}.")
        given = dict(zip(names, args))
        for key, value in kwargs.items():
            if key not in names or key in given:
                raise InputError(f"unexpected or repeated input {key!r}; the model takes {names}.")
            given[key] = value
        named = as_named(self.signature, given)
        return self._structured(self.run(list(named.values())))

    def _structured(self, flat: list[torch.Tensor]) -> Any:
        structure = self.signature.output_structure
        if structure == "tensor":
            return flat[0]
        if structure == "dict":
            return {spec.name: value for spec, value in zip(self.signature.outputs, flat)}
        return list(flat) if structure == "list" else tuple(flat)

    def prepare(self, inputs: Any) -> tuple[list[torch.Tensor], bool]:
        """``predict``'s first half: checked tensors in signature order (each with a batch dim), and
        whether ``inputs`` was one unbatched sample. The server batches between the two halves."""
        named = as_named(self.signature, inputs)
        images = {step["input"]: step for step in self.manifest.preprocess if step["op"] == "image"}
        tensors: list[torch.Tensor] = []
        single = None
        for spec in self.signature.inputs:
            value = named[spec.name]
            if spec.name in images and is_image_value(value):
                value = apply_image(images[spec.name], value)
            elif spec.name in images and isinstance(value, list) and value and is_image_value(value[0]):
                value = torch.stack([apply_image(images[spec.name], v) for v in value])
            tensor = to_tensor(spec, value)
            unbatched = bool(spec.shape) and spec.shape[0] == -1 and tensor.dim() == len(spec.shape) - 1
            if single is None:
                single = unbatched
            elif single != unbatched:
                raise InputError("give every input with a batch dimension, or none of them.")
            check_tensor(spec, tensor, batched=not unbatched)
            tensors.append(tensor.unsqueeze(0) if unbatched else tensor)
        check_same_batch(self.signature, tensors)
        return tensors, bool(single)

    def predict(self, inputs: Any) -> dict[str, Any]:
        """Validate and convert ``inputs`` (a dict by input name, or one value for a one-input model;
        tensors, numpy arrays, nested lists, or encoded images where the archive declares an image
        input), run the model, and return ``{output name: numpy array}``.

        One sample without its batch dimension is accepted and answered without one. An
        output with a ``Classify`` step comes back as ``[{"label", "score"}, ...]`` per sample.
        """
        tensors, single = self.prepare(inputs)
        return self.finish(self.run(tensors), single)

    def finish(self, outputs: Sequence[torch.Tensor], single: bool) -> dict[str, Any]:
        """``predict``'s second half: flat outputs → ``{name: numpy array or ranked labels}``."""
        result: dict[str, Any] = {}
        classify = {step.get("output") or self.signature.outputs[0].name: step for step in self.manifest.postprocess}
        for spec, value in zip(self.signature.outputs, outputs):
            if spec.name in classify and self.labels:
                ranked = apply_classify(classify[spec.name], value, self.labels)
                result[spec.name] = ranked[0] if single else ranked
                continue
            value = value.detach().cpu()
            array = (value.float() if value.dtype == torch.bfloat16 else value).numpy()  # numpy has no bfloat16
            result[spec.name] = array[0] if single and array.ndim else array
        return result
