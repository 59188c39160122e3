"""``mode="python"``: capture the model's own source code, like torch.package, but never pickle.

torch.package pickles the model and ships the modules its pickle names. We describe the
module object tree as JSON instead (``program/model.json``, see ``_objtree_encode``), so
loading runs no pickle and no constructor, and ship three kinds of modules:

- *interned*: the source goes into the archive (``program/code/...``); the user's own code.
- *externed*: imported on the loading machine; the standard library, torch, and installed
  distributions, whose versions become requirements.
- *mocked*: a stub whose objects raise ``NotImplementedError`` when used.

What cannot be captured (a class in ``__main__``, a module that is not installed, compiled
code no distribution provides, a lambda attribute, hooks) is gathered and reported in one
:class:`~torchferry.errors.PackagingError`, each problem with the argument that fixes it.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from torchferry.archive._capture_dists import in_site_packages
from torchferry.archive._capture_format import (
    ENTRY_MEMBER,
    MANGLE_PREFIX,
    PROGRAM_FORMAT,
    code_member,
    matches_any,
)
from torchferry.archive._capture_graph import (
    ABSENT,
    EXTERN,
    INTERN,
    MOCK,
    UNRESOLVED,
    ModuleRecord,
    Patterns,
    Use,
    requirements,
    walk_modules,
)
from torchferry.archive._objtree_encode import EncodedTree, encode_tree
from torchferry.errors import PackagingError

__all__ = ["CapturedCode", "capture_python"]

_ATTRIBUTE_ADVICE = (
    "Register tensors as buffers (self.register_buffer(name, tensor)), store module-level functions "
    "instead of lambdas or local functions, remove hooks and parametrizations, or pack with mode='export'."
)


@dataclass(frozen=True)
class CapturedCode:
    """Everything ``mode="python"`` adds to an archive besides the state_dict."""

    files: dict[str, bytes]
    """Archive member path -> content; every path starts with ``program/``."""
    program: dict[str, Any]
    """JSON for ``manifest["program"]``: what the loader needs besides ``files`` and tensors."""
    requirements: dict[str, str]
    """Distribution -> installed version, for every externed third-party module (torch included)."""
    tensors: dict[str, torch.Tensor]
    """Tensors the module tree needs that ``model.state_dict()`` does not hold."""


def capture_python(
    model: torch.nn.Module, *, intern: Sequence[str] = (), extern: Sequence[str] = (), mock: Sequence[str] = ()
) -> CapturedCode:
    """Capture ``model``'s code and module tree so that it loads where its source is absent.

    Modules are classified automatically: the standard library and ``torch`` are externed;
    a module in site-packages that an installed distribution provides is externed and that
    distribution's version recorded; a ``.py`` file elsewhere on ``sys.path`` (your code) is
    interned. ``intern``/``extern``/``mock`` are Bazel-style globs on dotted names that
    override this (``*`` is one segment, ``**`` any number, zero included: ``models.**``
    matches ``models`` and everything below it). When several match, **mock wins over
    extern, and extern over intern**; the standard library and torch are never interned.
    A submodule of an externed or mocked package is treated like its package.

    An import that fails only inside ``try: ... except ImportError`` (or under
    ``if TYPE_CHECKING:``) is not an error: the code copes, and at load the import fails the
    same way. Dynamic imports with computed names are not seen: intern them by pattern.

    Raises :class:`PackagingError` listing, all at once, every module that cannot be
    classified and every attribute that cannot be described without pickle; ``.unresolved``
    holds their names (module names and attribute paths such as ``model.head.fn``).
    """
    patterns = Patterns(tuple(intern), tuple(extern), tuple(mock))
    tree = encode_tree(model)
    roots = {**tree.uses, **_loaded_by_pattern(patterns.intern, tree.uses)}
    records, uses = walk_modules(roots, patterns, tree.archives)
    _raise_problems(tree, records, uses)
    interned = {name: r for name, r in sorted(records.items()) if r.action == INTERN}
    files = {code_member(name, package=r.package): r.source for name, r in interned.items()}
    files[ENTRY_MEMBER] = json.dumps(tree.document, indent=1, allow_nan=False).encode()
    program = {
        "format": PROGRAM_FORMAT,
        "entry": ENTRY_MEMBER,
        "interned": list(interned),
        "packages": [name for name, r in interned.items() if r.package],
        "externed": sorted(n for n, r in records.items() if r.action == EXTERN and not r.implicit),
        "mocked": sorted(n for n, r in records.items() if r.action == MOCK),
        "mock_patterns": list(patterns.mock),
        "absent": sorted(n for n, r in records.items() if r.action == ABSENT and not r.follows),
    }
    return CapturedCode(files, program, requirements(records.values()), tree.tensors)


def _loaded_by_pattern(intern: Sequence[str], seen: Mapping[str, list[Use]]) -> dict[str, list[Use]]:
    """Modules of the user's code loaded while packing that match ``intern``: code that imports
    by computed names (plugin registries) is invisible to the import scan, the patterns name it."""
    found: dict[str, list[Use]] = {}
    for name, module in list(sys.modules.items()):
        file = getattr(module, "__file__", None)
        if (
            name not in seen
            and name != "__main__"
            and not name.startswith(MANGLE_PREFIX)
            and isinstance(file, str)
            and not in_site_packages(file)
            and name.partition(".")[0] not in sys.stdlib_module_names
            and matches_any(intern, name)
        ):
            found[name] = [Use(f"a module loaded while packing that matches intern={list(intern)}")]
    return found


def _who(uses: Sequence[Use]) -> str:
    importers = list(dict.fromkeys(u.describe() for u in uses if not u.where))
    objects = list(dict.fromkeys(u.describe() for u in uses if u.where))
    parts = []
    if importers:
        more = f" and {len(importers) - 3} more" if len(importers) > 3 else ""
        parts.append(f"imported by {', '.join(importers[:3])}{more}")
    if objects:
        more = f" and {len(objects) - 3} more" if len(objects) > 3 else ""
        parts.append(f"needed by {', '.join(objects[:3])}{more}")
    return " and ".join(parts)


def _module_problems(records: Mapping[str, ModuleRecord], uses: Mapping[str, list[Use]]) -> dict[str, str]:
    problems: dict[str, str] = {}
    for name, record in sorted(records.items()):
        if record.follows or record.action not in (UNRESOLVED, MOCK):
            continue
        if name == "__main__":
            defined = [u.subject for u in uses.get(name, []) if u.where] or ["some code"]
            problems[name] = (
                f"{', '.join(defined)} {'is' if len(defined) == 1 else 'are'} defined in __main__ (the running "
                "script or notebook); move it into a module file and import it, or use mode='export'"
            )
        elif record.action == UNRESOLVED:
            joint = " " if record.reason.startswith("but ") else "; it "
            problems[name] = f"{_who(uses.get(name, []))}{joint}{record.reason}"
        elif any(u.where for u in uses.get(name, [])):  # mocked, yet the module tree needs its objects
            problems[name] = (
                f"is mocked, but {_who([u for u in uses[name] if u.where])} and a stub cannot rebuild it — "
                f"remove it from mock=[...], or extern it"
            )
    return problems


def _raise_problems(tree: EncodedTree, records: Mapping[str, ModuleRecord], uses: Mapping[str, list[Use]]) -> None:
    modules = _module_problems(records, uses)
    if not modules and not tree.problems:
        return
    count = len(modules) + len(tree.problems)
    lines = [f"cannot pack this model with mode='python': {count} problem{'s' if count > 1 else ''}, all listed here."]
    if modules:
        lines += ["", "Modules that cannot be captured:"]
        lines += [f"  - {name}: {text}" for name, text in modules.items()]
    if tree.problems:
        lines += ["", "Attributes that cannot be stored without pickle:"]
        lines += [f"  - {text}" for text in tree.problems]
        lines += [f"  {_ATTRIBUTE_ADVICE}"]
    attribute_paths = [text.split(": ", 1)[0] for text in tree.problems]
    raise PackagingError("\n".join(lines), unresolved=[*modules, *dict.fromkeys(attribute_paths)])
