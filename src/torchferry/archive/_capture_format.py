"""What the pack side (capture) and the load side (runtime) of ``mode="python"`` must agree on.

Both sides live in different layers and may run different releases, so the member layout,
the version of the module-tree description and the glob semantics are spelled out once here.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence

PROGRAM_FORMAT = 1
"""Version of ``manifest["program"]`` and ``program/model.json`` for ``kind="python"``."""

ENTRY_MEMBER = "program/model.json"
CODE_ROOT = "program/code/"
MANGLE_PREFIX = "_torchferry_code_"
"""Loaded copies of interned modules live under ``_torchferry_code_<n>.<name>`` in sys.modules."""

_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")


def is_dotted_name(name: str) -> bool:
    """A module name made only of identifiers: archive data may use it to build member paths."""
    return bool(name) and all(_IDENTIFIER.match(part) for part in name.split("."))


def code_member(name: str, *, package: bool) -> str:
    """Archive member holding the source of module ``name``."""
    path = name.replace(".", "/")
    return f"{CODE_ROOT}{path}/__init__.py" if package else f"{CODE_ROOT}{path}.py"


def _segment_matches(pattern: str, segment: str) -> bool:
    regex = ".*".join(re.escape(piece) for piece in pattern.split("*"))
    return re.fullmatch(regex, segment) is not None


def _glob_matches(pattern: Sequence[str], name: Sequence[str]) -> bool:
    if not pattern:
        return not name
    head, rest = pattern[0], pattern[1:]
    if head == "**":
        return any(_glob_matches(rest, name[i:]) for i in range(len(name) + 1))
    return bool(name) and _segment_matches(head, name[0]) and _glob_matches(rest, name[1:])


def glob_matches(pattern: str, name: str) -> bool:
    """Bazel-style match of a dotted module name, as torch.package does it.

    ``*`` matches within one segment (``models.*`` matches ``models.net``, not ``models``);
    ``**`` matches any number of whole segments, zero included (``models.**`` matches
    ``models`` and everything below it).
    """
    return _glob_matches(pattern.split("."), name.split("."))


def matches_any(patterns: Iterable[str], name: str) -> bool:
    return any(glob_matches(pattern, name) for pattern in patterns)


def parents(name: str) -> list[str]:
    """``a.b.c`` -> ``["a", "a.b", "a.b.c"]``: importing a module imports every package above it."""
    parts = name.split(".")
    return [".".join(parts[: i + 1]) for i in range(len(parts))]
