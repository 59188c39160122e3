"""An isolated import system for the interned modules of one archive.

Each archive gets its own namespace ``_torchferry_code_<n>`` in ``sys.modules``, so two
archives that both intern a module named ``models`` (two versions of a model, hot-swapped
by a server) load side by side without seeing each other. Interned code runs with its own
``__import__`` (through its ``__builtins__``) that sends imports of interned names to the
archive's copy, mocked names to stubs, and everything else to the real import system.
The trust check happened before any of this runs (``trust_code=True``).
"""

from __future__ import annotations

import builtins
import importlib
import importlib.abc
import importlib.machinery
import importlib.util
import itertools
import linecache
import sys
import threading
import types
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from torchferry.archive._capture_format import CODE_ROOT, MANGLE_PREFIX, matches_any, parents
from torchferry.runtime._importer_mock import MockedModule

_NAMESPACES = itertools.count(1)
"""Numbers the archives loaded in this process; ``next()`` on it is atomic in CPython."""


class _ImportlibView(types.ModuleType):
    """What interned code sees as ``importlib``: ``import_module`` goes through the archive."""

    def __init__(self, importer: ArchiveImporter) -> None:
        super().__init__("importlib", importlib.__doc__)
        self.__ferry_importer__ = importer

    def __getattr__(self, name: str) -> Any:
        return getattr(importlib, name)

    def import_module(self, name: str, package: str | None = None) -> types.ModuleType:
        return self.__ferry_importer__.import_module(name, package)


class _SourceLoader(importlib.abc.InspectLoader):
    """Gives the archive's source to ``linecache.lazycache`` and ``inspect`` (tracebacks show code
    lines even after ``linecache.clearcache()``); it loads nothing itself."""

    def __init__(self, text: str) -> None:
        self._text = text

    def get_source(self, fullname: str) -> str:
        return self._text


class ArchiveImporter:
    """Loads the interned modules of one archive under a private, mangled name."""

    def __init__(
        self,
        interned: Mapping[str, str],
        read_member: Callable[[str], bytes],
        *,
        externed: Iterable[str] = (),
        mocked: Iterable[str] = (),
        mock_patterns: Sequence[str] = (),
    ) -> None:
        self.number = next(_NAMESPACES)
        self.prefix = f"{MANGLE_PREFIX}{self.number}"
        self._interned = dict(interned)
        self._externed = set(externed)
        self._mocked = set(mocked)
        self._mock_patterns = tuple(mock_patterns)
        self._read = read_member
        self._lock = threading.RLock()
        self._ready: set[str] = set()  # fully executed; others may be mid-import in another thread
        self._real_import = builtins.__import__
        self._builtins = dict(vars(builtins), __import__=self._import)
        self._importlib = _ImportlibView(self)
        root = types.ModuleType(self.prefix, "interned modules of one torchferry archive")
        root.__path__ = []
        root.__ferry_source__ = self.source_of  # type: ignore[attr-defined]  # packing a loaded model again
        sys.modules[self.prefix] = root

    def source_of(self, name: str) -> tuple[bytes, bool] | None:
        """``(source, is_package)`` of interned module ``name``, or None; capture uses it to pack a
        model rebuilt from this archive again (its classes live under the mangled names)."""
        member = self._interned.get(name)
        if member is None:
            return None
        return self._read(member), member.endswith("/__init__.py")

    # -- which names are ours ------------------------------------------------------------

    def _is_mocked(self, name: str) -> bool:
        """As at pack time: a mock pattern applies to a top-level name or below an interned
        package; below a mocked package everything is mocked, below a real one nothing."""
        if name in self._mocked:
            return True
        parent = name.rpartition(".")[0]
        if parent and self._is_mocked(parent):
            return True
        return matches_any(self._mock_patterns, name) and (not parent or parent in self._interned)

    def _owns(self, name: str) -> bool:
        return name in self._interned or self._is_mocked(name)

    def _under_interned(self, name: str) -> bool:
        """A name below an interned package that the archive did not capture: never import a
        same-named package installed here, which would mix two versions of the code."""
        return any(p in self._interned for p in parents(name)[:-1]) and name not in self._externed

    # -- loading ---------------------------------------------------------------------------

    def import_module(self, name: str, package: str | None = None) -> types.ModuleType:
        """``importlib.import_module`` with the archive's names taking precedence."""
        if name.startswith("."):
            name = self._absolute(name.lstrip("."), package or "", len(name) - len(name.lstrip(".")))
        if not any(self._owns(p) for p in parents(name)):
            return importlib.import_module(name)
        *above, last = parents(name)
        for prefix in above:  # packages first, as the import system does
            self._get(prefix) if self._owns(prefix) else self._real(prefix)
        return self._get(last) if self._owns(last) else self._real(last)

    def _real(self, name: str) -> types.ModuleType:
        if self._under_interned(name):
            raise ModuleNotFoundError(f"No module named {name!r} (not captured in the archive)", name=name)
        return importlib.import_module(name)

    def _get(self, name: str) -> types.ModuleType:
        mangled = f"{self.prefix}.{name}"
        if name in self._ready:
            return sys.modules[mangled]
        with self._lock:  # reentrant: circular imports inside the archive see the partial module
            found = sys.modules.get(mangled)
            if found is not None:
                return found
            parent_name, _, child = name.rpartition(".")
            parent = self._get(parent_name) if parent_name and self._owns(parent_name) else None
            module = self._exec(name, mangled) if name in self._interned else self._stub(name, mangled)
            if parent is not None:
                setattr(parent, child, module)
            self._ready.add(name)
            return module

    def _stub(self, name: str, mangled: str) -> types.ModuleType:
        stub = MockedModule(mangled, name)
        stub.__path__ = []
        sys.modules[mangled] = stub
        return stub

    def _exec(self, name: str, mangled: str) -> types.ModuleType:
        member = self._interned[name]
        package = member.endswith("/__init__.py")
        filename = f"<ferry:{self.number}>/{member.removeprefix(CODE_ROOT)}"  # never a path of the packing machine
        source = self._read(member)
        code = compile(source, filename, "exec", dont_inherit=True)
        text = importlib.util.decode_source(source)
        linecache.cache[filename] = (len(text), None, text.splitlines(keepends=True), filename)  # tracebacks, inspect
        module = types.ModuleType(mangled)
        module.__file__ = filename
        module.__package__ = mangled if package else mangled.rpartition(".")[0]
        loader = _SourceLoader(text)
        module.__loader__ = loader
        module.__spec__ = importlib.machinery.ModuleSpec(mangled, loader, origin=filename, is_package=package)
        if package:
            module.__path__ = []
        module.__dict__["__builtins__"] = self._builtins
        sys.modules[mangled] = module
        try:
            # Runs code from the archive: the caller checked trust_code=True before building.
            exec(code, module.__dict__)  # noqa: S102
        except BaseException:
            sys.modules.pop(mangled, None)
            raise
        return sys.modules[mangled]

    # -- the __import__ that interned code sees ------------------------------------------------

    def _absolute(self, name: str, package: str, level: int) -> str:
        real = package[len(self.prefix) + 1 :] if package.startswith(f"{self.prefix}.") else package
        bits = real.split(".") if real else []
        if level - 1 >= len(bits):
            raise ImportError("attempted relative import beyond top-level package")
        base = ".".join(bits[: len(bits) - (level - 1)])
        return f"{base}.{name}" if name else base

    def _import(
        self,
        name: str,
        globals: Mapping[str, Any] | None = None,  # shadows the builtin, as builtins.__import__ does
        locals: Mapping[str, Any] | None = None,
        fromlist: Sequence[str] | None = (),
        level: int = 0,
    ) -> types.ModuleType:
        if level == 0 and (name == "importlib" or (name.startswith("importlib.") and not fromlist)):
            self._real_import(name, globals, locals, fromlist or (), 0)  # loads importlib.util & co.
            return self._importlib
        package = _package_of(globals) if level else ""
        absolute = self._absolute(name, package, level) if level else name
        if not any(self._owns(p) for p in parents(absolute)):
            return self._real_import(absolute, globals, locals, fromlist or (), 0)
        module = self.import_module(absolute)
        if fromlist:
            self._load_fromlist(module, absolute, fromlist)
            return module
        if level == 0:
            return self.import_module(absolute.partition(".")[0])
        return self.import_module(self._absolute(name.partition(".")[0], package, level)) if name else module

    def _load_fromlist(self, module: types.ModuleType, absolute: str, fromlist: Iterable[str]) -> None:
        for item in fromlist:
            if item == "*":
                names = getattr(module, "__all__", ())
                self._load_fromlist(module, absolute, [n for n in names if isinstance(n, str)])
            elif not hasattr(module, item) and self._owns(f"{absolute}.{item}"):
                self.import_module(f"{absolute}.{item}")

    # -- references from program/model.json ---------------------------------------------------

    def resolve(self, module: str, qualname: str) -> Any:
        """The object named ``qualname`` in ``module`` (interned, mocked or real)."""
        obj: Any = self.import_module(module)
        for part in qualname.split("."):
            obj = getattr(obj, part)
        return obj


def _package_of(globals_: Mapping[str, Any] | None) -> str:
    if not globals_:
        return ""
    package = globals_.get("__package__")
    if package is None:
        name = str(globals_.get("__name__", ""))
        package = name if "__path__" in globals_ else name.rpartition(".")[0]
    return str(package)
