"""``LoadReport``: what ``load_into`` did with every key, readable by people and code."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from torchferry._util.table import render_table

_ROWS_PER_KIND = 40
"""Rows shown per kind in the printed table; the attributes always hold every key."""


def describe_tensor(tensor: torch.Tensor) -> str:
    """``float32[3, 4]``: dtype and shape in one short token."""
    return f"{str(tensor.dtype).removeprefix('torch.')}[{', '.join(map(str, tensor.shape))}]"


@dataclass(frozen=True)
class ShapeMismatch:
    """A key present on both sides whose shapes differ; it is never loaded."""

    key: str
    source: str
    model: str


@dataclass(frozen=True)
class DtypeCast:
    """A key loaded with a dtype conversion (e.g. float16 file into a float32 model)."""

    key: str
    source: str
    model: str


@dataclass(frozen=True)
class LoadReport:
    """The outcome of ``load_into``: every key that was loaded, skipped or converted.

    ``ok`` is true when nothing was missing, unexpected or mismatched. ``hint`` names the
    ``rename`` to pass when keys failed to match only because of a wrapper prefix.
    """

    source: str
    loaded: tuple[str, ...] = ()
    missing: tuple[str, ...] = ()
    unexpected: tuple[str, ...] = ()
    mismatched: tuple[ShapeMismatch, ...] = ()
    casts: tuple[DtypeCast, ...] = ()
    renamed: int = 0
    hint: str | None = None
    model_keys: int = 0
    shapes: dict[str, str] = field(default_factory=dict, repr=False, compare=False)
    """``float32[3, 4]`` for each missing (model side) and unexpected (source side) key."""

    @property
    def ok(self) -> bool:
        return not (self.missing or self.unexpected or self.mismatched)

    def summary(self) -> str:
        parts = [f"matched {len(self.loaded)} of {self.model_keys} model keys from {self.source}"]
        for label, items in (
            ("missing", self.missing),
            ("unexpected", self.unexpected),
            ("shape mismatches", self.mismatched),
            ("dtype casts", self.casts),
        ):
            if items:
                parts.append(f"{len(items)} {label}")
        if self.renamed:
            parts.append(f"{self.renamed} keys renamed")
        return ", ".join(parts)

    def table(self) -> str:
        rows: list[tuple[str, str, str, str]] = []
        groups: list[tuple[str, list[tuple[str, str, str]]]] = [
            ("missing", [(k, "-", self.shapes.get(k, "?")) for k in self.missing]),
            ("unexpected", [(k, self.shapes.get(k, "?"), "-") for k in self.unexpected]),
            ("shape", [(m.key, m.source, m.model) for m in self.mismatched]),
            ("cast", [(c.key, c.source, c.model) for c in self.casts]),
        ]
        for status, entries in groups:
            for key, source, model in entries[:_ROWS_PER_KIND]:
                rows.append((status, key, source, model))
            if len(entries) > _ROWS_PER_KIND:
                rows.append((status, f"... and {len(entries) - _ROWS_PER_KIND} more", "", ""))
        return render_table(("status", "key", "source", "model"), rows) if rows else ""

    def __str__(self) -> str:
        lines = [self.summary()]
        table = self.table()
        if table:
            lines.append(table)
        if self.hint:
            lines.append(f"hint: {self.hint}")
        return "\n".join(lines)
