"""Turning nested Python structures into JSON plus a flat set of tensors, and back.

A saved structure becomes a JSON *tree* kept in the safetensors metadata and a flat
mapping of *stored* tensors. Leaves are JSON scalars or tensor references. Tensors that
overlap in memory (tied weights, views) are stored once: identical views share one
stored tensor; different views of the same memory share one stored span and each
records its offset, shape and stride into it. Tensors that merely share an allocation
without overlapping are stored separately, so a small slice never drags its whole base
buffer into the file (unlike ``torch.save``).

Node forms (every non-scalar node is a one-tag JSON object)::

    {"T": name, "V": [offset, shape, stride], "dtype": "float32", "P": bool, "G": 1}
    {"D": [[key, node], ...], "O": 1, "M": {...}}   dict (O: OrderedDict, M: its _metadata)
    {"L": [...]}  list       {"U": [...]}  tuple       {"Z": [...]}  torch.Size
    {"F": "nan" | "inf" | "-inf"}  non-finite float
"""

from __future__ import annotations

import contextlib
import json
import math
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch

from torchferry.errors import UnsupportedObjectError
from torchferry.state._safetensors_io import DTYPE_CODES

_REAL_VIEW_DTYPES = {torch.complex128, torch.complex32}
"""Complex dtypes safetensors lacks: stored as their real view (trailing dim of 2)."""

_DTYPE_BY_NAME = {str(d).removeprefix("torch."): d for d in DTYPE_CODES} | {
    str(d).removeprefix("torch."): d for d in _REAL_VIEW_DTYPES
}

_KEY_TYPES = (str, int, float, bool, type(None))
Path = tuple[Any, ...]


class TreeError(ValueError):
    """A tree in a file does not have the shape this module writes (turned into CorruptFileError)."""


def key_path(path: Path) -> str:
    """Render a key path the way a user would index it: ``["optimizer"]["state"][0]``."""
    return "".join(f"[{k!r}]" for k in path) or "(the top-level object)"


def _unsupported(path: Path, what: str, advice: str) -> UnsupportedObjectError:
    return UnsupportedObjectError(
        f"cannot save {key_path(path)}: {what}. torchferry stores tensors and JSON scalars "
        f"(str, int, float, bool, None) in dicts, lists and tuples, never pickled objects. {advice}",
        key_path=key_path(path),
    )


def _advice_for(value: object) -> str:
    name = type(value).__name__
    module = type(value).__module__
    if isinstance(value, torch.nn.Module):
        return "Save its weights instead: model.state_dict() (or use save_checkpoint(model=...))."
    if isinstance(value, torch.optim.Optimizer):
        return "Save optimizer.state_dict() instead (or use save_checkpoint(optimizer=...))."
    if module == "numpy":
        return "Convert it first: torch.from_numpy(x) for arrays, x.item() for numpy scalars."
    if name == "Namespace":
        return "Convert it first: vars(args)."
    if isinstance(value, (set, frozenset)):
        return "Convert it to a sorted list first."
    if isinstance(value, tuple):
        return "Convert it to a plain tuple or a dict first (e.g. x._asdict() for a namedtuple)."
    return f"Convert the {module}.{name} to tensors or JSON scalars before saving."


@dataclass
class Stored:
    """One tensor as it goes into the file, with what is needed to put it back."""

    tensor: torch.Tensor
    device: str
    real_view_of: torch.dtype | None = None

    def info(self) -> dict[str, str]:
        info: dict[str, str] = {}
        if self.device != "cpu":
            info["device"] = self.device
        if self.real_view_of is not None:
            info["complex"] = str(self.real_view_of).removeprefix("torch.")
        return info


@dataclass
class _Leaf:
    path: Path
    tensor: torch.Tensor
    node: dict[str, Any]
    span: tuple[int, int] = (0, 0)


@dataclass
class Encoded:
    """The result of encoding: a JSON tree and the tensors it refers to."""

    tree: Any
    stored: dict[str, Stored] = field(default_factory=dict)


def encode(obj: object) -> Encoded:
    """Split ``obj`` into a JSON tree and stored tensors; raise for anything else."""
    leaves: list[_Leaf] = []
    tree = _encode_node(obj, (), leaves, set())
    return Encoded(tree, _store(leaves))


def _encode_node(value: object, path: Path, leaves: list[_Leaf], active: set[int]) -> Any:
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else {"F": repr(value)}
    if isinstance(value, torch.Tensor):
        return _encode_tensor(value, path, leaves)
    if id(value) in active:
        raise _unsupported(path, "the structure contains itself (a reference cycle)", "Break the cycle.")
    if isinstance(value, Mapping):
        return _guarded(_encode_dict, value, path, leaves, active)
    if type(value) in (list, tuple, torch.Size):
        tag = "L" if type(value) is list else "Z" if type(value) is torch.Size else "U"
        items = _guarded(_encode_items, value, path, leaves, active)
        return {tag: items}
    raise _unsupported(path, f"it is a {type(value).__module__}.{type(value).__qualname__}", _advice_for(value))


def _guarded(fn: Any, value: Any, path: Path, leaves: list[_Leaf], active: set[int]) -> Any:
    active.add(id(value))
    try:
        return fn(value, path, leaves, active)
    finally:
        active.discard(id(value))


def _encode_items(value: Any, path: Path, leaves: list[_Leaf], active: set[int]) -> list[Any]:
    return [_encode_node(item, (*path, i), leaves, active) for i, item in enumerate(value)]


def _encode_dict(value: Mapping[Any, Any], path: Path, leaves: list[_Leaf], active: set[int]) -> dict[str, Any]:
    pairs = []
    for key, item in value.items():
        if not isinstance(key, _KEY_TYPES) or (isinstance(key, float) and not math.isfinite(key)):
            raise _unsupported(
                (*path, key), f"its key is a {type(key).__name__}", "Use str, int, float, bool or None keys."
            )
        pairs.append([key, _encode_node(item, (*path, key), leaves, active)])
    node: dict[str, Any] = {"D": pairs}
    if isinstance(value, OrderedDict):
        node["O"] = 1
        module_metadata = getattr(value, "_metadata", None)
        if module_metadata is not None:
            # version info only: dropping what JSON cannot hold is what load_state_dict tolerates
            with contextlib.suppress(TypeError, ValueError):
                node["M"] = json.loads(json.dumps(module_metadata))
    return node


def _encode_tensor(tensor: torch.Tensor, path: Path, leaves: list[_Leaf]) -> dict[str, Any]:
    if type(tensor) not in (torch.Tensor, torch.nn.Parameter) and not isinstance(tensor, torch.nn.parameter.Buffer):
        raise _unsupported(
            path,
            f"it is a tensor subclass {type(tensor).__qualname__}",
            "Convert it to a plain tensor first (DTensor: .full_tensor(); others: .as_subclass(torch.Tensor)).",
        )
    if tensor.layout != torch.strided or tensor.is_quantized or tensor.is_nested:
        raise _unsupported(
            path, f"it is a {tensor.layout} tensor", "Convert it to a dense tensor first (.to_dense() / .dequantize())."
        )
    if tensor.device.type == "meta":
        raise _unsupported(path, "it is on the meta device and holds no data", "Materialize the tensor first.")
    if tensor.dtype not in DTYPE_CODES and tensor.dtype not in _REAL_VIEW_DTYPES:
        raise _unsupported(path, f"its dtype {tensor.dtype} has no safetensors equivalent", "Cast it first (.to(...)).")
    node: dict[str, Any] = {}
    if isinstance(tensor, torch.nn.Parameter):
        node["P"] = tensor.requires_grad
    elif tensor.requires_grad and tensor.is_leaf:
        node["G"] = 1
    leaves.append(_Leaf(path, tensor.detach(), node))
    return node


def _byte_span(tensor: torch.Tensor) -> tuple[int, int]:
    start = int(tensor.storage_offset()) * tensor.element_size()
    if tensor.numel() == 0:
        return (start, start)
    extent = 1 + sum((int(size) - 1) * int(stride) for size, stride in zip(tensor.shape, tensor.stride()))
    return (start, start + extent * tensor.element_size())


def _components(leaves: list[_Leaf]) -> list[list[_Leaf]]:
    """Group leaves whose memory overlaps; each group is stored once."""
    by_storage: dict[tuple[str, int], list[_Leaf]] = {}
    components: list[list[_Leaf]] = []
    for leaf in leaves:
        leaf.span = _byte_span(leaf.tensor)
        if leaf.tensor.numel() == 0:
            components.append([leaf])
            continue
        key = (str(leaf.tensor.device), leaf.tensor.untyped_storage().data_ptr())
        by_storage.setdefault(key, []).append(leaf)
    for group in by_storage.values():
        group.sort(key=lambda leaf: leaf.span)
        current: list[_Leaf] = []
        end = -1
        for leaf in group:
            if current and leaf.span[0] < end:
                current.append(leaf)
                end = max(end, leaf.span[1])
            else:
                if current:
                    components.append(current)
                current, end = [leaf], leaf.span[1]
        components.append(current)
    order = {id(leaf): i for i, leaf in enumerate(leaves)}
    components.sort(key=lambda comp: min(order[id(leaf)] for leaf in comp))
    return components


def _view_signature(t: torch.Tensor) -> tuple[Any, ...]:
    return (t.dtype, t.storage_offset(), tuple(t.shape), t.stride())


def _to_stored(tensor: torch.Tensor) -> Stored:
    device = str(tensor.device)
    data = tensor.resolve_conj().resolve_neg().contiguous()
    real_view_of = None
    if data.dtype in _REAL_VIEW_DTYPES:
        real_view_of = data.dtype
        data = torch.view_as_real(data).contiguous()
    if data.device.type != "cpu":
        data = data.cpu()
    return Stored(data, device, real_view_of)


class _Names:
    def __init__(self) -> None:
        self.used: set[str] = {"__metadata__"}

    def unique(self, path: Path) -> str:
        base = "/".join(str(k) for k in path) or "tensor"
        # names must be valid UTF-8 (lone surrogates are not); the tree keeps the real key
        base = base.encode("utf-8", "replace").decode("utf-8")
        name, n = base, 1
        while name in self.used:
            n += 1
            name = f"{base}#{n}"
        self.used.add(name)
        return name


def _store(leaves: list[_Leaf]) -> dict[str, Stored]:
    stored: dict[str, Stored] = {}
    names = _Names()
    for component in _components(leaves):
        first = component[0]
        signatures = {_view_signature(leaf.tensor) for leaf in component}
        lazy_bits = any(leaf.tensor.is_conj() or leaf.tensor.is_neg() for leaf in component)
        if len(signatures) == 1:
            name = names.unique(first.path)
            stored[name] = _to_stored(first.tensor)
            for leaf in component:
                leaf.node["T"] = name
        elif lazy_bits:  # lazily conjugated/negated views: keep values right, drop sharing
            for leaf in component:
                name = names.unique(leaf.path)
                stored[name] = _to_stored(leaf.tensor)
                leaf.node["T"] = name
        else:
            _store_span(component, names.unique(first.path), stored)
    return stored


def _store_span(component: list[_Leaf], name: str, stored: dict[str, Stored]) -> None:
    """Store the memory covering several overlapping views once; each leaf records its view."""
    start = min(leaf.span[0] for leaf in component)
    end = max(leaf.span[1] for leaf in component)
    dtypes = {leaf.tensor.dtype for leaf in component}
    storage = component[0].tensor.untyped_storage()
    dtype = dtypes.pop() if len(dtypes) == 1 else torch.uint8
    itemsize = dtype.itemsize
    if start % itemsize or end % itemsize:
        dtype, itemsize = torch.uint8, 1
    base = torch.empty(0, dtype=dtype, device=storage.device)
    base.set_(storage, start // itemsize, ((end - start) // itemsize,), (1,))
    stored[name] = _to_stored(base)
    for leaf in component:
        t = leaf.tensor
        offset = (leaf.span[0] - start) // itemsize
        leaf.node.update({"T": name, "V": [offset, list(t.shape), list(t.stride())]})
        if dtype == torch.uint8 and t.dtype != torch.uint8:
            leaf.node["dtype"] = str(t.dtype).removeprefix("torch.")
            leaf.node["V"][0] = leaf.span[0] - start


# ----------------------------------------------------------------------------- decoding


def decode(tree: Any, tensors: Mapping[str, torch.Tensor]) -> Any:
    """Rebuild the structure from its tree and the (already placed) stored tensors."""
    return _Decoder(_aligned(tree, tensors)).node(tree, 0)


def _retyped_bases(tree: Any) -> dict[str, int]:
    """Stored byte tensors that views reinterpret as wider dtypes, with the widest item size."""
    needs: dict[str, int] = {}
    stack = [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, list):
            stack.extend(node)
        elif isinstance(node, dict):
            named = _DTYPE_BY_NAME.get(node["dtype"]) if isinstance(node.get("dtype"), str) else None
            if isinstance(node.get("T"), str) and named is not None:
                needs[node["T"]] = max(needs.get(node["T"], 1), named.itemsize)
            stack.extend(node.values())
    return needs


def _aligned(tree: Any, tensors: Mapping[str, torch.Tensor]) -> Mapping[str, torch.Tensor]:
    """Copy a stored byte tensor into fresh memory when a memory-mapped file placed it less aligned
    than a dtype its views reinterpret it as (complex128 kernels crash on 8-byte alignment). Done
    once per stored tensor, before any view is made, so every view still shares the copy."""
    needs = _retyped_bases(tree)
    moved = {
        name: tensors[name].clone()
        for name, itemsize in needs.items()
        if name in tensors and tensors[name].data_ptr() % itemsize
    }
    return {**tensors, **moved} if moved else tensors


_MAX_DEPTH = 500


class _Decoder:
    def __init__(self, tensors: Mapping[str, torch.Tensor]) -> None:
        self.tensors = tensors
        self.cache: dict[str, torch.Tensor] = {}

    def node(self, node: Any, depth: int) -> Any:
        if depth > _MAX_DEPTH:
            raise TreeError("the structure is nested too deeply")
        if node is None or isinstance(node, (bool, int, float, str)):
            return node
        if not isinstance(node, dict):
            raise TreeError(f"unexpected node {node!r:.80}")
        if "T" in node:
            return self.tensor(node)
        if "D" in node:
            return self.mapping(node, depth)
        for tag, kind in (("L", list), ("U", tuple), ("Z", torch.Size)):
            if tag in node:
                items = node[tag]
                if not isinstance(items, list):
                    raise TreeError(f"{tag} node is not a list")
                return kind(self.node(item, depth + 1) for item in items)
        if "F" in node and node["F"] in ("nan", "inf", "-inf"):
            return float(node["F"])
        raise TreeError(f"unknown node {node!r:.80}")

    def mapping(self, node: dict[str, Any], depth: int) -> dict[Any, Any]:
        pairs = node["D"]
        if not isinstance(pairs, list):
            raise TreeError("D node is not a list")
        result: dict[Any, Any] = OrderedDict() if node.get("O") else {}
        for pair in pairs:
            if not (isinstance(pair, list) and len(pair) == 2 and isinstance(pair[0], _KEY_TYPES)):
                raise TreeError(f"malformed dict entry {pair!r:.80}")
            result[pair[0]] = self.node(pair[1], depth + 1)
        if node.get("O") and isinstance(node.get("M"), dict):
            result._metadata = node["M"]  # type: ignore[attr-defined]
        return result

    def tensor(self, node: dict[str, Any]) -> torch.Tensor:
        key = json.dumps(node, sort_keys=True)
        if key in self.cache:
            return self.cache[key]
        name = node["T"]
        if not isinstance(name, str) or name not in self.tensors:
            raise TreeError(f"reference to missing tensor {name!r:.80}")
        tensor = self.tensors[name]
        if "V" in node:
            tensor = _view(tensor, node)
        if "P" in node:
            tensor = torch.nn.Parameter(tensor, requires_grad=bool(node["P"]))
        elif node.get("G"):
            tensor = tensor.requires_grad_(True)
        self.cache[key] = tensor
        return tensor


def _view(base: torch.Tensor, node: dict[str, Any]) -> torch.Tensor:
    view = node["V"]
    if not (isinstance(view, list) and len(view) == 3):
        raise TreeError("malformed view")
    offset, shape, stride = view
    ints = [offset, *shape, *stride] if isinstance(shape, list) and isinstance(stride, list) else [None]
    if not all(type(v) is int and v >= 0 for v in ints) or len(shape) != len(stride):
        raise TreeError(f"malformed view {view!r:.80}")
    dtype = base.dtype
    if "dtype" in node:
        named = _DTYPE_BY_NAME.get(node["dtype"]) if isinstance(node["dtype"], str) else None
        if named is None or base.dtype != torch.uint8 or offset % named.itemsize:
            raise TreeError(f"malformed view dtype {node['dtype']!r:.40}")
        dtype = named
    numel = math.prod(shape)
    extent = 0 if numel == 0 else 1 + sum((n - 1) * s for n, s in zip(shape, stride))
    base_bytes = base.numel() * base.element_size()
    if (offset if "dtype" in node else offset * dtype.itemsize) + extent * dtype.itemsize > base_bytes:
        raise TreeError("a view reaches past the end of its stored tensor")
    if "dtype" not in node:
        return torch.as_strided(base, shape, stride, base.storage_offset() + offset)
    byte_offset = base.storage_offset() * base.element_size() + offset
    if (base.untyped_storage().data_ptr() + byte_offset) % dtype.itemsize:
        base = base.clone()  # _aligned() copies such bases up front; this only guards hand-made trees
        byte_offset = offset
    out = torch.empty(0, dtype=dtype, device=base.device)
    return out.set_(base.untyped_storage(), byte_offset // dtype.itemsize, shape, stride)
