"""``torchferry convert``: turn a legacy .pt/.pth into a safe safetensors file."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import torch
import typer

from torchferry._util.table import human_bytes
from torchferry.cli._model_spec import build_model, examples_argument
from torchferry.cli._render import byte_progress, console
from torchferry.errors import UsageError
from torchferry.runtime.pack import pack
from torchferry.state._legacy import load_legacy
from torchferry.state.convert import convert_legacy
from torchferry.state.load_into import load_into

EPILOG = """Examples:

  torchferry convert model.pth -o model.safetensors

  torchferry convert checkpoint.tar -o checkpoint.safetensors   # then torchferry.resume(...)

  torchferry convert whole_model.pt --trust-pickle -o model.safetensors

  torchferry convert lenet.pth --class lenet:TheModelClass --example 'x=float32[1,3,32,32]' -o lenet.ferry

  torchferry convert whole_model.pt --trust-pickle --example 'x=float32[1,4]' -o model.ferry
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
    model_class: Annotated[
        str | None,
        typer.Option("--class", help="For a .ferry OUTPUT: MODULE:CLASS that the state_dict in SOURCE belongs to."),
    ] = None,
    init_args: Annotated[str | None, typer.Option(help="JSON kwargs (object) or args (list) for --class.")] = None,
    example: Annotated[
        list[str],
        typer.Option(
            "--example",
            "-e",
            help="For a .ferry OUTPUT: an input as NAME=DTYPE[SHAPE], e.g. 'x=float32[1,4]' (repeat per input).",
        ),
    ] = [],  # noqa: B006
    mode: Annotated[str, typer.Option(help="For a .ferry OUTPUT: auto, export or python.")] = "auto",
) -> None:
    """Convert a legacy torch.save file into a safe safetensors file, or into a
    self-contained .ferry archive when OUTPUT ends in .ferry.

    State_dicts become plain safetensors (readable by any safetensors reader);
    checkpoint dicts (model_state_dict, optimizer_state_dict, epoch, ...) become
    torchferry checkpoints that torchferry.resume reads. For an archive, give the
    model's class with --class (its state_dict is loaded from SOURCE) or, for a whole
    pickled model, --trust-pickle; plus --example. The source is read with
    weights_only: no code runs unless --trust-pickle is given.
    """
    if output.exists() and not force:
        raise UsageError(f"{output} exists. Pass --force to overwrite it, or choose another --output.")
    if output.suffix == ".ferry":
        _convert_to_archive(source, output, model_class, init_args, example, mode, trust_pickle=trust_pickle)
        return
    size = source.stat().st_size if source.is_file() else 0  # a missing source is reported by convert_legacy
    with byte_progress(f"writing {output.name}", size) as progress:
        result = convert_legacy(source, output, trust_pickle=trust_pickle, progress=progress)
    console.print(
        f"[green]✓[/] wrote {result.target}: {result.kind} with {result.tensors} tensors "
        f"({human_bytes(result.nbytes)}) from {result.source}"
    )


def _convert_to_archive(
    source: Path,
    output: Path,
    model_class: str | None,
    init_args: str | None,
    example: list[str],
    mode: str,
    *,
    trust_pickle: bool,
) -> None:
    examples = examples_argument(example)
    if model_class is not None:
        model = build_model(model_class, init_args)
        report = load_into(model, source, strict=True)
        console.print(f"loaded {report.summary()}")
    else:
        loaded = load_legacy(str(source), "cpu", trust_pickle=trust_pickle)
        if not isinstance(loaded, torch.nn.Module):
            raise UsageError(
                f"{source} holds a {type(loaded).__name__}, not a whole model; pass --class "
                "MODULE:CLASS so its weights can be loaded into the model."
            )
        model = loaded
    manifest = pack(model, output, example_inputs=examples, mode=mode, name=output.stem)
    console.print(
        f"[green]✓[/] wrote {output} ({human_bytes(output.stat().st_size)}): {manifest.name}, {manifest.kind} program"
    )
