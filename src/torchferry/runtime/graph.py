"""Runs an exported graph from its JSON, without ``torch.export.load``.

torch's deserializer rebuilds symbolic shapes through ``sympy.sympify`` (which evaluates
strings) and, for the tensors, unpickles; importing it also costs ~1.5 s of start-up.
This interpreter needs none of that: it resolves each node's target to an ATen/prims
operator (or a small set of Python operators on sizes) by name, refuses anything else
and any operator that takes a file name, and calls the operators in graph order. The
graph is compiled once into a list of steps, so a call costs a dict lookup per value.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

_PY_OPERATORS: dict[str, Callable[..., Any]] = {
    f"_operator.{name}": getattr(operator, name)
    for name in ("add", "sub", "mul", "floordiv", "truediv", "mod", "neg", "pow", "eq", "ne", "lt", "le", "gt", "ge")
}
_PY_OPERATORS.update({f"math.{name}": getattr(math, name) for name in ("ceil", "floor", "sqrt", "trunc")})
_PY_OPERATORS.update({"torch.sym_max": max, "torch.sym_min": min, "torch.sym_not": operator.not_})
_OP_NAMESPACES = ("aten", "prims")
_FILE_ARGUMENTS = {"filename", "path", "file"}
_SCALAR_TYPES = {  # torch._export.serde.schema.ScalarType
    1: torch.uint8, 2: torch.int8, 3: torch.int16, 4: torch.int32, 5: torch.int64, 6: torch.float16,
    7: torch.float32, 8: torch.float64, 9: torch.complex32, 10: torch.complex64, 11: torch.complex128,
    12: torch.bool, 13: torch.bfloat16, 28: torch.uint16, 29: torch.float8_e4m3fn, 30: torch.float8_e5m2,
    31: torch.float8_e4m3fnuz, 32: torch.float8_e5m2fnuz, 33: torch.float8_e8m0fnu, 34: torch.uint32,
    35: torch.uint64,
}  # fmt: skip
_MEMORY_FORMATS = {
    1: torch.contiguous_format,
    2: torch.channels_last,
    3: torch.channels_last_3d,
    4: torch.preserve_format,
}
_LAYOUTS = {1: torch.sparse_coo, 2: torch.sparse_csr, 3: torch.sparse_csc, 4: torch.sparse_bsr, 5: torch.sparse_bsc,
            6: torch._mkldnn, 7: torch.strided}  # type: ignore[attr-defined]  # fmt: skip

__all__ = ["GraphProgram", "GraphError"]


class GraphError(ValueError):
    """The graph JSON uses something this interpreter does not run (caught and reworded by callers)."""


Getter = Callable[[dict[str, Any]], Any]


_PRIVATE_ALLOWED = frozenset({
    "_native_batch_norm_legit_no_training", "_native_batch_norm_legit", "_native_batch_norm_legit_functional",
    "_to_copy", "_softmax", "_log_softmax", "_unsafe_view", "_adaptive_avg_pool2d", "_adaptive_avg_pool3d",
    "_assert_scalar", "_assert_async", "_assert_tensor_metadata", "_local_scalar_dense", "_prelu_kernel",
    "_upsample_bilinear2d_aa", "_upsample_bicubic2d_aa", "_upsample_nearest_exact2d", "_embedding_bag",
    "_scaled_dot_product_flash_attention_for_cpu", "_scaled_dot_product_efficient_attention",
    "_native_multi_head_attention", "_weight_norm_interface", "_cdist_forward", "_pdist_forward",
    "_log_softmax_backward_data", "_softmax_backward_data", "_fft_r2c", "_fft_c2r", "_fft_c2c",
})  # fmt: skip
"""Internal ATen operators that exported inference programs emit and that check their inputs."""
_UNSAFE_PUBLIC = frozenset({"set", "resize", "resize_as", "as_strided_scatter", "empty_strided"})


def _unsafe_name(name: str, overload: str) -> bool:
    """In-place (``add_``), ``out=`` overloads, internal (``_reshape_alias``) and storage-level operators.

    Exported programs are functional, so none of these are needed; several can make views that
    escape their storage (``_reshape_alias``, ``set_``) and read or write arbitrary memory.
    """
    if name.endswith("_") or overload == "out" or overload.endswith("_out"):
        return True
    if name.startswith("_"):
        return name not in _PRIVATE_ALLOWED
    return name in _UNSAFE_PUBLIC


def resolve_target(target: str) -> Callable[..., Any]:
    """The callable a node names: an ATen/prims overload or an allowed Python operator."""
    if target in _PY_OPERATORS:
        return _PY_OPERATORS[target]
    parts = target.split(".")
    if len(parts) != 5 or parts[:2] != ["torch", "ops"] or parts[2] not in _OP_NAMESPACES:
        raise GraphError(f"operator {target!r} is not an ATen or prims operator")
    if _unsafe_name(parts[3], parts[4]):
        raise GraphError(
            f"operator {target!r} is not allowed in archives: in-place, out= and internal operators can "
            "alias memory without bounds checks, and exported (functional) programs never need them"
        )
    namespace = getattr(torch.ops, parts[2])
    try:
        packet = getattr(namespace, parts[3])
        overload = getattr(packet, parts[4])
    except (AttributeError, RuntimeError):
        raise GraphError(f"operator {target!r} does not exist in this torch {torch.__version__}") from None
    if not isinstance(overload, torch._ops.OpOverload):
        raise GraphError(f"{target!r} is not an operator overload")
    if any(arg.name in _FILE_ARGUMENTS for arg in overload._schema.arguments):
        raise GraphError(f"operator {target!r} reads or writes files, which archives may not do")
    return overload


def _scalar(kind: str, value: Any, device: torch.device | None) -> Any:
    if kind in ("as_int", "as_float", "as_bool", "as_string", "as_ints", "as_floats", "as_bools", "as_strings"):
        return list(value) if isinstance(value, list) else value
    if kind == "as_none":
        return None
    if kind == "as_scalar_type":
        return _SCALAR_TYPES[value]
    if kind == "as_memory_format":
        return _MEMORY_FORMATS[value]
    if kind == "as_layout":
        return _LAYOUTS[value]
    if kind == "as_device":
        return device if device is not None else torch.device(value["type"], value.get("index"))
    if kind == "as_complex":
        return complex(value["real"], value["imag"])
    if kind in ("as_int_lists", "as_float_lists"):
        return [list(v) for v in value]
    raise GraphError(f"argument kind {kind!r} is not supported")


_SYM_LITERALS: dict[str, type | tuple[type, ...]] = {"as_int": int, "as_float": (int, float), "as_bool": bool}


def _symbolic(item: Mapping[str, Any]) -> Getter:
    """A sym int/float/bool: a value computed earlier in the graph, or a literal.

    Anything else (``as_expr``: a sympy expression stored as Python source) is refused, never
    evaluated; torch's serializer writes only names and literals in argument positions.
    """
    ((kind, value),) = item.items()
    if kind == "as_name" and isinstance(value, str):
        return _lookup(value)
    if kind in _SYM_LITERALS and isinstance(value, _SYM_LITERALS[kind]):
        return _constant(value)
    raise GraphError(f"symbolic argument kind {kind!r} is not supported (only names and literals are)")


def _lookup(name: str) -> Getter:
    def get(env: dict[str, Any]) -> Any:
        return env[name]

    return get


def _constant(value: Any) -> Getter:
    def get(env: dict[str, Any]) -> Any:
        return value

    return get


def _getter(arg: Mapping[str, Any], device: torch.device | None) -> Getter:
    if len(arg) != 1:
        raise GraphError("an argument must have exactly one kind")
    ((kind, value),) = arg.items()
    if kind == "as_tensor":
        return _lookup(value["name"])
    if kind in ("as_sym_int", "as_sym_float", "as_sym_bool"):
        return _symbolic(value)
    if kind in ("as_tensors", "as_sym_ints", "as_sym_floats", "as_sym_bools", "as_optional_tensors"):
        parts = [_getter(_wrap(kind, item), device) for item in value]
        return lambda env: [part(env) for part in parts]
    if kind == "as_optional_tensor":
        return _getter(value, device)
    if kind in ("as_graph", "as_custom_obj", "as_operator", "as_string_to_argument", "as_nested_tensors"):
        raise GraphError(f"argument kind {kind!r} (control flow, custom objects) is not supported")
    return _constant(_scalar(kind, value, device))


def _wrap(kind: str, item: Any) -> dict[str, Any]:
    if kind == "as_tensors":
        return {"as_tensor": item}
    if kind == "as_optional_tensors":
        return dict(item)
    return {kind[:-1]: item}


@dataclass(frozen=True)
class _Step:
    op: Callable[..., Any]
    args: tuple[Getter, ...]
    kwargs: tuple[tuple[str, Getter], ...]
    outputs: Callable[[dict[str, Any], Any], None]


def _bind_nothing(env: dict[str, Any], result: Any) -> None:
    return None


def _list_binder(listed: list[Any]) -> Callable[[dict[str, Any], Any], None]:
    def bind_list(env: dict[str, Any], result: Any) -> None:
        for name, value in zip(listed, result):
            env[name] = value

    return bind_list


def _binder(outputs: Sequence[Mapping[str, Any]]) -> Callable[[dict[str, Any], Any], None]:
    if len(outputs) == 1 and "as_tensors" in outputs[0]:
        return _list_binder([_output_name({"as_tensor": t}) for t in outputs[0]["as_tensors"]])
    names = [_output_name(out) for out in outputs]
    if all(name is None for name in names):  # e.g. aten._assert_tensor_metadata: checks, returns None
        return _bind_nothing
    if len(names) == 1:
        name = names[0]

        def bind_one(env: dict[str, Any], result: Any) -> None:
            env[name] = result

        return bind_one

    def bind_many(env: dict[str, Any], result: Any) -> None:
        for out_name, value in zip(names, result):
            if out_name is not None:
                env[out_name] = value

    return bind_many


def _output_name(out: Mapping[str, Any]) -> Any:
    ((kind, value),) = out.items()
    if kind == "as_tensor":
        return value["name"]
    if kind in ("as_sym_int", "as_sym_float", "as_sym_bool"):
        return value.get("as_name")
    if kind == "as_none":
        return None
    raise GraphError(f"node output kind {kind!r} is not supported")


def _compile_node(node: Mapping[str, Any], device: torch.device | None) -> _Step:
    op = resolve_target(node["target"])
    args: list[Getter] = []
    kwargs: list[tuple[str, Getter]] = []
    for named in node["inputs"]:
        getter = _getter(named["arg"], device)
        if named.get("kind") == 2:
            kwargs.append((named["name"], getter))
        else:
            args.append(getter)
    return _Step(op, tuple(args), tuple(kwargs), _binder(node["outputs"]))


def _check_stored(target: str, tensor: torch.Tensor, meta: Mapping[str, Any] | None) -> None:
    """A stored tensor must have the dtype and fixed sizes the graph was traced with; otherwise the
    weights do not belong to this program and running it would fail (or compute garbage) later."""
    if meta is None:
        return
    dtype = _SCALAR_TYPES.get(meta["dtype"])
    sizes = [size.get("as_int") for size in meta["sizes"]]
    fits = len(sizes) == tensor.dim() and all(s in (None, d) for s, d in zip(sizes, tensor.shape))
    if dtype != tensor.dtype or not fits:
        want = ",".join("?" if s is None else str(s) for s in sizes)
        raise GraphError(
            f"tensor {target!r} is {str(tensor.dtype).removeprefix('torch.')}{list(tensor.shape)} in the archive, "
            f"but the graph expects {str(dtype).removeprefix('torch.')}[{want}]"
        )


class GraphProgram:
    """A compiled graph bound to its tensors; call it with the user inputs in order."""

    def __init__(
        self,
        graph_json: Mapping[str, Any],
        tensors: Mapping[str, torch.Tensor],
        constants: Mapping[str, torch.Tensor],
        *,
        device: torch.device | None = None,
    ) -> None:
        try:
            module = graph_json["graph_module"]
            graph, signature = module["graph"], module["signature"]
            self._steps = [_compile_node(node, device) for node in graph["nodes"]]
            self._bind_inputs(signature["input_specs"], tensors, constants, graph.get("tensor_values") or {})
            self._outputs = [_getter(out, device) for out in graph["outputs"]]
            self._plan_outputs(signature["output_specs"], tensors)
        except GraphError:
            raise
        except (KeyError, TypeError, ValueError, AttributeError, IndexError, RuntimeError) as exc:
            # RuntimeError: torch refusing a value (a bad device string), or RecursionError on deep nesting
            raise GraphError(f"the graph is malformed ({type(exc).__name__}: {str(exc)[:300]})") from None

    def _bind_inputs(
        self,
        specs: Sequence[Mapping[str, Any]],
        tensors: Mapping[str, torch.Tensor],
        constants: Mapping[str, Any],
        values: Mapping[str, Any],
    ) -> None:
        self._fixed: dict[str, Any] = {}
        self._user_inputs: list[str] = []
        for spec in specs:
            ((kind, body),) = spec.items()
            if kind == "user_input":
                self._user_inputs.append(body["arg"]["as_tensor"]["name"])
                continue
            name = body["arg"]["name"]
            if kind in ("parameter", "buffer", "tensor_constant"):
                target = body.get("parameter_name") or body.get("buffer_name") or body.get("tensor_constant_name")
                source = tensors if target in tensors else constants
                if target not in source:
                    raise GraphError(f"the graph reads tensor {target!r}, which the archive does not hold")
                _check_stored(target, source[target], values.get(name))
                self._fixed[name] = source[target]
            else:
                raise GraphError(f"graph input kind {kind!r} is not supported")

    def _plan_outputs(self, specs: Sequence[Mapping[str, Any]], tensors: Mapping[str, torch.Tensor]) -> None:
        self._user_outputs: list[int] = []
        self._mutations: list[tuple[int, torch.Tensor]] = []
        for index, spec in enumerate(specs):
            ((kind, body),) = spec.items()
            if kind == "user_output":
                self._user_outputs.append(index)
            elif kind == "buffer_mutation" and body["buffer_name"] in tensors:
                self._mutations.append((index, tensors[body["buffer_name"]]))
            else:
                raise GraphError(f"graph output kind {kind!r} is not supported")

    @property
    def input_count(self) -> int:
        return len(self._user_inputs)

    @property
    def output_count(self) -> int:
        return len(self._user_outputs)

    def __call__(self, *inputs: torch.Tensor) -> list[Any]:
        if len(inputs) != len(self._user_inputs):
            raise TypeError(f"the program takes {len(self._user_inputs)} inputs, got {len(inputs)}")
        env = dict(self._fixed)
        env.update(zip(self._user_inputs, inputs))
        for step in self._steps:
            result = step.op(*[get(env) for get in step.args], **{k: get(env) for k, get in step.kwargs})
            step.outputs(env, result)
        values = [get(env) for get in self._outputs]
        for index, buffer in self._mutations:
            buffer.copy_(values[index])
        return [values[i] for i in self._user_outputs]
