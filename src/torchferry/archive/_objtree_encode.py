"""The model's module tree as JSON (``program/model.json``): what torch.package pickles, written
as data, so loading runs no pickle and no constructor.

Document::

    {"format": 1, "root": NODE, "aliases": {"emb.weight": ["head.weight"]}}
    NODE  = {"class": "models.net:Net", "training": bool,
             "params":  {name: TENSOR | null}, "buffers": {name: TENSOR | null},
             "non_persistent": [buffer names], "modules": {name: NODE | {"$module": path} | null},
             "attrs": {name: VALUE}}
    TENSOR = {"state": state_dict key} | {"extra": key in CapturedCode.tensors}, plus "grad": bool

Tensors are referenced, never copied: a tensor that ``model.state_dict()`` holds (by identity)
is named by its first key there, and ``aliases`` lists the other keys of tied tensors so that
a loader finds it under whichever key was kept. Every other tensor (non-persistent buffers,
plain tensor attributes) goes to the extra tensors. VALUE is JSON (null, bool, int, finite
float, str, list) or a one-tag object:

    {"$float": "nan"|"inf"|"-inf"}  {"$tuple": [...]}  {"$size": [...]}  {"$bytes": "hex"}
    {"$dict": [[KEY, VALUE], ...], "ordered": bool}  {"$set": [...], "frozen": bool}
    {"$dtype": "float32"}  {"$device": "cuda:0"}  {"$tensor": TENSOR}  {"$weakref": TENSOR}
    {"$module": "model.encoder"}  {"$method": "model.encoder", "name": "forward"}
    {"$ref": "module:qualname"}  {"$enum": "module:qualname", "name": "MEMBER"}
    {"$partial": "module:qualname", "args": [...], "kwargs": [[str, VALUE], ...]}
"""

from __future__ import annotations

import enum
import functools
import math
import sys
import types
import weakref
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

import torch

from torchferry.archive._capture_format import MANGLE_PREFIX
from torchferry.archive._capture_graph import Use

FORMAT = 1

_HOOK_DICTS = {
    "_backward_hooks": "backward hooks",
    "_backward_pre_hooks": "backward pre-hooks",
    "_forward_hooks": "forward hooks",
    "_forward_hooks_with_kwargs": "forward hooks",
    "_forward_hooks_always_called": "forward hooks",
    "_forward_pre_hooks": "forward pre-hooks",
    "_forward_pre_hooks_with_kwargs": "forward pre-hooks",
    "_state_dict_hooks": "state_dict hooks",
    "_state_dict_pre_hooks": "state_dict pre-hooks",
    "_load_state_dict_pre_hooks": "load_state_dict pre-hooks",
    "_load_state_dict_post_hooks": "load_state_dict post-hooks",
}
_RESTORED = {"training", "_parameters", "_buffers", "_non_persistent_buffers_set", "_modules", "_is_full_backward_hook"}
_INTERNALS = frozenset(_HOOK_DICTS) | _RESTORED | {"_compiled_call_impl"}
"""``nn.Module.__init__`` creates these; the loader calls it, then restores the data ones.
A ``module.compile()`` result is not kept: the rebuilt model is eager; compile it again."""

_PUBLIC_HOMES = ("torch", "torch.nn.functional", "torch.special", "torch.linalg", "torch.fft", "math", "operator")
"""Where to look first for built-in functions whose ``__module__`` is private (``torch._C._nn``)."""

_NONFINITE = {math.inf: "inf", -math.inf: "-inf"}


@dataclass
class EncodedTree:
    document: dict[str, Any]
    tensors: dict[str, torch.Tensor]
    uses: dict[str, list[Use]] = field(default_factory=dict)
    """Module name -> objects of the tree defined there (the roots of the code walk)."""
    problems: list[str] = field(default_factory=list)
    """``"model.head.fn: a lambda ..."``: attributes that cannot be described without pickle."""
    archives: set[str] = field(default_factory=set)
    """Namespaces (``_torchferry_code_<n>``) of loaded archives whose code the model uses: a
    model loaded from an archive packs again under its original module names."""


def _resolve(module: str, qualname: str) -> Any:
    obj: Any = sys.modules.get(module)
    for part in qualname.split("."):
        obj = getattr(obj, part, None)
    return obj


def _candidates(obj: Any) -> list[tuple[str, str]]:
    module = getattr(obj, "__module__", None) or ""
    qualname = getattr(obj, "__qualname__", None) or ""
    name = getattr(obj, "__name__", None) or ""
    own = [(module, name), (module, qualname)]
    public = [(home, name) for home in _PUBLIC_HOMES]
    private = any(part.startswith("_") for part in module.split("."))
    return [*public, *own] if private else [*own, *public]


class _Encoder:
    def __init__(self, model: torch.nn.Module) -> None:
        self._state = model.state_dict(keep_vars=True)  # kept alive: the ids below stay valid
        groups: dict[int, list[str]] = {}
        for key, tensor in self._state.items():
            groups.setdefault(id(tensor), []).append(key)
        self.state_key = {ident: keys[0] for ident, keys in groups.items()}
        self.aliases = {keys[0]: keys[1:] for keys in groups.values() if len(keys) > 1}
        self.module_path = {}
        for name, module in model.named_modules(remove_duplicate=True):
            self.module_path[id(module)] = f"model.{name}" if name else "model"
        self.extra_key: dict[int, str] = {}
        self.out = EncodedTree({}, {})
        self._stack: set[int] = set()

    def problem(self, path: str, what: str) -> None:
        self.out.problems.append(f"{path}: {what}")

    # -- references to code ------------------------------------------------------------

    def reference(self, obj: Any, path: str, kind: str) -> str | None:
        qualname = getattr(obj, "__qualname__", None) or repr(obj)
        module = getattr(obj, "__module__", None) or ""
        if module == "__main__":
            self.out.uses.setdefault("__main__", []).append(Use(f"{kind} {qualname}", path))
            return f"__main__:{qualname}"
        if "<lambda>" in qualname:
            self.problem(path, "a lambda; define a module-level function and store that instead")
            return None
        if "<locals>" in qualname:
            owner = qualname.split(".<locals>")[0]
            self.problem(path, f"{kind} {qualname} is defined inside function {owner}(); move it to module level")
            return None
        for home, name in _candidates(obj):
            if home and name and _resolve(home, name) is obj:
                if home.startswith(MANGLE_PREFIX):
                    namespace, _, home = home.partition(".")
                    self.out.archives.add(namespace)
                self.out.uses.setdefault(home, []).append(Use(f"{kind} {name}", path))
                return f"{home}:{name}"
        self.problem(path, f"{kind} {qualname} cannot be found again by name in module {module or '(none)'}")
        return None

    # -- tensors -------------------------------------------------------------------------

    def tensor(self, tensor: torch.Tensor, path: str, kind: str) -> dict[str, Any] | None:
        if type(tensor) not in (torch.Tensor, torch.nn.Parameter):
            hint = "run one forward pass before packing" if "Uninitialized" in type(tensor).__name__ else ""
            self.problem(path, f"a {type(tensor).__qualname__} (tensor subclass) {hint}".rstrip())
            return None
        entry: dict[str, Any]
        if id(tensor) in self.state_key:
            entry = {"state": self.state_key[id(tensor)]}
        else:
            key = self.extra_key.get(id(tensor))
            if key is None:
                key = self.extra_key[id(tensor)] = f"{kind}:{path.removeprefix('model.')}"
                self.out.tensors[key] = tensor.detach().clone(memory_format=torch.contiguous_format)
            entry = {"extra": key}
        if isinstance(tensor, torch.nn.Parameter) or tensor.requires_grad:
            entry["grad"] = tensor.requires_grad
        return entry

    # -- modules ---------------------------------------------------------------------------

    def module(self, module: torch.nn.Module, path: str) -> dict[str, Any] | None:
        first = self.module_path[id(module)]
        if first != path:
            return {"$module": first}
        if not self._check_module(module, path):
            return None
        return {
            "class": self.reference(type(module), path, "class"),
            "training": module.training,
            "params": {
                n: None if p is None else self.tensor(p, f"{path}.{n}", "param") for n, p in module._parameters.items()
            },
            "buffers": {
                n: None if b is None else self.tensor(b, f"{path}.{n}", "buffer") for n, b in module._buffers.items()
            },
            "non_persistent": sorted(module._non_persistent_buffers_set),
            "modules": {n: None if m is None else self.module(m, f"{path}.{n}") for n, m in module._modules.items()},
            "attrs": {n: self.value(v, f"{path}.{n}") for n, v in vars(module).items() if n not in _INTERNALS},
        }

    def _check_module(self, module: torch.nn.Module, path: str) -> bool:
        if torch.nn.utils.parametrize.is_parametrized(module):
            self.problem(path, "is parametrized (torch.nn.utils.parametrize); remove_parametrizations() before packing")
            return False
        found = sorted({what for name, what in _HOOK_DICTS.items() if getattr(module, name, None)})
        if found:
            self.problem(path, f"has {' and '.join(found)}; hooks are code attached at run time: remove them")
        return True

    # -- plain attribute values ----------------------------------------------------------------

    def value(self, v: Any, path: str) -> Any:
        if v is None or type(v) in (bool, str):
            return v
        for encode in (self._number, self._torch_value, self._container, self._code):
            found = encode(v, path)
            if found is not _NO:
                return found
        self.problem(
            path, f"a {type(v).__module__}.{type(v).__qualname__} object, which cannot be stored without pickle"
        )
        return None

    def _number(self, v: Any, path: str) -> Any:
        if isinstance(v, enum.Enum):
            return {"$enum": self.reference(type(v), path, "enum"), "name": v.name}
        if isinstance(v, int) and not isinstance(v, bool):
            return int(v)
        if isinstance(v, float):
            return float(v) if math.isfinite(v) else {"$float": _NONFINITE.get(float(v), "nan")}
        if isinstance(v, bytes):
            return {"$bytes": v.hex()}
        return _NO

    def _torch_value(self, v: Any, path: str) -> Any:
        if isinstance(v, torch.dtype):
            return {"$dtype": str(v).removeprefix("torch.")}
        if isinstance(v, torch.device):
            return {"$device": str(v)}
        if isinstance(v, torch.Size):
            return {"$size": list(v)}
        if isinstance(v, torch.Tensor):
            return {"$tensor": self.tensor(v, path, "attr")}
        if isinstance(v, torch.nn.Module):
            if id(v) in self.module_path:
                return {"$module": self.module_path[id(v)]}
            self.problem(path, "a module that is not part of the model's module tree; register it as a submodule")
            return None
        referent = v() if isinstance(v, weakref.ref) else None
        if isinstance(referent, torch.Tensor):
            return {"$weakref": self.tensor(referent, path, "attr")}
        return _NO

    def _container(self, v: Any, path: str) -> Any:
        kind = type(v)
        if kind not in (list, tuple, dict, OrderedDict, set, frozenset):
            return _NO
        if id(v) in self._stack:
            self.problem(path, "a container that contains itself")
            return None
        self._stack.add(id(v))
        try:
            if kind in (list, tuple):
                items = [self.value(x, f"{path}[{i}]") for i, x in enumerate(v)]
                return items if kind is list else {"$tuple": items}
            if kind in (set, frozenset):
                return {
                    "$set": sorted((self.value(x, f"{path}{{}}") for x in v), key=repr),
                    "frozen": kind is frozenset,
                }
            pairs = [[self.value(k, f"{path}(key)"), self.value(x, f"{path}[{k!r}]")] for k, x in v.items()]
            return {"$dict": pairs, "ordered": kind is OrderedDict}
        finally:
            self._stack.discard(id(v))

    def _code(self, v: Any, path: str) -> Any:
        if isinstance(v, types.MethodType) and isinstance(v.__self__, torch.nn.Module):
            owner = self._torch_value(v.__self__, path)
            return None if owner is None else {"$method": owner["$module"], "name": v.__func__.__name__}
        if type(v) is functools.partial:
            args = [self.value(a, f"{path}.args[{i}]") for i, a in enumerate(v.args)]
            kwargs = [[k, self.value(a, f"{path}.keywords[{k!r}]")] for k, a in v.keywords.items()]
            return {"$partial": self.reference(v.func, path, "function"), "args": args, "kwargs": kwargs}
        if isinstance(v, type):
            return {"$ref": self.reference(v, path, "class")}
        if isinstance(v, types.FunctionType) or _is_module_builtin(v):
            return {"$ref": self.reference(v, path, "function")}
        return _NO


_NO: Any = object()


def _is_module_builtin(v: Any) -> bool:
    return isinstance(v, types.BuiltinFunctionType) and (
        v.__self__ is None or isinstance(v.__self__, (types.ModuleType, type))
    )


def encode_tree(model: torch.nn.Module) -> EncodedTree:
    """Describe ``model`` as JSON plus the tensors ``model.state_dict()`` does not hold."""
    encoder = _Encoder(model)
    root = encoder.module(model, "model")
    encoder.out.document = {"format": FORMAT, "root": root, "aliases": encoder.aliases}
    return encoder.out
