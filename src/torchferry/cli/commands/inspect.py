"""``torchferry inspect``: what a state file holds, without loading or running it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from torchferry.archive.reader import inspect as inspect_archive
from torchferry.archive.reader import is_archive
from torchferry.cli._render import console, human_bytes
from torchferry.cli.commands.inspect_archive import print_archive
from torchferry.cli.commands.registry import HOME_VARIABLE, Stored, file_or_reference
from torchferry.state.summary import StateSummary, describe

EPILOG = """Examples:

  torchferry inspect model.ferry

  torchferry inspect model.ferry --json | jq .signature

  torchferry inspect iris@production          # a registry reference (see torchferry registry)

  torchferry inspect model.safetensors

  torchferry inspect old_checkpoint.pth --all

  torchferry inspect ckpt.safetensors --json | jq .info.epoch
"""


def _as_json(summary: StateSummary) -> dict[str, Any]:
    return {
        "path": summary.path,
        "format": summary.format,
        "file_bytes": summary.file_bytes,
        "data_bytes": summary.data_bytes,
        "numel": summary.numel,
        "tensors": [
            {"name": t.name, "dtype": t.dtype, "shape": list(t.shape), "nbytes": t.nbytes} for t in summary.tensors
        ],
        "info": summary.info,
    }


def _tensor_table(summary: StateSummary, limit: int | None) -> Table:
    table = Table(title=f"{summary.path}  ({summary.format})", title_justify="left")
    table.add_column("name", overflow="fold")
    table.add_column("dtype")
    table.add_column("shape")
    table.add_column("size", justify="right")
    shown = summary.tensors if limit is None else summary.tensors[:limit]
    for info in shown:
        table.add_row(info.name, info.dtype, str(list(info.shape)), human_bytes(info.nbytes))
    if len(shown) < len(summary.tensors):
        table.add_row(f"... {len(summary.tensors) - len(shown)} more (--all shows them)", "", "", "")
    table.add_section()
    table.add_row(
        f"{len(summary.tensors)} tensors, {summary.numel:,} elements", "", "", human_bytes(summary.data_bytes)
    )
    return table


def inspect_command(
    file: Annotated[
        str,
        typer.Argument(
            help="A .ferry archive, a torchferry, safetensors or torch.save file, or a registry reference "
            "(iris, iris:3, iris@production).",
            show_default=False,
        ),
    ],
    as_json: Annotated[bool, typer.Option("--json", help="Print machine-readable JSON.")] = False,
    show_all: Annotated[bool, typer.Option("--all", help="List every tensor (default: the first 50).")] = False,
    registry: Annotated[
        Path | None,
        typer.Option(
            help=f"The registry a reference is looked up in (default: ${HOME_VARIABLE}, else the user data directory).",
            show_default=False,
        ),
    ] = None,
) -> None:
    """Show what a file holds without running it. For a .ferry archive: name, program
    kind, signature, requirements, labels, processing, metadata and members (--json
    prints the manifest itself). For a state file: the tensors (name, dtype, shape,
    size, totals) and, for checkpoints, the epoch, step, models, optimizers and extras.

    Nothing is executed: legacy files are read with weights_only, and for safetensors
    files only the header is read. An argument that is not an existing file is looked
    up in the registry.
    """
    source = file_or_reference(file, registry)
    if isinstance(source, Stored):
        if not as_json:
            aliases = "".join(f", {source.entry.name}@{a}" for a in source.entry.aliases)
            console.print(
                f"{source.entry.ref}{aliases} in the registry at {source.root}", highlight=False, soft_wrap=True
            )
        print_archive(source.reader.manifest, source.entry.size, as_json=as_json)
        return
    if is_archive(source) or source.suffix == ".ferry":
        print_archive(inspect_archive(source), source.stat().st_size, as_json=as_json)
        return
    summary = describe(source)
    if as_json:
        console.print_json(json.dumps(_as_json(summary), default=str))
        return
    console.print(_tensor_table(summary, None if show_all else 50))
    if summary.info:
        info = Table(show_header=False, box=None, padding=(0, 2))
        for key, value in summary.info.items():
            info.add_row(str(key), json.dumps(value, default=str) if not isinstance(value, str) else value)
        console.print(info)
    console.print(f"file size {human_bytes(summary.file_bytes)}")
