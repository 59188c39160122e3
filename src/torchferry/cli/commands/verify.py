"""``torchferry verify``: sha256 of every member, then the stored examples re-run."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from torchferry.archive.reader import ArchiveReader
from torchferry.cli._render import byte_progress, console, err_console
from torchferry.cli.commands.registry import HOME_VARIABLE, Stored, file_or_reference
from torchferry.runtime.verify import verify

EPILOG = """Examples:

  torchferry verify model.ferry

  torchferry verify captured.ferry --trust-code     # archives with Python code re-run only when trusted

  torchferry verify iris@production                 # a registry reference (see torchferry registry)
"""


def verify_command(
    archive: Annotated[
        str,
        typer.Argument(
            help="A .ferry archive, or a registry reference (iris, iris:3, iris@production).", show_default=False
        ),
    ],
    trust_code: Annotated[
        bool,
        typer.Option(
            "--trust-code",
            help="Run the examples of an archive that carries Python code (only for archives you trust).",
        ),
    ] = False,
    registry: Annotated[
        Path | None,
        typer.Option(
            help=f"The registry a reference is looked up in (default: ${HOME_VARIABLE}, else the user data directory).",
            show_default=False,
        ),
    ] = None,
) -> None:
    """Check an archive completely: every member's sha256 against the manifest, then
    the examples stored at pack time re-run and compared (max abs/rel error per output).

    Exits with 0 when everything checks out and 1 otherwise. An argument that is not an
    existing file is looked up in the registry (whose blobs are hashed in place).
    """
    source = file_or_reference(archive, registry)
    target: Path | ArchiveReader
    if isinstance(source, Stored):
        size, name, target = source.entry.size, source.entry.ref, source.reader
    else:
        size, name, target = (source.stat().st_size if source.is_file() else 0), source.name, source
    with byte_progress(f"hashing {name}", size) as progress:
        report = verify(target, trust_code=trust_code, progress=progress)
    (console if report.ok else err_console).print(str(report), highlight=False, markup=False)
    if not report.ok:
        raise typer.Exit(1)
