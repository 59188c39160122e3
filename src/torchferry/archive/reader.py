"""Opening an archive: container checks, manifest, member set, integrity, tensor members.

Everything here reads data only; running a program is the runtime's job. Each check
happens before anything is built from the archive, so a bad archive yields an error and
no half-loaded object.
"""

from __future__ import annotations

import json
import mmap
import os
from collections.abc import Callable
from typing import Any

import torch

from torchferry._types import MapLocation, PathLike
from torchferry.archive.container import Member, open_members, read_member
from torchferry.archive.integrity import Digest, check_members
from torchferry.archive.manifest import MANIFEST_NAME, MAX_MANIFEST_BYTES, Manifest, parse_manifest
from torchferry.errors import ArchiveError, FerryError, IntegrityError
from torchferry.state._safetensors_io import map_tensors, private_mapping, read_header
from torchferry.state.tensors import decode

MAX_JSON_MEMBER_BYTES = 512 * 1024 * 1024

__all__ = ["ArchiveReader", "inspect", "is_archive", "open_archive", "reader_from_members"]


class ArchiveReader:
    """A validated archive: its manifest and where each member's bytes are."""

    def __init__(self, path: str, members: dict[str, Member], manifest: Manifest) -> None:
        self.path = path
        self.members = members
        self.manifest = manifest
        self._mappings: dict[str, mmap.mmap] = {}

    def mapping(self, file: str | None = None) -> mmap.mmap:
        """One private mapping per file (the archive, or a registry blob), shared by hashing and
        every tensor member, so the pages the integrity check reads are the pages the tensors use."""
        key = file or self.path
        if key not in self._mappings:
            end = max((m.offset + m.size for m in self.members.values() if (m.file or self.path) == key), default=0)
            self._mappings[key] = private_mapping(key, end)
        return self._mappings[key]

    def member(self, name: str) -> Member:
        if name not in self.members:
            raise ArchiveError(
                f"{self.path}: member {name!r} is missing although the manifest needs it; re-pack the model.",
                path=self.path,
            )
        return self.members[name]

    def read_bytes(self, name: str, *, limit: int = MAX_JSON_MEMBER_BYTES) -> bytes:
        return read_member(self.path, self.member(name), limit=limit)

    def read_json(self, name: str) -> Any:
        try:
            return json.loads(self.read_bytes(name).decode("utf-8"))
        except (UnicodeDecodeError, ValueError, RecursionError) as exc:
            raise ArchiveError(f"{self.path}: member {name!r} is not valid JSON ({exc}).", path=self.path) from None

    def read_tensors(self, name: str, map_location: MapLocation = None) -> dict[str, torch.Tensor]:
        """A flat dict of tensors from a safetensors member, memory-mapped straight from the archive."""
        member = self.member(name)
        try:
            header = read_header(member.file or self.path, offset=member.offset, length=member.size)
            loaded = decode(header, map_tensors(header, self.mapping(member.file)), map_location)
        except ArchiveError:
            raise
        except FerryError as exc:
            raise ArchiveError(f"{self.path}: member {name!r} is damaged: {exc}", path=self.path) from None
        if not isinstance(loaded.obj, dict) or not all(isinstance(v, torch.Tensor) for v in loaded.obj.values()):
            raise ArchiveError(f"{self.path}: member {name!r} does not hold a flat dict of tensors.", path=self.path)
        return loaded.obj

    def check_integrity(self, *, algorithm: str = "xxh3_64", progress: Callable[[int], None] | None = None) -> None:
        by_file: dict[str | None, list[tuple[Member, Digest]]] = {}
        for name, digest in sorted(self.manifest.members.items()):
            by_file.setdefault(self.members[name].file, []).append((self.members[name], digest))
        for file, in_file in by_file.items():
            # an empty file (a registry blob of an empty member) cannot be mapped, and needs no mapping
            mapping = self.mapping(file) if any(m.size for m, _ in in_file) else None
            check_members(self.path, in_file, algorithm=algorithm, progress=progress, mapping=mapping)


def _check_member_set(path: str, members: dict[str, Member], manifest: Manifest) -> None:
    present = set(members) - {MANIFEST_NAME}
    listed = set(manifest.members)
    problems = [(n, "is listed in the manifest but missing from the archive") for n in sorted(listed - present)]
    problems += [(n, "is not listed in the manifest (added after packing?)") for n in sorted(present - listed)]
    if problems:
        name, what = problems[0]
        raise IntegrityError(f"{path}: member {name!r} {what}; re-download or re-pack it.", path=path, member=name)


def reader_from_members(display: str, members: dict[str, Member]) -> ArchiveReader:
    """An archive whose members live in separate files (a registry's blobs), validated like a file's."""
    manifest_member = members.get(MANIFEST_NAME)
    if manifest_member is None:
        raise ArchiveError(f"{display}: the stored entry has no {MANIFEST_NAME}; run `torchferry registry check`.")
    manifest = parse_manifest(display, read_member(display, manifest_member, limit=MAX_MANIFEST_BYTES))
    _check_member_set(display, members, manifest)
    return ArchiveReader(display, members, manifest)


def open_archive(path: PathLike) -> ArchiveReader:
    """Validate the container and manifest of ``path`` (no member is hashed here)."""
    spath = os.fspath(path)
    members = open_members(spath)
    if MANIFEST_NAME not in members:
        raise ArchiveError(
            f"{spath} is a zip file without {MANIFEST_NAME}, so it is not a torchferry archive. "
            "Make one with torchferry.pack or `torchferry convert`.",
            path=spath,
        )
    manifest = parse_manifest(spath, read_member(spath, members[MANIFEST_NAME], limit=MAX_MANIFEST_BYTES))
    _check_member_set(spath, members, manifest)
    return ArchiveReader(spath, members, manifest)


def inspect(path: PathLike) -> Manifest:
    """The manifest of the archive at ``path``, validated, without hashing members or running anything.

    >>> import torch, torchferry
    >>> _ = torchferry.pack(torch.nn.Linear(4, 2), "lin.ferry", example_inputs=torch.randn(3, 4), name="lin")
    >>> torchferry.inspect("lin.ferry").name
    'lin'
    """
    return open_archive(path).manifest


def is_archive(path: PathLike) -> bool:
    """Whether ``path`` looks like a ``.ferry`` archive: a zip file with a ``ferry.json`` member."""
    import zipfile

    try:
        with open(path, "rb") as handle:
            if handle.read(4) != b"PK\x03\x04":
                return False
            handle.seek(0)
            return MANIFEST_NAME in zipfile.ZipFile(handle).namelist()
    except (OSError, zipfile.BadZipFile, ValueError, EOFError):
        return False
