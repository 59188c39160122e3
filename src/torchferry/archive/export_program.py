"""``mode="export"``: the program as a ``torch.export`` graph, stored as JSON we control.

``torch.export.save``/``load`` are not used: their ``.pt2`` unpickles ``sample_inputs``
and falls back to ``weights_only=False`` (a crafted file runs code), keeps a second copy
of the weights, and its node metadata holds stack traces with the packing machine's
absolute paths. We keep only the serialized graph (torch's own schema, so it stays
readable by torch tooling), drop stack traces and provenance, and keep tensors in
safetensors members. The runtime interprets that JSON itself (``runtime/graph.py``);
nothing at load time calls ``eval``/``sympify`` or unpickles anything.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from torchferry.errors import PackagingError

GRAPH_MEMBER = "program/graph.json"
CONSTANTS_MEMBER = "program/constants.safetensors"
_KEPT_METADATA = ("nn_module_stack", "source_fn_stack", "torch_fn")
"""Node metadata we keep: module paths and op provenance, useful to read a graph; never file paths."""
_INPUT_KINDS = {"parameter", "buffer", "tensor_constant", "user_input"}
_OUTPUT_KINDS = {"user_output", "buffer_mutation"}
MAX_BATCH = 2**31 - 1

__all__ = ["CONSTANTS_MEMBER", "GRAPH_MEMBER", "ExportedGraph", "export_graph"]


@dataclass(frozen=True)
class ExportedGraph:
    """A serialized graph plus the tensors it reads that are not in the model's state_dict."""

    graph: dict[str, Any]
    constants: dict[str, torch.Tensor]
    dynamic_batch: bool


def _batch_dims(examples: Sequence[torch.Tensor]) -> tuple[Any, ...] | None:
    sizes = {t.shape[0] for t in examples if t.dim() > 0}
    if len(sizes) != 1 or any(t.dim() == 0 for t in examples):
        return None
    batch = torch.export.Dim("batch", min=1, max=MAX_BATCH)
    return tuple({0: batch} for _ in examples)


def _traceable(examples: Sequence[torch.Tensor]) -> tuple[torch.Tensor, ...]:
    """Examples with a batch of at least 2: export specializes size-1 dims to constants."""
    if examples and examples[0].dim() > 0 and examples[0].shape[0] == 1:
        return tuple(torch.cat([t, t]) for t in examples)
    return tuple(examples)


def _export(model: torch.nn.Module, args: tuple[torch.Tensor, ...], dynamic: Any) -> Any:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch's own deprecation chatter during tracing
        program = torch.export.export(model, args, dynamic_shapes=dynamic, strict=False)
        return program.run_decompositions({})


def export_graph(
    model: torch.nn.Module,
    examples: Sequence[torch.Tensor],
    dynamic_shapes: Any = None,
) -> ExportedGraph:
    """Export ``model`` with a dynamic batch dimension when the examples allow one.

    Raises ``PackagingError`` with torch's reason when the model cannot be exported.
    """
    dynamic = dynamic_shapes if dynamic_shapes is not None else _batch_dims(examples)
    args = _traceable(examples) if dynamic is not None and dynamic_shapes is None else tuple(examples)
    try:
        try:
            program = _export(model, args, dynamic)
        except Exception:
            if dynamic_shapes is not None or dynamic is None:
                raise
            dynamic = None  # the model fixes its batch size (a reshape with a literal batch, say)
            program = _export(model, tuple(examples), None)
        graph = _serialize(program)
    except PackagingError:
        raise
    except Exception as exc:
        raise PackagingError(f"torch.export could not export the model: {_first_line(exc)}") from exc
    return ExportedGraph(graph, dict(program.constants), dynamic is not None)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"[:500]


def _serialize(program: Any) -> dict[str, Any]:
    from torch._export.serde import serialize as serde

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        serialized = serde.ExportedProgramSerializer().serialize(
            program, serialize_state_dict=False, serialize_constants=False, serialize_example_inputs=False
        )
    graph: dict[str, Any] = serde._dataclass_to_dict(serialized.exported_program)  # type: ignore[no-untyped-call]
    _check_program(graph, program.constants)
    _scrub(graph["graph_module"]["graph"])
    graph["guards_code"] = []  # python source of shape guards; we check inputs against the signature instead
    return graph


def _check_program(graph: Mapping[str, Any], constants: Mapping[str, Any]) -> None:
    signature = graph["graph_module"]["signature"]
    kinds = {next(iter(spec)) for spec in signature["input_specs"]} - _INPUT_KINDS
    kinds |= {next(iter(spec)) for spec in signature["output_specs"]} - _OUTPUT_KINDS
    if kinds:
        raise PackagingError(
            f"the exported program uses {', '.join(sorted(kinds))}, which archives cannot store "
            "without pickle; pack with mode='python'."
        )
    odd = [name for name, value in constants.items() if not isinstance(value, torch.Tensor)]
    if odd:
        raise PackagingError(
            f"the exported program holds non-tensor constants ({', '.join(odd)}), e.g. TorchScript "
            "objects, which archives cannot store without pickle; pack with mode='python'."
        )


def _scrub(graph: dict[str, Any]) -> None:
    """Drop stack traces (absolute paths of the packing machine) from every node, recursively."""
    for node in graph.get("nodes", []):
        metadata = node.get("metadata") or {}
        node["metadata"] = {k: v for k, v in metadata.items() if k in _KEPT_METADATA}
        for named in node.get("inputs", []):
            sub = named.get("arg", {}).get("as_graph")
            if sub:
                _scrub(sub["graph"])
