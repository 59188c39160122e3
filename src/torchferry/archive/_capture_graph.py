"""Which modules a model needs, and what to do with each: intern, extern or mock.

The walk starts at the modules that define the model's classes and attribute values and
follows the imports of every interned module. Each module gets one action; a module that
cannot be classified is *unresolved*, and every unresolved module is reported at once with
the argument that fixes it (torch.package stops at the first attempt and gives no advice).
"""

from __future__ import annotations

import importlib.machinery
import importlib.metadata
import importlib.util
import os
import sys
from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from torchferry.archive._capture_dists import Distributions, in_site_packages
from torchferry.archive._capture_format import matches_any, parents
from torchferry.archive._capture_imports import scan_imports

INTERN, EXTERN, MOCK, ABSENT, MISSING, UNRESOLVED = "intern", "extern", "mock", "absent", "missing", "unresolved"
_FOLLOWED = {EXTERN, MOCK, MISSING, UNRESOLVED}
"""A submodule of a package with one of these actions gets the same action: Python would
take it from that (real, stubbed or missing) package, never from the archive."""


@dataclass(frozen=True)
class Patterns:
    intern: tuple[str, ...] = ()
    extern: tuple[str, ...] = ()
    mock: tuple[str, ...] = ()


@dataclass(frozen=True)
class Use:
    """Why a module is needed: imported by another module, or defining an object of the model."""

    subject: str  # "models.net" for an import, "class Net" for an object
    where: str = ""  # attribute path of the object ("model.encoder"); empty for imports
    guarded: bool = False

    def describe(self) -> str:
        return f"{self.subject} ({self.where})" if self.where else self.subject


@dataclass
class ModuleRecord:
    name: str
    action: str
    source: bytes = b""
    package: bool = False
    requirement: tuple[str, str] | None = None
    implicit: bool = False  # standard library / torch: not worth listing
    reason: str = ""  # for unresolved modules: why, and the argument that fixes it
    follows: str = ""  # the parent package whose action this module inherits
    search: tuple[str, ...] = field(default=(), repr=False)


@dataclass(frozen=True)
class _Location:
    file: str | None = None
    search: tuple[str, ...] = ()
    package: bool = False
    missing: bool = False
    origin: str = ""


def _locate(name: str) -> _Location:
    module = sys.modules.get(name)
    spec = getattr(module, "__spec__", None) if module is not None else None
    if module is not None and spec is None:
        path = getattr(module, "__path__", None)
        file = getattr(module, "__file__", None)
        return _Location(file if isinstance(file, str) else None, tuple(path or ()), path is not None)
    if spec is None:
        try:
            spec = importlib.util.find_spec(name)
        except Exception:  # the parent failed to import or is not a package: the module is not there
            spec = None
    if spec is None:
        return _Location(missing=True)
    search = tuple(spec.submodule_search_locations or ())
    file = spec.origin if spec.has_location else None
    return _Location(file, search, spec.submodule_search_locations is not None, origin=str(spec.origin))


def _read_source(name: str, loc: _Location, *, forced: bool) -> ModuleRecord:
    if loc.file is None and loc.package:  # a namespace package (a folder without __init__.py): empty will do
        return ModuleRecord(name, INTERN, b"", package=True, search=loc.search)
    if loc.file is None:
        reason = f"has no source file ({loc.origin or 'created at run time'})"
        return _unresolved(name, reason, _fix_extern_or_mock(name))
    if not loc.file.endswith(".py"):
        why = "matches an intern pattern but" if forced else "is outside site-packages and"
        return _unresolved(
            name, f"{why} has no Python source ({os.path.basename(loc.file)})", _fix_extern_or_mock(name)
        )
    try:
        source = Path(loc.file).read_bytes()
    except OSError as exc:
        return _unresolved(name, f"has a source file that cannot be read ({exc.strerror})", _fix_extern_or_mock(name))
    return ModuleRecord(name, INTERN, source, package=loc.package, search=loc.search)


def _unresolved(name: str, reason: str, fix: str) -> ModuleRecord:
    return ModuleRecord(name, UNRESOLVED, reason=f"{reason} — {fix}")


def _fix_extern_or_mock(name: str) -> str:
    return f'pass extern=["{name}"] if the loading machine has it too, or mock=["{name}"] (stub it)'


def _from_archives(name: str, archives: Iterable[str]) -> ModuleRecord | None:
    """The source of ``name`` in a loaded archive's namespace (see runtime._importer)."""
    for namespace in sorted(archives):
        lookup = getattr(sys.modules.get(namespace), "__ferry_source__", None)
        try:
            found = lookup(name) if callable(lookup) else None
        except Exception:  # the archive it was loaded from is gone: the module counts as missing
            found = None
        if isinstance(found, tuple) and len(found) == 2 and isinstance(found[0], bytes):
            return ModuleRecord(name, INTERN, found[0], package=bool(found[1]))
    return None


class _Rules:
    """Classifies one module, ignoring its parents: user patterns, then where its file lives."""

    def __init__(self, patterns: Patterns, archives: Iterable[str]) -> None:
        self.patterns = patterns
        self.archives = tuple(archives)
        self.dists = Distributions()

    def in_archive(self, name: str) -> bool:
        return bool(self.archives) and _from_archives(name, self.archives) is not None

    def classify(self, name: str) -> ModuleRecord:
        if name == "__main__":
            return ModuleRecord(name, UNRESOLVED)  # its message depends on what is defined there
        if matches_any(self.patterns.mock, name):
            return ModuleRecord(name, MOCK)
        implicit = self._implicit(name)  # an extern pattern would give the same
        if implicit is not None:
            return implicit
        archived = _from_archives(name, self.archives) if self.archives else None
        if archived is not None and not matches_any(self.patterns.extern, name):
            return archived
        loc = _locate(name)
        if matches_any(self.patterns.extern, name):
            return self._extern(name, loc.file)
        if loc.missing:
            return ModuleRecord(name, MISSING)
        if matches_any(self.patterns.intern, name):
            return _read_source(name, loc, forced=True)
        return self._by_location(name, loc)

    def _extern(self, name: str, file: str | None, *, implicit: bool = False) -> ModuleRecord:
        top = name.partition(".")[0]
        return ModuleRecord(name, EXTERN, requirement=self.dists.requirement(top, file), implicit=implicit)

    def _implicit(self, name: str) -> ModuleRecord | None:
        top = name.partition(".")[0]
        if top == "torch":
            return ModuleRecord(name, EXTERN, requirement=self.dists.requirement("torch", None), implicit=True)
        if top in sys.stdlib_module_names:
            return ModuleRecord(name, EXTERN, implicit=True)
        return None

    def _by_location(self, name: str, loc: _Location) -> ModuleRecord:
        top = name.partition(".")[0]
        if loc.file is None and not loc.package:
            return _read_source(name, loc, forced=False)  # which explains that there is no source
        where = [loc.file] if loc.file else list(loc.search)
        if where and all(in_site_packages(p) for p in where):
            record = self._extern(name, loc.file)
            if record.requirement is None:
                return _unresolved(
                    name, "lives in site-packages but no installed distribution provides it", _fix_extern_or_mock(name)
                )
            return record
        owner = self.dists.source_checkout_owner(top, where)
        if owner is not None:
            return _unresolved(
                name,
                f"belongs to the distribution {owner!r}, installed from a source folder (editable/development "
                "install), so it is unclear whether the loading machine has it",
                f'pass extern=["{top}.**"] if the loading machine installs {owner}, or intern=["{top}.**"] '
                "to ship its source in the archive",
            )
        return _read_source(name, loc, forced=False)


class _Walker:
    def __init__(self, patterns: Patterns, archives: Iterable[str]) -> None:
        self.rules = _Rules(patterns, archives)
        self.records: dict[str, ModuleRecord] = {}
        self.uses: dict[str, list[Use]] = {}
        self.queue: deque[str] = deque()

    def need(self, name: str, use: Use) -> None:
        for prefix in parents(name):
            self.uses.setdefault(prefix, []).append(use)
            if prefix not in self.records:
                record = self._classify(prefix)
                self.records[prefix] = record
                if record.action == INTERN:
                    self.queue.append(prefix)

    def _classify(self, name: str) -> ModuleRecord:
        parent = name.rpartition(".")[0]
        above = self.records.get(parent) if parent else None
        if above is not None and above.action in _FOLLOWED:
            follows = above.follows or parent
            return ModuleRecord(
                name, above.action, requirement=above.requirement, implicit=above.implicit, follows=follows
            )
        return self.rules.classify(name)

    def run(self) -> None:
        while self.queue:
            name = self.queue.popleft()
            record = self.records[name]
            try:
                found = scan_imports(record.source, name, is_package=record.package)
            except (SyntaxError, ValueError) as exc:
                record.action = UNRESOLVED
                record.reason = f'has source that does not parse ({exc}) — fix it, or pass mock=["{name}"]'
                continue
            for item in found:
                self.need(item.module, Use(name, guarded=item.guarded))
                self._need_submodules(item.module, item.names, Use(name, guarded=item.guarded))

    def _need_submodules(self, module: str, names: Iterable[str], use: Use) -> None:
        """``from pkg import a``: ``a`` may be a submodule of an interned package, or just an attribute."""
        record = self.records.get(module)
        if record is None or record.action != INTERN or not record.package:
            return
        for name in names:
            full = f"{module}.{name}"
            if full in sys.modules or _finds(full, record.search) or self.rules.in_archive(full):
                self.need(full, use)


def _finds(name: str, search: tuple[str, ...]) -> bool:
    if not search:
        return False
    try:
        return importlib.machinery.PathFinder.find_spec(name, list(search)) is not None
    except (ImportError, OSError, ValueError):
        return False


def _finish_missing(records: Mapping[str, ModuleRecord], uses: Mapping[str, list[Use]]) -> None:
    """A missing module only imported inside ``try/except ImportError`` is fine (absent);
    otherwise loading would fail, so it is unresolved."""
    for name in sorted(records, key=lambda n: n.count(".")):
        record = records[name]
        if record.action != MISSING:
            continue
        if record.follows:
            record.action = records[record.follows].action
        elif all(use.guarded for use in uses.get(name, [])):
            record.action = ABSENT
        else:
            record.action = UNRESOLVED
            record.reason = f'but not installed — pass mock=["{name}"] (stub it) or install it'


def walk_modules(
    roots: Mapping[str, list[Use]], patterns: Patterns, archives: Iterable[str] = ()
) -> tuple[dict[str, ModuleRecord], dict[str, list[Use]]]:
    """Classify the modules that define the model's objects and everything interned code imports;
    ``archives`` are namespaces of loaded archives whose interned sources count as the user's code."""
    walker = _Walker(patterns, archives)
    for name, uses in roots.items():
        for use in uses:
            walker.need(name, use)
    walker.run()
    _finish_missing(walker.records, walker.uses)
    return walker.records, walker.uses


def requirements(records: Iterable[ModuleRecord]) -> dict[str, str]:
    found = {r.requirement for r in records if r.action == EXTERN and r.requirement is not None}
    return dict(sorted(found))
