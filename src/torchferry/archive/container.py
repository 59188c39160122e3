"""The zip container of a ``.ferry`` archive: aligned, uncompressed members; strict reading.

Members are always stored uncompressed and each one's data starts on a 64-byte boundary
(the local header's extra field is padded, as Android's zipalign does), so tensors can be
memory-mapped straight out of the archive and ``unzip -l`` still lists it. The reader
trusts nothing in the file: it accepts only stored, unencrypted members with plain
relative names, inside the file and not overlapping, before any member is read. That
rules out zip bombs (nothing is ever inflated) and path traversal by construction.
"""

from __future__ import annotations

import os
import re
import struct
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import IO

from torchferry._util.atomic import atomic_write
from torchferry.errors import ArchiveError

ALIGNMENT = 64
MAX_MEMBERS = 100_000
_ZIPALIGN_EXTRA_ID = 0xD935
_LOCAL_HEADER = struct.Struct("<4sHHHHHIIIHH")
_LOCAL_SIGNATURE = b"PK\x03\x04"
_SAFE_NAME = re.compile(r"[A-Za-z0-9_.\-]+(/[A-Za-z0-9_.\-]+)*")

__all__ = ["ALIGNMENT", "ArchiveWriter", "Member", "check_member_name", "open_members", "read_member", "write_archive"]


def check_member_name(name: str) -> str | None:
    """Why ``name`` is not an acceptable member name, or None when it is."""
    if not _SAFE_NAME.fullmatch(name):
        return "only letters, digits, '_', '-', '.' and '/' separators are allowed"
    if any(part in (".", "..") for part in name.split("/")):
        return "'.' and '..' path segments are not allowed"
    return None


class ArchiveWriter:
    """Writes members into an open zip stream, each aligned and stored."""

    def __init__(self, handle: IO[bytes]) -> None:
        self._zip = zipfile.ZipFile(handle, "w", compression=zipfile.ZIP_STORED, allowZip64=True)
        self._handle = handle
        self.sizes: dict[str, int] = {}

    def _aligned_info(self, name: str, size: int) -> tuple[zipfile.ZipInfo, bool]:
        problem = check_member_name(name)
        if problem is not None or name in self.sizes:
            raise ValueError(f"bad archive member name {name!r}: {problem or 'duplicate'}")
        info = zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0))  # reproducible bytes
        info.compress_type = zipfile.ZIP_STORED
        info.external_attr = 0o644 << 16
        info.file_size = size
        info.CRC = info.compress_size = 0  # FileHeader needs them; zipfile fills them in after writing
        zip64 = size * 1.05 > zipfile.ZIP64_LIMIT
        start = self._handle.tell()
        info.extra = b""
        base = len(info.FileHeader(zip64))
        padding = -(start + base + 6) % ALIGNMENT
        info.extra = struct.pack("<HHH", _ZIPALIGN_EXTRA_ID, 2 + padding, ALIGNMENT) + b"\0" * padding
        return info, zip64

    @contextmanager
    def member(self, name: str, size: int) -> Iterator[IO[bytes]]:
        """A stream for exactly ``size`` bytes of member ``name``."""
        info, zip64 = self._aligned_info(name, size)
        with self._zip.open(info, "w", force_zip64=zip64) as stream:
            yield stream
        if info.file_size != size:
            raise ValueError(f"member {name!r}: wrote {info.file_size} bytes, announced {size}")
        self.sizes[name] = size

    def add(self, name: str, data: bytes) -> None:
        with self.member(name, len(data)) as stream:
            stream.write(data)

    def close(self) -> None:
        self._zip.close()

    def abandon(self) -> None:
        """Forget the half-written zip (its temporary file is being deleted) without finishing it."""
        self._zip.fp = None


@contextmanager
def write_archive(path: str | os.PathLike[str], *, fsync: bool = True) -> Iterator[ArchiveWriter]:
    """Write an archive atomically: ``path`` shows the old file until the new one is complete."""
    with atomic_write(path, fsync=fsync) as handle:
        writer = ArchiveWriter(handle)
        try:
            yield writer
        except BaseException:
            writer.abandon()
            raise
        writer.close()


@dataclass(frozen=True)
class Member:
    """Where one member's bytes are: ``offset`` is the absolute position of its first data byte
    in ``file`` (``None``: the archive file itself; a registry keeps members in separate blobs)."""

    name: str
    offset: int
    size: int
    file: str | None = None


def _bad(path: str, what: str) -> ArchiveError:
    return ArchiveError(
        f"{path}: {what}. It is not an intact torchferry archive (an interrupted copy, a "
        "different kind of zip, or a tampered file); re-create or re-download it.",
        path=path,
    )


def _check_info(path: str, info: zipfile.ZipInfo) -> None:
    problem = check_member_name(info.filename)
    if problem is not None:
        raise _bad(path, f"member name {info.filename!r} is not allowed ({problem})")
    if info.compress_type != zipfile.ZIP_STORED or info.compress_size != info.file_size:
        raise _bad(
            path,
            f"member {info.filename!r} is compressed (method {info.compress_type}); torchferry "
            "stores members uncompressed and never inflates any (zip-bomb protection)",
        )
    if info.flag_bits & 0x1:
        raise _bad(path, f"member {info.filename!r} is encrypted")
    if (info.external_attr >> 16) & 0o170000 not in (0, 0o100000):
        raise _bad(path, f"member {info.filename!r} is not a regular file (a link or device)")


def _data_offset(path: str, handle: IO[bytes], info: zipfile.ZipInfo, file_size: int) -> int:
    handle.seek(info.header_offset)
    raw = handle.read(_LOCAL_HEADER.size)
    if len(raw) != _LOCAL_HEADER.size:
        raise _bad(path, f"the local header of {info.filename!r} is cut off")
    fields = _LOCAL_HEADER.unpack(raw)
    if fields[0] != _LOCAL_SIGNATURE or fields[3] != zipfile.ZIP_STORED:
        raise _bad(path, f"the local header of {info.filename!r} is damaged")
    name_len, extra_len = int(fields[9]), int(fields[10])
    if handle.read(name_len) != info.filename.encode("utf-8"):
        raise _bad(path, f"the local header of {info.filename!r} names a different member")
    offset = info.header_offset + _LOCAL_HEADER.size + name_len + extra_len
    if offset + info.file_size > file_size:
        raise _bad(path, f"member {info.filename!r} runs past the end of the file (truncated?)")
    return offset


def open_members(path: str) -> dict[str, Member]:
    """Validate the container of ``path`` and return where each member's bytes are."""
    try:
        with open(path, "rb") as handle:
            file_size = os.fstat(handle.fileno()).st_size
            try:
                infos = zipfile.ZipFile(handle).infolist()
            except (
                zipfile.BadZipFile,
                zipfile.LargeZipFile,
                NotImplementedError,  # a damaged "version needed to extract" field
                struct.error,
                ValueError,
                EOFError,
                OSError,
            ) as exc:
                raise _bad(path, f"it is not a readable zip file ({exc})") from None
            if len(infos) > MAX_MEMBERS:
                raise _bad(path, f"it has {len(infos)} members (at most {MAX_MEMBERS} are accepted)")
            members: dict[str, Member] = {}
            for info in infos:
                _check_info(path, info)
                if info.filename in members:
                    raise _bad(path, f"member {info.filename!r} appears twice")
                offset = _data_offset(path, handle, info, file_size)
                members[info.filename] = Member(info.filename, offset, info.file_size)
    except FileNotFoundError:
        raise ArchiveError(f"{path}: no such file. Check the path.", path=path) from None
    except IsADirectoryError:
        raise ArchiveError(f"{path}: is a directory, expected a .ferry file.", path=path) from None
    except OSError as exc:
        raise ArchiveError(f"{path}: cannot read the file ({exc.strerror or exc}).", path=path) from exc
    _check_overlaps(path, members)
    return members


def _check_overlaps(path: str, members: dict[str, Member]) -> None:
    end = 0
    for member in sorted(members.values(), key=lambda m: m.offset):
        if member.offset < end:
            raise _bad(path, f"member {member.name!r} overlaps another member")
        end = member.offset + member.size


def read_member(path: str, member: Member, *, limit: int | None = None) -> bytes:
    """The bytes of a (small) member; ``limit`` refuses members larger than expected."""
    if limit is not None and member.size > limit:
        raise _bad(path, f"member {member.name!r} is {member.size} bytes, more than the {limit} allowed")
    with open(member.file or path, "rb") as handle:
        handle.seek(member.offset)
        data = handle.read(member.size)
    if len(data) != member.size:
        raise _bad(path, f"member {member.name!r} is cut off")
    return data
