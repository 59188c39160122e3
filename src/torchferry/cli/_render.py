"""Shared rich rendering for the CLI: consoles, byte sizes, progress bars, errors."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from rich.console import Console
from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn, TransferSpeedColumn

from torchferry._util.table import human_bytes
from torchferry.state._safetensors_io import ProgressFn

console = Console()
err_console = Console(stderr=True)

PROGRESS_MIN_BYTES = 64 * 1024 * 1024
"""Below this, work finishes too fast for a progress bar to help."""

__all__ = ["console", "err_console", "human_bytes", "byte_progress"]


@contextlib.contextmanager
def byte_progress(description: str, total: int) -> Iterator[ProgressFn | None]:
    """Yield a bytes-done callback drawing a progress bar, or None for small or piped jobs."""
    if total < PROGRESS_MIN_BYTES or not err_console.is_terminal:
        yield None
        return
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        DownloadColumn(binary_units=True),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=err_console, transient=True) as progress:
        task = progress.add_task(description, total=total)
        yield lambda n: progress.advance(task, n)
