"""``torchferry convert``: turn a legacy .pt/.pth into a safe safetensors file."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from torchferry._util.table import human_bytes
from torchferry.cli._render import byte_progress, console
from torchferry.errors import UsageError
from torchferry.state.convert import convert_legacy

EPILOG = """Examples:

  torchferry convert model.pth -o model.safetensors

  torchferry convert checkpoint.tar -o checkpoint.safetensors   # then torchferry.resume(...)

  torchferry convert whole_model.pt --trust-pickle -o model.safetensors
"""


def convert_command(
    source: Annotated[Path, typer.Argument(help="A file written by torch.save (.pt, .pth, .tar, .bin).")],
    output: Annotated[Path, typer.Option("--output", "-o", help="Where to write the safetensors file.")],
    trust_pickle: Annotated[
        bool,
        typer.Option(
            "--trust-pickle",
            help="Allow pickled Python objects (e.g. a whole torch.save(model)). This RUNS code from the "
            "file: use it only for files you made yourself.",
        ),
    ] = False,
    force: Annotated[bool, typer.Option("--force", "-f", help="Overwrite OUTPUT if it exists.")] = False,
) -> None:
    """Convert a legacy torch.save file into a safe safetensors file.

    State_dicts become plain safetensors (readable by any safetensors reader);
    checkpoint dicts (model_state_dict, optimizer_state_dict, epoch, ...) become
    torchferry checkpoints that torchferry.resume reads. The source is read with
    weights_only: no code runs unless --trust-pickle is given.
    """
    if output.exists() and not force:
        raise UsageError(f"{output} exists. Pass --force to overwrite it, or choose another --output.")
    size = source.stat().st_size if source.is_file() else 0  # a missing source is reported by convert_legacy
    with byte_progress(f"writing {output.name}", size) as progress:
        result = convert_legacy(source, output, trust_pickle=trust_pickle, progress=progress)
    console.print(
        f"[green]✓[/] wrote {result.target}: {result.kind} with {result.tensors} tensors "
        f"({human_bytes(result.nbytes)}) from {result.source}"
    )
