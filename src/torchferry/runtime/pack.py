"""``pack``: a model and its examples become one self-contained ``.ferry`` archive.

``pack`` lives in the runtime layer because it proves its work: the program it stores
is run here, through the same code ``load_model`` uses, on the examples and on a
different batch size, and must match eager ``forward`` before anything is written.
"""

from __future__ import annotations

import datetime as _dt
import json
import platform
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from torchferry._types import PathLike
from torchferry._version import __version__
from torchferry.archive.export_program import CONSTANTS_MEMBER, GRAPH_MEMBER, export_graph
from torchferry.archive.manifest import WEIGHTS_MEMBER, Manifest, Signature
from torchferry.archive.processing import processing_steps
from torchferry.archive.signature import flatten_outputs, named_examples, tensor_specs
from torchferry.archive.writer import write_ferry
from torchferry.errors import PackagingError, UsageError
from torchferry.runtime.graph import GraphError, GraphProgram
from torchferry.runtime.outputs import all_close, max_errors

EXAMPLE_INPUTS_MEMBER = "examples/inputs.safetensors"
EXAMPLE_OUTPUTS_MEMBER = "examples/outputs.safetensors"
PY_TENSORS_MEMBER = "program/tensors.safetensors"
MODES = ("auto", "export", "python")
DEFAULT_RTOL, DEFAULT_ATOL = 1e-4, 1e-5

__all__ = ["pack"]


@dataclass
class _Program:
    kind: str
    info: dict[str, Any]
    files: dict[str, bytes] = field(default_factory=dict)
    tensors: dict[str, Mapping[str, torch.Tensor]] = field(default_factory=dict)
    requirements: dict[str, str] = field(default_factory=dict)
    run: Callable[..., Any] | None = None
    dynamic_batch: bool = False


def _eager(model: torch.nn.Module, inputs: Sequence[torch.Tensor]) -> Any:
    with torch.inference_mode():
        return model(*inputs)


def _doubled(inputs: Sequence[torch.Tensor]) -> list[torch.Tensor] | None:
    if not inputs or any(t.dim() == 0 for t in inputs) or len({t.shape[0] for t in inputs}) != 1:
        return None
    return [torch.cat([t, t, t]) for t in inputs]


def _check_parity(
    label: str,
    run: Callable[..., Any],
    model: torch.nn.Module,
    inputs: Sequence[torch.Tensor],
    tol: tuple[float, float],
) -> None:
    expected = flatten_outputs(_eager(model, inputs))[2]
    with torch.inference_mode():
        got = flatten_outputs(run(*inputs))[2]
    for index, (want, have) in enumerate(zip(expected, got)):
        if want.shape != have.shape or want.dtype != have.dtype:
            raise PackagingError(
                f"the {label} program returns output {index} as {have.dtype}{list(have.shape)}, eager forward "
                f"returns {want.dtype}{list(want.shape)}."
            )
        if not all_close(want, have, rtol=tol[0], atol=tol[1]):
            abs_err, rel_err = max_errors(want, have)
            raise PackagingError(
                f"the {label} program differs from eager forward on output {index} (max abs error {abs_err:.3g}, "
                f"max rel error {rel_err:.3g}); the model may have data-dependent behaviour export cannot capture."
            )


def _export_program(model: torch.nn.Module, inputs: list[torch.Tensor], dynamic_shapes: Any, tol: Any) -> _Program:
    exported = export_graph(model, inputs, dynamic_shapes)
    try:
        program = GraphProgram(exported.graph, dict(model.state_dict()), exported.constants)
    except GraphError as exc:
        raise PackagingError(f"the exported graph cannot be run by torchferry: {exc}") from None

    def run(*args: torch.Tensor) -> Any:
        outputs = program(*args)
        return outputs[0] if len(outputs) == 1 else tuple(outputs)

    _check_parity("exported", _as_structured(run, model, inputs), model, inputs, tol)
    doubled = _doubled(inputs) if exported.dynamic_batch else None
    if doubled is not None:
        _check_parity("exported (batch x3)", _as_structured(run, model, inputs), model, doubled, tol)
    schema = exported.graph.get("schema_version", {})
    info = {
        "kind": "export",
        "entry": GRAPH_MEMBER,
        "constants": CONSTANTS_MEMBER if exported.constants else None,
        "export_schema": f"{schema.get('major')}.{schema.get('minor')}",
    }
    result = _Program("export", info, dynamic_batch=exported.dynamic_batch)
    result.files[GRAPH_MEMBER] = _json_bytes(exported.graph)
    if exported.constants:
        result.tensors[CONSTANTS_MEMBER] = exported.constants
    return result


def _as_structured(
    run: Callable[..., Any], model: torch.nn.Module, inputs: Sequence[torch.Tensor]
) -> Callable[..., Any]:
    """Rebuild the eager output's nesting from the flat program outputs, for comparison."""
    structure, names, _ = flatten_outputs(_eager(model, inputs))

    def structured(*args: torch.Tensor) -> Any:
        flat = run(*args)
        values = [flat] if structure == "tensor" else list(flat if isinstance(flat, tuple) else (flat,))
        return (
            values[0] if structure == "tensor" else dict(zip(names, values)) if structure == "dict" else tuple(values)
        )

    return structured


def _python_program(
    model: torch.nn.Module, inputs: list[torch.Tensor], patterns: Mapping[str, Sequence[str]], tol: Any
) -> _Program:
    from torchferry.archive.capture import capture_python
    from torchferry.runtime.python_program import build_python_model

    captured = capture_python(model, **patterns)
    state = dict(model.state_dict())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        rebuilt = build_python_model(captured.program, captured.files.__getitem__, state, captured.tensors)
    _check_parity("captured Python", rebuilt, model, inputs, tol)
    doubled = _doubled(inputs)
    dynamic = doubled is not None and _batches(model, doubled)
    info = {"kind": "python", **captured.program, "tensors": PY_TENSORS_MEMBER if captured.tensors else None}
    result = _Program(
        "python", info, dict(captured.files), requirements=dict(captured.requirements), dynamic_batch=dynamic
    )
    if captured.tensors:
        result.tensors[PY_TENSORS_MEMBER] = captured.tensors
    return result


def _batches(model: torch.nn.Module, doubled: list[torch.Tensor]) -> bool:
    try:
        _eager(model, doubled)
    except Exception:  # any failure means the batch size is fixed
        return False
    return True


def _json_bytes(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode("utf-8")


def _choose_program(
    model: torch.nn.Module,
    inputs: list[torch.Tensor],
    mode: str,
    dynamic_shapes: Any,
    patterns: Mapping[str, Sequence[str]],
    tol: Any,
) -> _Program:
    if mode == "export":
        return _export_program(model, inputs, dynamic_shapes, tol)
    if mode == "python":
        return _python_program(model, inputs, patterns, tol)
    try:
        return _export_program(model, inputs, dynamic_shapes, tol)
    except PackagingError as exc:
        program = _python_program(model, inputs, patterns, tol)
        program.info["fallback_reason"] = str(exc)
        return program


def _requirements(extra: Mapping[str, str]) -> dict[str, str]:
    reqs = {"python": platform.python_version(), "torch": torch.__version__.split("+")[0], "torchferry": __version__}
    reqs.update({k: v for k, v in extra.items() if k not in reqs})
    return reqs


def pack(
    model: torch.nn.Module,
    path: PathLike,
    *,
    example_inputs: Any,
    name: str | None = None,
    version: str | None = None,
    labels: Sequence[str] | None = None,
    mode: str = "auto",
    intern: Sequence[str] = (),
    extern: Sequence[str] = (),
    mock: Sequence[str] = (),
    preprocess: Any = None,
    postprocess: Any = None,
    metadata: Mapping[str, Any] | None = None,
    description: str | None = None,
    dynamic_shapes: Any = None,
    rtol: float = DEFAULT_RTOL,
    atol: float = DEFAULT_ATOL,
    fsync: bool = True,
    progress: Callable[[int], None] | None = None,
) -> Manifest:
    """Pack ``model`` into a self-contained archive at ``path`` and return its manifest.

    ``mode="export"`` stores a ``torch.export`` graph (opening it runs no Python code);
    ``"python"`` stores the model's own source, captured like torch.package (opening it
    needs ``trust_code=True``); ``"auto"`` exports when the exported program matches eager
    ``forward`` on the examples and falls back to ``"python"`` otherwise, recording why.
    The batch dimension (dim 0 of the examples) is dynamic when the model allows it.

    >>> import torch, torchferry
    >>> net = torch.nn.Sequential(torch.nn.Linear(4, 3))
    >>> manifest = torchferry.pack(net, "net.ferry", example_inputs=torch.randn(2, 4), name="net")
    >>> manifest.kind, manifest.signature.inputs[0].describe()
    ('export', 'input: float32[?,4]')
    """
    if not isinstance(model, torch.nn.Module):
        raise UsageError(f"pack() needs a torch.nn.Module, got {type(model).__name__}.")
    if mode not in MODES:
        raise UsageError(f"mode must be one of {', '.join(MODES)}, not {mode!r}.")
    named = {k: v.detach() for k, v in named_examples(model, example_inputs).items()}
    inputs = list(named.values())
    steps_pre, steps_post = processing_steps(preprocess, postprocess, list(named), labels)
    was_training = model.training
    model.eval()
    try:
        eager_out = _eager(model, inputs)
        structure, out_names, outputs = flatten_outputs(eager_out)
        patterns = {"intern": tuple(intern), "extern": tuple(extern), "mock": tuple(mock)}
        program = _choose_program(model, inputs, mode, dynamic_shapes, patterns, (rtol, atol))
        state = dict(model.state_dict())
    finally:
        model.train(was_training)
    batch = inputs[0].shape[0] if program.dynamic_batch else None
    signature = Signature(
        tensor_specs(list(named), inputs, batch=batch), tensor_specs(out_names, outputs, batch=batch), structure
    )
    manifest = Manifest(
        name=name or type(model).__name__.lower(),
        version=None if version is None else str(version),
        created=_dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat().replace("+00:00", "Z"),
        description=description,
        torchferry=__version__,
        program=program.info,
        signature=signature,
        labels=None if labels is None else tuple(str(label) for label in labels),
        preprocess=steps_pre,
        postprocess=steps_post,
        batching={"dynamic_batch": program.dynamic_batch, "batch_dim": 0},
        examples={"inputs": EXAMPLE_INPUTS_MEMBER, "outputs": EXAMPLE_OUTPUTS_MEMBER, "rtol": rtol, "atol": atol},
        requirements=_requirements(program.requirements),
        members={},
        metadata=dict(metadata or {}),
    )
    tensors: dict[str, Mapping[str, torch.Tensor]] = {WEIGHTS_MEMBER: state, **program.tensors}
    tensors[EXAMPLE_INPUTS_MEMBER] = {k: v.cpu().contiguous() for k, v in named.items()}
    tensors[EXAMPLE_OUTPUTS_MEMBER] = {k: v.detach().cpu().contiguous() for k, v in zip(out_names, outputs)}
    return write_ferry(path, manifest, tensors=tensors, files=program.files, fsync=fsync, progress=progress)
