"""The ``torchferry`` command line (typer + rich live only in this package)."""
