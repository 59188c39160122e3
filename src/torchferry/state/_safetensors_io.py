"""Reading and writing the safetensors container, with every check done up front.

We parse the header ourselves (strictly, with the same rules as the reference reader:
bounded header, known dtypes, offsets contiguous and covering the data exactly, sizes
matching shapes) so that a damaged file fails with a :class:`CorruptFileError` naming
the file before a single tensor byte is read. Tensor bytes are then either mapped
(``map_tensors``: a private copy-on-write mapping, no copy at all, pages read on first
touch, as safetensors does) or read with ``readinto`` straight into freshly allocated
tensor memory (``read_tensors``: one copy from the page cache, nothing left mapped).
Either way peak memory is the tensors' size.
"""

from __future__ import annotations

import io
import json
import math
import mmap
import os
import struct
import sys
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import torch

from torchferry.errors import CorruptFileError, FileFormatError

MAX_HEADER_BYTES = 100_000_000
"""Same bound as the reference implementation: refuses header-size bombs."""

HEADER_ALIGNMENT = 8
_MAX_DIM = 2**62
"""Largest dimension accepted: a zero-size tensor could otherwise carry dims torch cannot hold."""

_CODES: dict[str, torch.dtype] = {
    "BOOL": torch.bool,
    "U8": torch.uint8,
    "I8": torch.int8,
    "I16": torch.int16,
    "U16": torch.uint16,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I32": torch.int32,
    "U32": torch.uint32,
    "F32": torch.float32,
    "C64": torch.complex64,
    "F64": torch.float64,
    "I64": torch.int64,
    "U64": torch.uint64,
    "F8_E4M3": torch.float8_e4m3fn,
    "F8_E5M2": torch.float8_e5m2,
    "F8_E4M3FNUZ": torch.float8_e4m3fnuz,
    "F8_E5M2FNUZ": torch.float8_e5m2fnuz,
    "F8_E8M0": torch.float8_e8m0fnu,
}
DTYPE_CODES: dict[torch.dtype, str] = {dtype: code for code, dtype in _CODES.items()}

ProgressFn = Callable[[int], None]


@dataclass(frozen=True)
class TensorEntry:
    """One tensor as the header describes it; offsets are relative to the data section."""

    name: str
    code: str
    shape: tuple[int, ...]
    begin: int
    end: int

    @property
    def dtype(self) -> torch.dtype:
        return _CODES[self.code]

    @property
    def nbytes(self) -> int:
        return self.end - self.begin


@dataclass(frozen=True)
class Header:
    """A validated safetensors header."""

    path: str
    entries: dict[str, TensorEntry]
    metadata: dict[str, str]
    data_start: int
    """Absolute file offset of the first tensor byte."""
    region_end: int
    """Absolute file offset just past the region (the whole file, or one zip member)."""

    @property
    def data_bytes(self) -> int:
        return sum(e.nbytes for e in self.entries.values())


def _corrupt(path: str, what: str) -> CorruptFileError:
    return CorruptFileError(
        f"{path}: {what}. The file is damaged or was not fully written "
        "(an interrupted copy or download?). Re-create or re-download it.",
        path=path,
    )


def _reject_duplicates(pairs: list[tuple[str, object]]) -> dict[str, object]:
    result: dict[str, object] = {}
    for key, value in pairs:
        if key in result:
            raise ValueError(f"duplicate key {key!r}")
        result[key] = value
    return result


def _parse_entry(path: str, name: str, raw: object) -> TensorEntry:
    if not isinstance(raw, dict) or set(raw) != {"dtype", "shape", "data_offsets"}:
        raise _corrupt(path, f"header entry {name!r} is not a tensor description")
    code, shape, offsets = raw["dtype"], raw["shape"], raw["data_offsets"]
    if not isinstance(code, str) or code not in _CODES:
        raise _corrupt(path, f"tensor {name!r} has unknown dtype {code!r:.40}")
    if not isinstance(shape, list) or not all(type(d) is int and 0 <= d < _MAX_DIM for d in shape):
        raise _corrupt(path, f"tensor {name!r} has an invalid shape {shape!r}")
    if (
        not isinstance(offsets, list)
        or len(offsets) != 2
        or not all(type(o) is int for o in offsets)
        or not 0 <= offsets[0] <= offsets[1]
    ):
        raise _corrupt(path, f"tensor {name!r} has invalid data offsets {offsets!r}")
    itemsize = _CODES[code].itemsize
    if math.prod(shape) * itemsize != offsets[1] - offsets[0]:
        raise _corrupt(
            path,
            f"tensor {name!r} of shape {shape} and dtype {code} needs "
            f"{math.prod(shape) * itemsize} bytes but its offsets span {offsets[1] - offsets[0]}",
        )
    return TensorEntry(name, code, tuple(shape), offsets[0], offsets[1])


def _parse_metadata(path: str, raw: object) -> dict[str, str]:
    if raw is None:
        return {}
    if not isinstance(raw, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in raw.items()):
        raise _corrupt(path, "the __metadata__ header entry is not a map of strings")
    return dict(raw)


def _check_layout(path: str, entries: Iterable[TensorEntry], data_size: int) -> None:
    position = 0
    for entry in sorted(entries, key=lambda e: (e.begin, e.end)):
        if entry.begin != position:
            raise _corrupt(path, f"tensor {entry.name!r} starts at byte {entry.begin}, expected {position}")
        position = entry.end
    if position != data_size:
        raise _corrupt(
            path,
            f"the header describes {position} bytes of tensor data but the file holds {data_size}",
        )


def read_header(path: str | os.PathLike[str], *, offset: int = 0, length: int | None = None) -> Header:
    """Read and fully validate the safetensors header at ``path``.

    ``offset``/``length`` select a region of the file (a stored member of a zip archive);
    by default the whole file is the safetensors data.
    """
    spath = str(path)
    try:
        with open(spath, "rb") as handle:
            real_size = os.fstat(handle.fileno()).st_size
            file_size = real_size - offset if length is None else length
            if offset + file_size > real_size:
                raise _corrupt(spath, f"the region of {file_size} bytes at {offset} runs past the end of the file")
            handle.seek(offset)
            prefix = handle.read(8)
            if len(prefix) < 8:
                raise _corrupt(spath, f"the file is only {file_size} bytes long")
            (header_len,) = struct.unpack("<Q", prefix)
            if header_len > MAX_HEADER_BYTES or 8 + header_len > file_size:
                raise _corrupt(
                    spath,
                    f"the header claims {header_len} bytes but the file is {file_size} bytes",
                )
            raw = handle.read(header_len)
    except OSError as exc:
        raise FileFormatError(
            f"{spath}: cannot read the file ({exc.strerror or exc}). Check the path and permissions.",
            path=spath,
        ) from exc
    try:
        parsed = json.loads(raw.decode("utf-8"), object_pairs_hook=_reject_duplicates)
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise _corrupt(spath, f"the header is not valid JSON ({exc})") from None
    if not isinstance(parsed, dict):
        raise _corrupt(spath, "the header is not a JSON object")
    metadata = _parse_metadata(spath, parsed.pop("__metadata__", None))
    entries = {name: _parse_entry(spath, name, raw_entry) for name, raw_entry in parsed.items()}
    data_start = 8 + header_len
    _check_layout(spath, entries.values(), file_size - data_start)
    return Header(spath, entries, metadata, offset + data_start, offset + file_size)


def _byte_view(tensor: torch.Tensor) -> memoryview:
    """A writable/readable byte view of a contiguous CPU tensor's memory, without copying."""
    # as_strided, not reshape: a contiguous one-element tensor may keep a stride other than 1
    flat = tensor.as_strided((tensor.numel(),), (1,))
    array: Any = flat.view(torch.uint8).numpy()
    return memoryview(array)


def read_tensors(
    header: Header,
    names: Iterable[str] | None = None,
    *,
    progress: ProgressFn | None = None,
) -> dict[str, torch.Tensor]:
    """Read the named tensors (all by default) into new CPU tensors, in file order."""
    wanted = header.entries if names is None else {n: header.entries[n] for n in names}
    ordered = sorted(wanted.values(), key=lambda e: e.begin)
    result: dict[str, torch.Tensor] = {}
    try:
        with io.FileIO(header.path, "r") as handle:
            for entry in ordered:
                tensor = torch.empty(entry.shape, dtype=entry.dtype)
                if entry.nbytes:
                    handle.seek(header.data_start + entry.begin)
                    _read_exactly(handle, _byte_view(tensor), header.path)
                    if progress is not None:
                        progress(entry.nbytes)
                result[entry.name] = tensor
    except OSError as exc:
        raise FileFormatError(
            f"{header.path}: reading tensor data failed ({exc.strerror or exc}).", path=header.path
        ) from exc
    return {name: result[name] for name in wanted}


def private_mapping(path: str, needed: int) -> mmap.mmap:
    """A private (copy-on-write) mapping of the whole file, which must hold at least ``needed`` bytes."""
    try:
        with open(path, "rb") as handle:
            if os.fstat(handle.fileno()).st_size < needed:
                raise _corrupt(path, "the file changed size while it was being opened")
            return mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_COPY)
    except (OSError, ValueError) as exc:
        raise FileFormatError(
            f"{path}: cannot map the file ({getattr(exc, 'strerror', None) or exc}); pass mmap=False to read it "
            "instead.",
            path=path,
        ) from exc


def map_tensors(header: Header, mapping: mmap.mmap | None = None) -> dict[str, torch.Tensor]:
    """Tensors backed by a private (copy-on-write) mapping of the file: nothing is copied.

    Writes to the tensors never reach the file. The mapping lives as long as any tensor
    does; pass ``mapping`` to share one (an archive hashes its members through the same
    mapping, so pages it touched are not faulted in again). Tensors whose bytes are not
    aligned for their dtype (files from other writers) or that are empty are read
    normally instead.
    """
    if header.region_end != header.data_start + header.data_bytes:
        raise _corrupt(header.path, "the file changed size while it was being opened")
    if mapping is None:
        mapping = private_mapping(header.path, header.region_end)
    elif len(mapping) < header.region_end:
        raise _corrupt(header.path, "the file changed size while it was being opened")
    result: dict[str, torch.Tensor] = {}
    unmapped = []
    for name, entry in header.entries.items():
        start = header.data_start + entry.begin
        if entry.nbytes == 0 or start % entry.dtype.itemsize:
            unmapped.append(name)
            continue
        count = entry.nbytes // entry.dtype.itemsize
        result[name] = torch.frombuffer(mapping, dtype=entry.dtype, count=count, offset=start).view(entry.shape)
    if unmapped:
        result.update(read_tensors(header, unmapped))
    return {name: result[name] for name in header.entries}


def _read_exactly(handle: io.FileIO, view: memoryview, path: str) -> None:
    filled = 0
    total = len(view)
    while filled < total:
        count = handle.readinto(view[filled:])
        if not count:
            raise _corrupt(path, "the file ended before all tensor data was read (it changed while reading?)")
        filled += count


def _write_all(handle: IO[bytes], data: memoryview | bytes) -> None:
    view = memoryview(data)
    while view:
        written = handle.write(view)
        view = view[written or 0 :]


def plan_safetensors(tensors: Mapping[str, torch.Tensor], metadata: Mapping[str, str]) -> tuple[bytes, list[str]]:
    """The length-prefixed header and the order tensors follow it in.

    Tensors are laid out by decreasing item size, so each starts naturally aligned (the
    header is padded to a multiple of 8) and can be memory-mapped as-is. The file's size
    is ``len(prefix)`` plus the tensors' bytes.
    """
    if sys.byteorder != "little":  # pragma: no cover - no big-endian CI machine
        raise FileFormatError("torchferry writes little-endian safetensors only.")
    order = sorted(tensors, key=lambda n: -tensors[n].element_size())
    header: dict[str, object] = {"__metadata__": dict(metadata)}
    position = 0
    for name in order:
        tensor = tensors[name]
        nbytes = tensor.numel() * tensor.element_size()
        header[name] = {
            "dtype": DTYPE_CODES[tensor.dtype],
            "shape": list(tensor.shape),
            "data_offsets": [position, position + nbytes],
        }
        position += nbytes
    encoded = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    encoded += b" " * (-len(encoded) % HEADER_ALIGNMENT)
    return struct.pack("<Q", len(encoded)) + encoded, order


def write_safetensors(
    handle: IO[bytes],
    tensors: Mapping[str, torch.Tensor],
    metadata: Mapping[str, str],
    *,
    progress: ProgressFn | None = None,
) -> None:
    """Write contiguous CPU ``tensors`` as a safetensors file into ``handle`` (see ``plan_safetensors``)."""
    prefix, order = plan_safetensors(tensors, metadata)
    _write_all(handle, prefix)
    for name in order:
        tensor = tensors[name]
        if tensor.numel():
            _write_all(handle, _byte_view(tensor))
            if progress is not None:
                progress(tensor.numel() * tensor.element_size())


def looks_like_safetensors(prefix: bytes) -> bool:
    """True when the first bytes of a file look like a safetensors header."""
    if len(prefix) < 9:
        return False
    (header_len,) = struct.unpack("<Q", prefix[:8])
    return 0 < header_len <= MAX_HEADER_BYTES and prefix[8:9] == b"{"


def file_prefix(path: str | os.PathLike[str], size: int = 16) -> bytes:
    """The first ``size`` bytes of a file, with a clear error when it cannot be opened."""
    try:
        with open(path, "rb") as handle:
            return handle.read(size)
    except FileNotFoundError:
        raise FileFormatError(f"{path}: no such file. Check the path.", path=Path(path)) from None
    except IsADirectoryError:
        raise FileFormatError(f"{path}: is a directory, expected a file.", path=Path(path)) from None
    except OSError as exc:
        raise FileFormatError(
            f"{path}: cannot read the file ({exc.strerror or exc}). Check the path and permissions.",
            path=Path(path),
        ) from exc
