"""``torchferry verify``: sha256 of every member, then the stored examples re-run."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from torchferry.cli._render import byte_progress, console, err_console
from torchferry.runtime.verify import verify

EPILOG = """Examples:

  torchferry verify model.ferry

  torchferry verify captured.ferry --trust-code     # archives with Python code re-run only when trusted
"""


def verify_command(
    archive: Annotated[Path, typer.Argument(help="A .ferry archive.")],
    trust_code: Annotated[
        bool,
        typer.Option(
            "--trust-code",
            help="Run the examples of an archive that carries Python code (only for archives you trust).",
        ),
    ] = False,
) -> None:
    """Check an archive completely: every member's sha256 against the manifest, then
    the examples stored at pack time re-run and compared (max abs/rel error per output).

    Exits with 0 when everything checks out and 1 otherwise.
    """
    size = archive.stat().st_size if archive.is_file() else 0
    with byte_progress(f"hashing {archive.name}", size) as progress:
        report = verify(archive, trust_code=trust_code, progress=progress)
    (console if report.ok else err_console).print(str(report), highlight=False, markup=False)
    if not report.ok:
        raise typer.Exit(1)
