"""Atomic file replacement: readers see the old file or the new one, never half of one.

We write into a temporary file beside the target (same directory, so ``os.replace`` is
a rename within one filesystem), flush and fsync it, then rename it over the target and
fsync the directory. A writer killed mid-write leaves the previous target intact; its
temporary file carries the writer's PID in its name, so the next writer of the same
target removes it once that PID is gone.
"""

from __future__ import annotations

import contextlib
import io
import os
import secrets
from collections.abc import Callable, Iterator
from pathlib import Path

_TMP_SUFFIX = ".tmp"


def _tmp_prefix(target: Path) -> str:
    return f".{target.name}."


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _writer_pid(name: str, prefix: str) -> int | None:
    """The PID in a temporary's name ``.<target>.<pid>.<random>.tmp``, if ``name`` is one."""
    if not (name.startswith(prefix) and name.endswith(_TMP_SUFFIX)):
        return None
    pid_text = name[len(prefix) :].split(".", 1)[0]
    return int(pid_text) if pid_text.isdigit() else None


def remove_stale_temporaries(target: Path) -> list[Path]:
    """Delete temporaries of ``target`` left by writers that no longer run."""
    return _remove_dead(target.parent, lambda name: _writer_pid(name, _tmp_prefix(target)))


def remove_dead_writers_temporaries(directory: Path) -> list[Path]:
    """Delete every temporary in ``directory`` whose writer no longer runs (any target)."""

    def pid_of(name: str) -> int | None:
        parts = name.split(".")
        return int(parts[-3]) if len(parts) >= 5 and name.startswith(".") and parts[-3].isdigit() else None

    return _remove_dead(directory, lambda name: pid_of(name) if name.endswith(_TMP_SUFFIX) else None)


def _remove_dead(directory: Path, pid_of: Callable[[str], int | None]) -> list[Path]:
    removed = []
    with contextlib.suppress(OSError):
        for entry in directory.iterdir():
            pid = pid_of(entry.name)
            if pid is not None and not _pid_alive(pid):
                with contextlib.suppress(OSError):
                    entry.unlink()
                    removed.append(entry)
    return removed


def _fsync_directory(directory: Path) -> None:
    with contextlib.suppress(OSError):  # not every platform/filesystem allows it
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike[str], *, fsync: bool = True) -> Iterator[io.FileIO]:
    """Yield an unbuffered binary file; on clean exit it atomically becomes ``path``.

    ``fsync=False`` skips the flush to disk: the rename is still atomic against a killed
    process, but not against a power cut.
    """
    target = Path(path)
    remove_stale_temporaries(target)
    tmp = target.parent / f"{_tmp_prefix(target)}{os.getpid()}.{secrets.token_hex(4)}{_TMP_SUFFIX}"
    handle = io.FileIO(tmp, "xb")
    try:
        yield handle
        if fsync:
            os.fsync(handle.fileno())
        handle.close()
        os.replace(tmp, target)
    except BaseException:
        handle.close()
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    if fsync:
        _fsync_directory(target.parent)
