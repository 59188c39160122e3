"""Helpers for the archive security, damage and fuzz tests: a tiny model, and ways to take a
``.ferry`` archive apart and put it back together with chosen damage.

``rebuild`` rewrites members and can re-hash them in the manifest, so that tampering gets
past the integrity check and reaches the deeper checks (safetensors header, graph
interpreter). ``raw_zip`` writes a zip by hand, byte by byte, so that tests can make
what ``zipfile`` refuses to write: overlapping members, lying sizes, odd names, links.
"""

from __future__ import annotations

import builtins
import hashlib
import io
import json
import os
import struct
import zipfile
import zlib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import xxhash

import torchferry

MANIFEST = "ferry.json"
WEIGHTS = "weights.safetensors"
GRAPH = "program/graph.json"
CONSTANTS = "program/constants.safetensors"
EXAMPLE_INPUTS = "examples/inputs.safetensors"
EXAMPLE_OUTPUTS = "examples/outputs.safetensors"


class TinyNet(torch.nn.Module):
    """Linear -> BatchNorm -> ReLU, plus a plain tensor attribute so export stores a constants member."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = torch.nn.Linear(4, 3)
        self.bn = torch.nn.BatchNorm1d(3)
        self.offset = torch.tensor([0.5, -0.25, 1.0])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.bn(self.fc(x))) + self.offset


def pack_tiny(directory: Path, progress: Callable[[int], None] | None = None) -> bytes:
    """The bytes of a freshly packed ``TinyNet`` archive (members: all six kinds)."""
    torch.manual_seed(0)
    path = directory / "tiny.ferry"
    torchferry.pack(TinyNet(), path, example_inputs=torch.randn(2, 4), name="tiny", fsync=False, progress=progress)
    data = path.read_bytes()
    assert set(member_names(data)) == {MANIFEST, WEIGHTS, GRAPH, CONSTANTS, EXAMPLE_INPUTS, EXAMPLE_OUTPUTS}
    return data


# ------------------------------------------------------------------------ reading an archive


def member_names(data: bytes) -> list[str]:
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        return archive.namelist()


def read_members(data: bytes) -> dict[str, bytes]:
    """Every member's bytes, in archive order."""
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        return {info.filename: archive.read(info) for info in archive.infolist()}


def member_span(data: bytes, name: str) -> tuple[int, int]:
    """``(offset of the first data byte, size)`` of a stored member."""
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        info = archive.getinfo(name)
    name_len, extra_len = struct.unpack_from("<HH", data, info.header_offset + 26)
    return info.header_offset + 30 + name_len + extra_len, info.file_size


def central_directory_start(data: bytes) -> int:
    end = data.rindex(b"PK\x05\x06")
    (start,) = struct.unpack_from("<I", data, end + 16)
    return int(start)


def header_length(data: bytes) -> int:
    """Length of the safetensors header of the weights member."""
    (length,) = struct.unpack("<Q", read_members(data)[WEIGHTS][:8])
    return int(length)


def weights_header(data: bytes) -> dict[str, Any]:
    """The safetensors header of the weights member (tensor name -> dtype, shape, data_offsets)."""
    header: dict[str, Any] = json.loads(read_members(data)[WEIGHTS][8 : 8 + header_length(data)])
    header.pop("__metadata__", None)
    return header


def manifest_of(data: bytes) -> dict[str, Any]:
    result: dict[str, Any] = json.loads(read_members(data)[MANIFEST])
    return result


# ------------------------------------------------------------------------ rewriting an archive


def digest_entry(data: bytes) -> dict[str, Any]:
    return {"size": len(data), "sha256": hashlib.sha256(data).hexdigest(), "xxh3_64": xxhash.xxh3_64(data).hexdigest()}


def rebuild(
    data: bytes,
    *,
    replace: Mapping[str, bytes] | None = None,
    add: Mapping[str, bytes] | None = None,
    remove: Iterable[str] = (),
    rehash: bool = True,
    manifest: Callable[[dict[str, Any]], None] | None = None,
    manifest_bytes: bytes | None = None,
) -> bytes:
    """A new archive (plain stored zip) with members replaced, added or removed.

    With ``rehash`` the manifest records the new digest of every replaced or added member
    (and forgets removed ones), so integrity checks pass and deeper checks are reached.
    ``manifest`` edits the decoded manifest afterwards; ``manifest_bytes`` replaces it outright.
    """
    replace, add, removed = dict(replace or {}), dict(add or {}), set(remove)
    original = read_members(data)
    document = json.loads(original[MANIFEST])
    members = {name: replace.get(name, body) for name, body in original.items() if name not in removed}
    members.update(add)
    members.pop(MANIFEST, None)
    if rehash:
        for name in removed:
            document["members"].pop(name, None)
        for name, body in {**replace, **add}.items():
            if name != MANIFEST:
                document["members"][name] = digest_entry(body)
    if manifest is not None:
        manifest(document)
    if MANIFEST in replace:
        members[MANIFEST] = replace[MANIFEST]
    elif MANIFEST not in removed:
        members[MANIFEST] = manifest_bytes if manifest_bytes is not None else json.dumps(document).encode()
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", compression=zipfile.ZIP_STORED) as archive:
        for name, body in members.items():
            archive.writestr(zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0)), body)
    return out.getvalue()


def flip_byte(data: bytes, position: int, mask: int = 0x01) -> bytes:
    damaged = bytearray(data)
    damaged[position] ^= mask
    return bytes(damaged)


def graph_of(data: bytes) -> dict[str, Any]:
    result: dict[str, Any] = json.loads(read_members(data)[GRAPH])
    return result


def with_graph(data: bytes, graph: Any) -> bytes:
    """The archive with ``program/graph.json`` replaced (and re-hashed, so the interpreter sees it)."""
    return rebuild(data, replace={GRAPH: json.dumps(graph).encode()})


# ------------------------------------------------------------------------ a zip written by hand


@dataclass
class RawEntry:
    """One member of a hand-written zip; the optional fields make the headers lie."""

    name: str | bytes
    data: bytes
    method: int = 0
    uncompressed_size: int | None = None
    crc: int | None = None
    external_attr: int = 0o100644 << 16
    flags: int = 0
    create_system: int = 3
    header_offset: int | None = None
    """Point the central directory entry at this absolute offset instead of its own local header."""
    write_local: bool = True
    local_method: int | None = None
    """The compression method the local header claims (the central directory says ``method``)."""
    central_size: int | None = None
    """The compressed size the central directory claims."""


def raw_zip(entries: list[RawEntry]) -> bytes:
    """A zip file with exactly the given local headers, data and central directory entries."""
    out = bytearray()
    offsets: list[int] = []
    names = [e.name.encode("utf-8") if isinstance(e.name, str) else e.name for e in entries]
    for entry, name in zip(entries, names):
        offsets.append(len(out))
        if not entry.write_local:
            continue
        size = entry.uncompressed_size if entry.uncompressed_size is not None else len(entry.data)
        crc = entry.crc if entry.crc is not None else zlib.crc32(entry.data)
        method = entry.local_method if entry.local_method is not None else entry.method
        out += struct.pack(
            "<4sHHHHHIIIHH", b"PK\x03\x04", 20, entry.flags, method, 0, 0x21, crc, len(entry.data), size, len(name), 0
        )
        out += name + entry.data
    central = bytearray()
    for entry, name, offset in zip(entries, names, offsets):
        size = entry.uncompressed_size if entry.uncompressed_size is not None else len(entry.data)
        crc = entry.crc if entry.crc is not None else zlib.crc32(entry.data)
        local = entry.header_offset if entry.header_offset is not None else offset
        stored = entry.central_size if entry.central_size is not None else len(entry.data)
        central += struct.pack(
            "<4sBBHHHHHIIIHHHHHII", b"PK\x01\x02", 20, entry.create_system, 20, entry.flags, entry.method, 0, 0x21,
            crc, stored, size, len(name), 0, 0, 0, 0, entry.external_attr, local,
        )  # fmt: skip
        central += name
    start = len(out)
    out += central
    out += struct.pack("<4sHHHHIIH", b"PK\x05\x06", 0, 0, len(entries), len(entries), len(central), start, 0)
    return bytes(out)


def local_record(name: str, data: bytes) -> bytes:
    """The local header and data of one stored member, as ``raw_zip`` writes them."""
    whole = raw_zip([RawEntry(name, data)])
    return whole[: 30 + len(name.encode()) + len(data)]


def deflate_bomb(megabytes: int) -> tuple[bytes, int, int]:
    """A raw DEFLATE stream of ``megabytes`` MiB of zeros, built without ever holding them:
    ``(compressed bytes, uncompressed size, crc32)``."""
    block = bytes(1 << 20)
    compressor = zlib.compressobj(9, zlib.DEFLATED, -15)
    chunk = compressor.compress(block) + compressor.flush(zlib.Z_FULL_FLUSH)  # no back-references across chunks
    crc = 0
    for _ in range(megabytes):
        crc = zlib.crc32(block, crc)
    final = zlib.compressobj(9, zlib.DEFLATED, -15).flush(zlib.Z_FINISH)  # an empty final block
    return chunk * megabytes + final, megabytes << 20, crc


# ------------------------------------------------------------------------ pickle payloads


class OpenMarker:
    """Unpickling calls ``open(marker, "w")``: creates the marker file."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self) -> tuple[Any, ...]:
        return (builtins.open, (self.marker, "w"))


class ExecMarker:
    """Unpickling calls ``exec`` on source that creates the marker file."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self) -> tuple[Any, ...]:
        return (builtins.exec, (f"open({self.marker!r}, 'w').close()",))


class MkdirMarker:
    """Unpickling calls ``os.mkdir(marker)``."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self) -> tuple[Any, ...]:
        return (os.mkdir, (self.marker,))


def files_under(root: Path) -> set[str]:
    """Every path below ``root``, relative, to compare before and after."""
    return {str(p.relative_to(root)) for p in root.rglob("*")}


def outcome(call: Callable[..., Any], *args: Any, **kwargs: Any) -> torchferry.FerryError | None:
    """The FerryError ``call`` raised, or None; any other exception propagates and fails the test."""
    try:
        call(*args, **kwargs)
    except torchferry.FerryError as exc:
        return exc
    return None
