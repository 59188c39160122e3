"""Registry references: ``iris`` (latest), ``iris:3`` (a version), ``iris@production`` (an alias)."""

from __future__ import annotations

import re
from dataclasses import dataclass

from torchferry.errors import UsageError

_NAME = r"[A-Za-z0-9][A-Za-z0-9_.\-]{0,127}"
_REF = re.compile(rf"(?P<name>{_NAME})(?::(?P<version>[0-9]{{1,9}})|@(?P<alias>{_NAME}))?")
SYNTAX = "NAME (latest version), NAME:VERSION (e.g. iris:3) or NAME@ALIAS (e.g. iris@production)"

__all__ = ["SYNTAX", "Ref", "check_name", "parse_ref"]


@dataclass(frozen=True)
class Ref:
    """A parsed reference; at most one of ``version`` and ``alias`` is set."""

    name: str
    version: int | None = None
    alias: str | None = None

    def __str__(self) -> str:
        if self.version is not None:
            return f"{self.name}:{self.version}"
        return f"{self.name}@{self.alias}" if self.alias else self.name


def parse_ref(text: str) -> Ref:
    """Parse ``text``; raises ``UsageError`` that shows the syntax."""
    match = _REF.fullmatch(text.strip()) if isinstance(text, str) else None
    if match is None:
        raise UsageError(f"{text!r} is not a registry reference; write {SYNTAX}.")
    version = match["version"]
    if version is not None and int(version) < 1:
        raise UsageError(f"{text!r}: versions start at 1.")
    return Ref(match["name"], None if version is None else int(version), match["alias"])


def check_name(kind: str, value: str) -> str:
    """``value`` if it is a valid model name or alias (letters, digits, ``_.-``; up to 128)."""
    if not isinstance(value, str) or not re.fullmatch(_NAME, value) or (value.isdigit() and kind == "alias"):
        raise UsageError(
            f"{kind} {value!r} is not valid: use letters, digits, '_', '.' and '-', starting with a letter or "
            "digit, at most 128 characters" + (" (and not only digits)" if kind == "alias" else "") + "."
        )
    return value
