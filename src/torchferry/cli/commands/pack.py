"""``torchferry pack``: build a model from its factory and pack it into a ``.ferry`` archive."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from torchferry.cli._model_spec import build_model, examples_argument, read_labels
from torchferry.cli._render import byte_progress, console, human_bytes
from torchferry.errors import UsageError
from torchferry.runtime.pack import MODES, pack
from torchferry.state.load_into import load_into

EPILOG = """Examples:

  torchferry pack model:Net --weights net.safetensors --example 'x=float32[1,4]' -o net.ferry

  torchferry pack models.dcgan:build_generator --example 'z=float32[8,64]' --mode python -o gen.ferry

  torchferry pack models.resnet:resnet18 --weights r18.pth --example 'x=float32[1,3,224,224]' \\
      --labels imagenet.txt --name resnet --version 3 -o resnet.ferry
"""

_Patterns = Annotated[list[str], typer.Option(help="Glob on module names (repeatable), e.g. 'models.**'.")]


def pack_command(
    factory: Annotated[str, typer.Argument(help="MODULE:FACTORY, a class or function returning the nn.Module.")],
    output: Annotated[Path, typer.Option("--output", "-o", help="Where to write the .ferry archive.")],
    example: Annotated[
        list[str],
        typer.Option(
            "--example",
            "-e",
            help="An input as NAME=DTYPE[SHAPE] (repeat per input), e.g. 'x=float32[1,4]'. Dim 0 is the batch.",
        ),
    ],
    weights: Annotated[
        Path | None,
        typer.Option(help="State to load first: safetensors, torchferry or .pt/.pth (read with weights_only)."),
    ] = None,
    mode: Annotated[str, typer.Option(help="auto (export, else python), export or python.")] = "auto",
    intern: _Patterns = [],  # noqa: B006 - typer reads defaults, never mutates them
    extern: _Patterns = [],  # noqa: B006
    mock: _Patterns = [],  # noqa: B006
    labels: Annotated[Path | None, typer.Option(help="Class names: one per line, or a JSON list.")] = None,
    name: Annotated[str | None, typer.Option(help="Model name (default: the class name).")] = None,
    version: Annotated[str | None, typer.Option(help="Model version recorded in the manifest.")] = None,
    init_args: Annotated[str | None, typer.Option(help="JSON kwargs (object) or args (list) for FACTORY.")] = None,
    force: Annotated[bool, typer.Option("--force", "-f", help="Overwrite OUTPUT if it exists.")] = False,
) -> None:
    """Pack a model into one self-contained archive that opens without its source code.

    The program is a torch.export graph when the model exports and matches eager
    forward on the examples (no code runs when it is opened), otherwise the model's
    own source captured with its requirements (opening it needs --trust-code).
    """
    if mode not in MODES:
        raise UsageError(f"--mode must be one of {', '.join(MODES)}, not {mode!r}.")
    if output.exists() and not force:
        raise UsageError(f"{output} exists. Pass --force to overwrite it, or choose another --output.")
    model = build_model(factory, init_args)
    if weights is not None:
        report = load_into(model, weights, strict=True)
        console.print(f"loaded {report.summary()}")
    total = sum(t.numel() * t.element_size() for t in model.state_dict().values())
    with byte_progress(f"writing {output.name}", total) as progress:
        manifest = pack(
            model,
            output,
            example_inputs=examples_argument(example),
            name=name,
            version=version,
            labels=read_labels(labels),
            mode=mode,
            intern=intern,
            extern=extern,
            mock=mock,
            progress=progress,
        )
    reason = manifest.program.get("fallback_reason")
    console.print(
        f"[green]✓[/] wrote {output} ({human_bytes(output.stat().st_size)}): {manifest.name}, {manifest.kind} program"
    )
    if reason:
        console.print(f"  export was not possible, so the source was captured: {reason}")
    for spec in manifest.signature.inputs:
        console.print(f"  input  {spec.describe()}")
    for spec in manifest.signature.outputs:
        console.print(f"  output {spec.describe()}")
