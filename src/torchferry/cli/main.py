"""The ``torchferry`` entry point: builds the typer app and turns our errors into
one readable line (no traceback) and a non-zero exit code."""

from __future__ import annotations

import sys
from typing import Annotated

import typer
from rich.markup import escape

from torchferry._version import __version__
from torchferry.cli._render import err_console
from torchferry.cli.commands import bench, convert, inspect, pack, predict, registry, serve, verify
from torchferry.errors import FerryError

EXIT_ERROR = 1

app = typer.Typer(
    name="torchferry",
    help="Move trained PyTorch models safely: pack self-contained archives, verify and inspect them, "
    "convert legacy files, keep named versions in a registry.\n\n"
    "Run `torchferry COMMAND --help` for examples.",
    no_args_is_help=True,
    add_completion=False,
    rich_markup_mode=None,
    pretty_exceptions_enable=False,
)


def _print_version(value: bool) -> None:
    if value:
        print(f"torchferry {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool,
        typer.Option("--version", help="Print the version and exit.", callback=_print_version, is_eager=True),
    ] = False,
) -> None:
    """Move trained PyTorch models safely."""


app.command("pack", epilog=pack.EPILOG)(pack.pack_command)
app.command("inspect", epilog=inspect.EPILOG)(inspect.inspect_command)
app.command("verify", epilog=verify.EPILOG)(verify.verify_command)
app.command("convert", epilog=convert.EPILOG)(convert.convert_command)
app.add_typer(registry.app, name="registry")
app.command("serve", epilog=serve.EPILOG)(serve.serve_command)
app.command("predict", epilog=predict.EPILOG)(predict.predict_command)
app.command("bench", epilog=bench.EPILOG)(bench.bench_command)


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; our errors print as ``error: ...`` and exit with status 1."""
    try:
        code = app(args=argv, standalone_mode=False)  # click returns typer.Exit's code here
    except FerryError as exc:
        err_console.print(f"[bold red]error:[/] {escape(str(exc))}", highlight=False, markup=True, soft_wrap=True)
        return EXIT_ERROR
    except typer.Exit as exc:
        return int(exc.exit_code or 0)
    except typer.Abort:
        return EXIT_ERROR
    except typer.TyperException as exc:  # usage errors: bad option, missing argument
        show = getattr(exc, "show", None)
        if callable(show):
            show()
        return int(getattr(exc, "exit_code", 2))
    return code if isinstance(code, int) else 0


if __name__ == "__main__":
    sys.exit(main())
