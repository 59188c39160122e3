"""``load_model``/``inspect``/``verify`` that take a file path or a registry reference.

The runtime works on files and readers; this layer adds the other way users name a
model: ``iris``, ``iris:3`` or ``iris@production`` in the default registry (or the one
passed as ``registry=``). An existing file always wins over a reference of the same spelling.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from torchferry._types import PathLike
from torchferry.archive.manifest import Manifest
from torchferry.archive.reader import ArchiveReader
from torchferry.archive.reader import inspect as inspect_file
from torchferry.errors import ArchiveError, NotFoundError, UsageError
from torchferry.registry.refs import SYNTAX
from torchferry.registry.registry import Registry
from torchferry.runtime import load as _load
from torchferry.runtime import verify as _verify
from torchferry.runtime.packaged import Packaged

__all__ = ["inspect", "load_model", "resolve", "verify"]


def resolve(source: PathLike | ArchiveReader, registry: Registry | None = None) -> Path | ArchiveReader:
    """A path for an existing file (or anything path-like), else the registry entry ``source`` names."""
    if isinstance(source, ArchiveReader):
        return source
    text = os.fspath(source)
    if os.path.isfile(text) or not isinstance(source, str) or text.endswith(".ferry") or os.sep in text:
        return Path(text)
    try:
        return (registry or Registry()).reader(text)
    except UsageError:
        raise ArchiveError(f"{text}: no such file, and not a registry reference ({SYNTAX}).", path=text) from None
    except NotFoundError as exc:
        raise NotFoundError(f"{text} is not a file, and {exc}") from None


def load_model(source: PathLike | ArchiveReader, *, registry: Registry | None = None, **kwargs: Any) -> Packaged:
    """:func:`torchferry.runtime.load.load_model` on a path or a registry reference (``iris@production``)."""
    return _load.load_model(resolve(source, registry), **kwargs)


def verify(
    source: PathLike | ArchiveReader, *, registry: Registry | None = None, **kwargs: Any
) -> _verify.VerifyReport:
    """:func:`torchferry.runtime.verify.verify` on a path or a registry reference."""
    return _verify.verify(resolve(source, registry), **kwargs)


def inspect(source: PathLike | ArchiveReader, *, registry: Registry | None = None) -> Manifest:
    """The manifest of an archive file or of a registry entry, without hashing or running anything."""
    resolved = resolve(source, registry)
    return resolved.manifest if isinstance(resolved, ArchiveReader) else inspect_file(resolved)
