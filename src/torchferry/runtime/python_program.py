"""Rebuild a model packed with ``mode="python"`` from its captured code and JSON module tree.

No pickle, no ``torch.load`` and no constructor call: each module is made with
``cls.__new__(cls)`` and ``nn.Module.__init__``, then its parameters, buffers, submodules and
attributes are put back as ``program/model.json`` describes them. Tensors are assigned, not
copied (like ``load_state_dict(assign=True)``), so memory-mapped weights stay mapped.
"""

from __future__ import annotations

import functools
import json
import math
import weakref
from collections import OrderedDict
from collections.abc import Callable, Mapping
from typing import Any

import torch

from torchferry.archive._capture_format import PROGRAM_FORMAT, code_member, is_dotted_name
from torchferry.errors import ArchiveError
from torchferry.runtime._importer import ArchiveImporter

__all__ = ["build_python_model"]

_FLOATS = {"nan": math.nan, "inf": math.inf, "-inf": -math.inf}


def _bad(what: str) -> ArchiveError:
    return ArchiveError(
        f"the archive's Python program is malformed: {what}. The archive was damaged or written by an "
        "incompatible tool; pack the model again with torchferry.pack(..., mode='python')."
    )


def _expect(value: Any, kind: type | tuple[type, ...], what: str) -> Any:
    if not isinstance(value, kind):
        raise _bad(f"{what} is {type(value).__name__}")
    return value


def _make_importer(program: Mapping[str, Any], read_member: Callable[[str], bytes]) -> ArchiveImporter:
    if program.get("format") != PROGRAM_FORMAT:
        raise ArchiveError(
            f"the archive's Python program has format {program.get('format')!r}; this torchferry reads format "
            f"{PROGRAM_FORMAT}. Upgrade torchferry (pip install -U torchferry) or pack the model again."
        )
    names: dict[str, list[str]] = {}
    for field in ("interned", "packages", "externed", "mocked", "mock_patterns"):
        names[field] = [str(n) for n in _expect(program.get(field, []), list, f"program.{field}")]
    bad = [n for n in names["interned"] if not is_dotted_name(n)]
    if bad:
        raise _bad(f"interned module names {bad!r}")
    packages = set(names["packages"])
    members = {name: code_member(name, package=name in packages) for name in names["interned"]}
    return ArchiveImporter(
        members, read_member, externed=names["externed"], mocked=names["mocked"], mock_patterns=names["mock_patterns"]
    )


def build_python_model(
    program: Mapping[str, Any],
    read_member: Callable[[str], bytes],
    state: Mapping[str, torch.Tensor],
    tensors: Mapping[str, torch.Tensor],
) -> torch.nn.Module:
    """Rebuild the model from captured code; the caller has already checked ``trust_code=True``.

    ``state`` is the model's state_dict as saved at pack time (possibly memory-mapped, already
    on the target device); its tensors become the model's parameters and buffers without a
    copy. ``tensors`` are the extra tensors of :class:`~torchferry.archive.capture.CapturedCode`.
    Interned modules load under a private name per call, so archives with different versions
    of the same package load side by side. Returns the model in ``eval()`` mode.
    """
    importer = _make_importer(program, read_member)
    entry = _expect(program.get("entry"), str, "program.entry")
    try:
        document = json.loads(read_member(entry))
    except ValueError as exc:
        raise _bad(f"{entry} is not JSON ({exc})") from exc
    if not isinstance(document, dict) or document.get("format") != PROGRAM_FORMAT:
        raise _bad(f"{entry} is not a format-{PROGRAM_FORMAT} module tree")
    builder = _Builder(importer, state, tensors, _expect(document.get("aliases", {}), dict, "aliases"))
    model = builder.build(_expect(document.get("root"), dict, "the root module"))
    return model.eval()


class _Builder:
    def __init__(
        self,
        importer: ArchiveImporter,
        state: Mapping[str, torch.Tensor],
        tensors: Mapping[str, torch.Tensor],
        aliases: Mapping[str, list[str]],
    ) -> None:
        self.importer = importer
        self.state = state
        self.tensors = tensors
        self.group: dict[str, list[str]] = {}
        for first, others in aliases.items():
            keys = [first, *others]
            for key in keys:
                self.group[key] = keys
        self.memo: dict[tuple[str, str], torch.Tensor] = {}
        self.modules: dict[str, torch.nn.Module] = {}
        self.pending: list[tuple[torch.nn.Module, dict[str, Any], str]] = []

    def build(self, root: dict[str, Any]) -> torch.nn.Module:
        model = self.module(root, "model")
        for module, attrs, path in self.pending:  # after all modules exist: attributes may refer to any
            for name, value in attrs.items():
                module.__dict__[name] = self.value(value, f"{path}.{name}")
        return model

    # -- code references -------------------------------------------------------------------

    def ref(self, ref: Any) -> Any:
        module, _, qualname = _expect(ref, str, "a code reference").partition(":")
        if not (is_dotted_name(module) and is_dotted_name(qualname)):
            raise _bad(f"code reference {ref!r}")
        try:
            return self.importer.resolve(module, qualname)
        except ModuleNotFoundError as exc:
            raise ArchiveError(
                f"the model needs module {exc.name!r} ({ref}), which is not installed here. Install the "
                "requirements the archive lists (torchferry inspect FILE shows them), then load again."
            ) from exc
        except AttributeError as exc:
            raise ArchiveError(
                f"the model needs {ref}, which module {module!r} here does not define ({exc}). The installed "
                "version differs from the one the model was packed with; install the versions the archive lists."
            ) from exc

    # -- tensors ----------------------------------------------------------------------------

    def tensor(self, entry: Any, path: str, *, parameter: bool = False) -> torch.Tensor:
        entry = _expect(entry, dict, f"the tensor entry of {path}")
        if "state" in entry:
            key = str(entry["state"])
            memo = ("state", self.group.get(key, [key])[0])
            found = next((self.state[k] for k in self.group.get(key, [key]) if k in self.state), None)
        else:
            key = str(entry.get("extra"))
            memo = ("extra", key)
            found = self.tensors.get(key)
        if memo in self.memo:
            return self.memo[memo]
        if found is None:
            raise ArchiveError(
                f"the weights lack tensor {key!r}, needed by {path}; the archive is incomplete. "
                "Pack the model again (torchferry.pack(..., mode='python'))."
            )
        if parameter and not isinstance(found, torch.nn.Parameter):
            found = torch.nn.Parameter(found, requires_grad=bool(entry.get("grad", found.is_floating_point())))
        self.memo[memo] = found
        return found

    # -- modules ----------------------------------------------------------------------------

    def module(self, node: dict[str, Any], path: str) -> torch.nn.Module:
        cls = self.ref(node.get("class"))
        if not (isinstance(cls, type) and issubclass(cls, torch.nn.Module)):
            raise _bad(f"{path} has class {node.get('class')!r}, which is not a torch.nn.Module")
        obj = cls.__new__(cls)
        torch.nn.Module.__init__(obj)  # the bookkeeping (hooks, dicts); no user constructor runs
        self.modules[path] = obj
        obj.__dict__["training"] = bool(node.get("training", False))  # not via a class's own __setattr__
        for name, entry in _expect(node.get("params", {}), dict, f"{path} params").items():
            obj._parameters[name] = None if entry is None else self.tensor(entry, f"{path}.{name}", parameter=True)  # type: ignore[assignment]
        for name, entry in _expect(node.get("buffers", {}), dict, f"{path} buffers").items():
            obj._buffers[name] = None if entry is None else self.tensor(entry, f"{path}.{name}")
        obj._non_persistent_buffers_set.update(str(n) for n in node.get("non_persistent", []))
        for name, child in _expect(node.get("modules", {}), dict, f"{path} modules").items():
            obj._modules[name] = self.child(child, f"{path}.{name}")
        self.pending.append((obj, _expect(node.get("attrs", {}), dict, f"{path} attrs"), path))
        return obj

    def child(self, node: Any, path: str) -> torch.nn.Module | None:
        if node is None:
            return None
        node = _expect(node, dict, path)
        if "$module" in node:
            return self.shared(node["$module"])
        return self.module(node, path)

    def shared(self, path: Any) -> torch.nn.Module:
        found = self.modules.get(str(path))
        if found is None:
            raise _bad(f"reference to module {path!r}, which is not built")
        return found

    # -- attribute values -------------------------------------------------------------------

    def value(self, v: Any, path: str) -> Any:
        if v is None or isinstance(v, (bool, int, float, str)):
            return v
        if isinstance(v, list):
            return [self.value(x, path) for x in v]
        tags = [k for k in _expect(v, dict, path) if k.startswith("$")]
        decode = _DECODERS.get(tags[0]) if len(tags) == 1 else None
        if decode is None:
            raise _bad(f"{path} has an unknown value {sorted(v)!r}")
        return decode(self, v, path)

    def _pairs(self, pairs: Any, path: str) -> list[tuple[Any, Any]]:
        return [(self.value(k, path), self.value(x, path)) for k, x in _expect(pairs, list, path)]


def _dtype(name: Any) -> torch.dtype:
    found = getattr(torch, str(name), None)
    if not isinstance(found, torch.dtype):
        raise _bad(f"unknown dtype {name!r}")
    return found


_DECODERS: dict[str, Callable[[_Builder, dict[str, Any], str], Any]] = {
    "$float": lambda b, v, p: _FLOATS[v["$float"]],
    "$tuple": lambda b, v, p: tuple(b.value(x, p) for x in v["$tuple"]),
    "$size": lambda b, v, p: torch.Size(int(x) for x in v["$size"]),
    "$bytes": lambda b, v, p: bytes.fromhex(v["$bytes"]),
    "$dict": lambda b, v, p: (OrderedDict if v.get("ordered") else dict)(b._pairs(v["$dict"], p)),
    "$set": lambda b, v, p: (frozenset if v.get("frozen") else set)(b.value(x, p) for x in v["$set"]),
    "$dtype": lambda b, v, p: _dtype(v["$dtype"]),
    "$device": lambda b, v, p: torch.device(str(v["$device"])),
    "$tensor": lambda b, v, p: b.tensor(v["$tensor"], p),
    "$weakref": lambda b, v, p: weakref.ref(b.tensor(v["$weakref"], p)),
    "$module": lambda b, v, p: b.shared(v["$module"]),
    "$method": lambda b, v, p: getattr(b.shared(v["$method"]), str(v["name"])),
    "$ref": lambda b, v, p: b.ref(v["$ref"]),
    "$enum": lambda b, v, p: b.ref(v["$enum"])[str(v["name"])],
    "$partial": lambda b, v, p: functools.partial(
        b.ref(v["$partial"]), *(b.value(x, p) for x in v["args"]), **dict(b._pairs(v["kwargs"], p))
    ),
}
