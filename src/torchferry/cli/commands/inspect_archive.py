"""``torchferry inspect`` for ``.ferry`` archives: a readable summary of the manifest."""

from __future__ import annotations

import json
from typing import Any

from rich.table import Table

from torchferry.archive.manifest import Manifest
from torchferry.cli._render import console, human_bytes

__all__ = ["print_archive"]


def _signature_table(manifest: Manifest) -> Table:
    table = Table(title="signature", title_justify="left")
    for column in ("", "name", "dtype", "shape"):
        table.add_column(column)
    for role, specs in (("input", manifest.signature.inputs), ("output", manifest.signature.outputs)):
        for spec in specs:
            table.add_row(
                role, spec.name, spec.dtype, "[" + ", ".join("?" if d < 0 else str(d) for d in spec.shape) + "]"
            )
    return table


def _members_table(manifest: Manifest) -> Table:
    table = Table(title="members", title_justify="left")
    table.add_column("member")
    table.add_column("size", justify="right")
    table.add_column("sha256")
    for name, digest in sorted(manifest.members.items()):
        table.add_row(name, human_bytes(digest.size), digest.sha256[:16] + "…")
    return table


def _facts(manifest: Manifest, file_bytes: int) -> Table:
    facts = Table(show_header=False, box=None, padding=(0, 2))
    program = manifest.program
    kind = (
        "export (torch.export graph; runs no Python code)"
        if manifest.kind == "export"
        else ("python (captured source; opening needs trust_code=True)")
    )
    rows: list[tuple[str, Any]] = [
        ("name", f"{manifest.name}" + (f"  version {manifest.version}" if manifest.version else "")),
        ("program", kind),
        ("created", f"{manifest.created} by torchferry {manifest.torchferry}"),
        ("file size", human_bytes(file_bytes)),
        ("requirements", ", ".join(f"{k}=={v}" for k, v in manifest.requirements.items())),
        ("batching", "dynamic batch (dim 0)" if manifest.batching.get("dynamic_batch") else "fixed batch size"),
    ]
    if program.get("fallback_reason"):
        rows.append(("export failed", program["fallback_reason"]))
    if program.get("interned"):
        rows.append(("interned", ", ".join(program["interned"])))
    if manifest.labels:
        shown = ", ".join(manifest.labels[:10]) + (
            f", … ({len(manifest.labels)} in all)" if len(manifest.labels) > 10 else ""
        )
        rows.append(("labels", shown))
    for label, steps in (("preprocess", manifest.preprocess), ("postprocess", manifest.postprocess)):
        for step in steps:
            rows.append((label, json.dumps(step)))
    if manifest.description:
        rows.append(("description", manifest.description))
    for key, value in manifest.metadata.items():
        rows.append((f"metadata.{key}", value if isinstance(value, str) else json.dumps(value, default=str)))
    for key, value in rows:
        facts.add_row(key, str(value))
    return facts


def print_archive(manifest: Manifest, file_bytes: int, *, as_json: bool) -> None:
    if as_json:
        console.print_json(json.dumps(manifest.to_dict()))
        return
    console.print(_facts(manifest, file_bytes))
    console.print(_signature_table(manifest))
    console.print(_members_table(manifest))
