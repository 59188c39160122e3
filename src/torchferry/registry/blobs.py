"""Content-addressed blob files: ``blobs/<sha256[:2]>/<sha256>``, written once, atomically.

A blob is written to a temporary file, checked against the sha256 it is filed under, and
renamed into place, so a blob path either does not exist or holds exactly those bytes.
Archives share every identical member (typically the weights) through this store.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Iterator
from pathlib import Path

from torchferry._util.atomic import atomic_write, remove_dead_writers_temporaries
from torchferry.errors import IntegrityError

_CHUNK = 8 * 1024 * 1024

__all__ = ["BlobStore"]


class BlobStore:
    """The blob directory of a registry."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def path(self, sha256: str) -> Path:
        return self.root / sha256[:2] / sha256

    def has(self, sha256: str, size: int) -> bool:
        try:
            return self.path(sha256).stat().st_size == size
        except OSError:
            return False

    def put(
        self,
        sha256: str,
        source: str,
        offset: int,
        size: int,
        *,
        progress: Callable[[int], None] | None = None,
    ) -> bool:
        """Copy ``size`` bytes at ``offset`` of ``source`` into the blob ``sha256``; False if already stored.

        Raises ``IntegrityError`` (storing nothing) when the bytes do not hash to ``sha256``.
        """
        if self.has(sha256, size):
            try:  # refresh its age: gc spares young unreferenced blobs, and this one is about to be referenced
                os.utime(self.path(sha256))
                if progress is not None:
                    progress(size)
                return False
            except OSError:
                pass  # not ours to touch, or gc just took it: write it again below
        target = self.path(sha256)
        target.parent.mkdir(parents=True, exist_ok=True)
        hasher = hashlib.sha256()
        with open(source, "rb") as reader, atomic_write(target) as writer:
            reader.seek(offset)
            left = size
            while left:
                chunk = reader.read(min(_CHUNK, left))
                if not chunk:
                    break
                hasher.update(chunk)
                writer.write(chunk)
                left -= len(chunk)
                if progress is not None:
                    progress(len(chunk))
            if left or hasher.hexdigest() != sha256:
                raise IntegrityError(
                    f"{source}: a member changed while it was being added (its sha256 no longer matches); "
                    "the registry is unchanged. Add the archive again.",
                    path=source,
                    member=sha256,
                )
        return True

    def all(self) -> Iterator[tuple[str, Path]]:
        """Every stored blob as ``(sha256, path)``."""
        if not self.root.is_dir():
            return
        for folder in sorted(self.root.iterdir()):
            if folder.is_dir():
                for entry in sorted(folder.iterdir()):
                    if not entry.name.startswith("."):
                        yield entry.name, entry

    def remove_temporaries(self) -> list[Path]:
        """Delete temporaries left by writers that died mid-blob."""
        if not self.root.is_dir():
            return []
        return [p for folder in self.root.iterdir() if folder.is_dir() for p in remove_dead_writers_temporaries(folder)]
