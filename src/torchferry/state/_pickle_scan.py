"""Static disassembly of pickles: which globals a file would import, without importing them.

One scanner for every ``torch.save`` layout (the ``data.pkl`` of a zip, the legacy
non-zip sequence of pickles, a raw pickle). It walks the opcodes with
``pickletools.genops``, which never executes anything, follows the strings that
``STACK_GLOBAL`` consumes, notices a pickled ``nn.Module`` by its ``_parameters`` and
``_modules`` attributes, and tells a truncated file from a complete one.
"""

from __future__ import annotations

import os
import pickletools
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from typing import IO

_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
_LEGACY_PICKLES = 5  # magic number, protocol version, sys info, the object, storage keys
_STRING_OPS = {"SHORT_BINUNICODE", "BINUNICODE", "BINUNICODE8", "UNICODE", "SHORT_BINSTRING", "BINSTRING", "STRING"}


@dataclass(frozen=True)
class Scan:
    globals: list[str]
    """Every ``module.name`` the pickles import, in order of first use."""
    complete: bool
    """False when the file ends inside a pickle the format requires."""
    module_like: bool
    """True when the pickle holds an object with ``_parameters`` and ``_modules``: an nn.Module."""


def _allowed() -> set[str]:
    try:
        from torch._weights_only_unpickler import _get_allowed_globals

        return set(_get_allowed_globals())
    except Exception:
        return set()


class _Walker:
    def __init__(self) -> None:
        self.found: list[str] = []
        self.stack: list[object] = []
        self.memo: dict[int, object] = {}
        self.strings: set[str] = set()

    def _record(self, name: str) -> None:
        if name not in self.found:
            self.found.append(name)

    def step(self, name: str, arg: object) -> None:
        if name == "GLOBAL" and isinstance(arg, str):
            self._record(arg.replace(" ", ".", 1))
        elif name == "STACK_GLOBAL" and len(self.stack) >= 2:
            module, attr = self.stack[-2], self.stack[-1]
            if isinstance(module, str) and isinstance(attr, str):
                self._record(f"{module}.{attr}")
        elif name in _STRING_OPS:
            self.stack = [*self.stack[-7:], arg]
            if arg in ("_parameters", "_modules"):
                self.strings.add(str(arg))
        elif name == "MEMOIZE" and self.stack:
            self.memo[len(self.memo)] = self.stack[-1]
        elif name in ("BINPUT", "LONG_BINPUT", "PUT") and self.stack and isinstance(arg, int):
            self.memo[arg] = self.stack[-1]
        elif name in ("BINGET", "LONG_BINGET", "GET") and isinstance(arg, int):
            self.stack = [*self.stack[-7:], self.memo.get(arg)]


class _Bounded:
    """A reader that refuses reads past the end, so a forged length cannot make
    ``pickletools`` allocate gigabytes before noticing the data is not there."""

    def __init__(self, handle: IO[bytes], size: int) -> None:
        self.handle = handle
        self.remaining = size

    def read(self, n: int = -1) -> bytes:
        if n < 0 or n > self.remaining:
            raise ValueError("pickle data ends early")
        data = self.handle.read(n)
        self.remaining -= len(data)
        return data

    def readline(self) -> bytes:
        line = self.handle.readline(self.remaining)
        self.remaining -= len(line)
        return line


def _ops(handle: _Bounded) -> Iterator[tuple[str, object]]:
    for op, arg, _pos in pickletools.genops(handle):  # type: ignore[arg-type]  # a duck-typed reader
        yield op.name, arg


def _walk_legacy(handle: _Bounded, walker: _Walker) -> None:
    """The non-zip layouts: a raw pickle, or torch's five consecutive pickles."""
    first: object = None
    for name, arg in _ops(handle):
        walker.step(name, arg)
        if first is None and name.startswith(("LONG", "BININT", "INT")):
            first = arg
    for _ in range(_LEGACY_PICKLES - 1 if first == _LEGACY_MAGIC else 0):
        for name, arg in _ops(handle):
            walker.step(name, arg)


def _walk_zip(path: str | os.PathLike[str], walker: _Walker) -> None:
    with zipfile.ZipFile(path) as archive:
        names = [n for n in archive.namelist() if n.endswith("data.pkl")]
        if not names:
            raise ValueError("no data.pkl")
        with archive.open(names[0]) as member:
            for name, arg in _ops(_Bounded(member, archive.getinfo(names[0]).file_size)):
                walker.step(name, arg)


def scan_globals(path: str | os.PathLike[str], *, is_zip: bool) -> Scan:
    """Disassemble the pickles of a ``torch.save`` file; nothing is imported or run."""
    walker = _Walker()
    try:
        if is_zip:
            _walk_zip(path, walker)
        else:
            with open(path, "rb") as handle:
                _walk_legacy(_Bounded(handle, os.fstat(handle.fileno()).st_size), walker)
        complete = True
    except (ValueError, EOFError, UnicodeDecodeError, OverflowError, zipfile.BadZipFile, OSError, KeyError):
        complete = False
    allowed = _allowed()
    found = [g for g in walker.found if g not in allowed]
    return Scan(found, complete, {"_parameters", "_modules"} <= walker.strings)
