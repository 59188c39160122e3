"""Writing an archive: members streamed into the zip with their digests, manifest last.

Tensor members are safetensors files written straight into the (uncompressed, aligned)
zip member, hashing as they go, so a large model is never held twice in memory and
needs one pass over its bytes.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping
from dataclasses import replace
from typing import IO, Any

import torch
import xxhash

from torchferry._types import PathLike
from torchferry.archive.container import ArchiveWriter, write_archive
from torchferry.archive.integrity import Digest, digest_bytes
from torchferry.archive.manifest import MANIFEST_NAME, Manifest
from torchferry.state._safetensors_io import plan_safetensors, write_safetensors
from torchferry.state.tensors import encode_structure

__all__ = ["TensorMember", "write_ferry"]

TensorMember = Mapping[str, torch.Tensor]
"""A flat dict of tensors, stored as one safetensors member (shared storage stored once)."""


class _HashingStream:
    """Forwards writes and hashes them (sha256 and xxh3) on the way."""

    def __init__(self, stream: IO[bytes]) -> None:
        self.stream = stream
        self.sha256 = hashlib.sha256()
        self.xxh3 = xxhash.xxh3_64()
        self.size = 0

    def write(self, data: Any) -> int:
        self.sha256.update(data)
        self.xxh3.update(data)
        self.size += len(memoryview(data).cast("B"))
        self.stream.write(data)
        return len(memoryview(data).cast("B"))

    def digest(self) -> Digest:
        return Digest(self.size, self.sha256.hexdigest(), self.xxh3.hexdigest())


def _write_tensors(
    writer: ArchiveWriter, name: str, tensors: TensorMember, progress: Callable[[int], None] | None
) -> Digest:
    stored, metadata = encode_structure(dict(tensors), kind="tree")
    prefix, _ = plan_safetensors(stored, metadata)
    size = len(prefix) + sum(t.numel() * t.element_size() for t in stored.values())
    with writer.member(name, size) as stream:
        hashing = _HashingStream(stream)
        write_safetensors(hashing, stored, metadata, progress=progress)  # type: ignore[arg-type]
    return hashing.digest()


def write_ferry(
    path: PathLike,
    manifest: Manifest,
    *,
    tensors: Mapping[str, TensorMember],
    files: Mapping[str, bytes],
    fsync: bool = True,
    progress: Callable[[int], None] | None = None,
) -> Manifest:
    """Write ``tensors`` and ``files`` members, then the manifest with their digests; atomic."""
    digests: dict[str, Digest] = {}
    with write_archive(path, fsync=fsync) as writer:
        for name, member in tensors.items():
            digests[name] = _write_tensors(writer, name, member, progress)
        for name, data in files.items():
            writer.add(name, data)
            digests[name] = digest_bytes(data)
        final = replace(manifest, members=digests)
        writer.add(MANIFEST_NAME, final.to_json())
    return final
