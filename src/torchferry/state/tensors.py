"""``save`` and ``load``: nested structures of tensors in a plain safetensors file.

The file is ordinary safetensors, so any safetensors reader sees the tensors (a flat
state_dict keeps its own key names). The structure around them (dicts with int keys,
lists, tuples, scalars, which tensors are views of which) is JSON in the header's
``__metadata__["torchferry"]``. Nothing is ever pickled, and loading runs no code.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Any

import torch

from torchferry._types import MapLocation, PathLike, TensorTree
from torchferry._util.atomic import atomic_write
from torchferry._version import __version__
from torchferry.errors import CorruptFileError, FileFormatError
from torchferry.state import _tree
from torchferry.state._legacy import legacy_kind, load_legacy
from torchferry.state._map_location import placer
from torchferry.state._safetensors_io import (
    Header,
    ProgressFn,
    file_prefix,
    looks_like_safetensors,
    map_tensors,
    read_header,
    read_tensors,
    write_safetensors,
)

FORMAT_ID = "torchferry.state/1"
"""Format id of the structure kept in the safetensors metadata; bump on incompatible change."""
META_KEY = "torchferry"

__all__ = ["FORMAT_ID", "load", "save"]


def save(obj: TensorTree, path: PathLike, *, fsync: bool = True, progress: ProgressFn | None = None) -> None:
    """Save a tensor, or any nesting of dicts/lists/tuples of tensors and JSON scalars.

    The write is atomic: until it completes, ``path`` keeps its previous content, and a
    writer killed half way leaves no partial file there. ``fsync=False`` trades
    durability across a power cut for speed. Raises ``UnsupportedObjectError`` naming
    the key path of anything that cannot be stored without pickle.

    >>> import torch, torchferry
    >>> torchferry.save({"w": torch.ones(2), "step": 3}, "state.safetensors")
    >>> torchferry.load("state.safetensors")["step"]
    3
    """
    write_structure(obj, path, kind="tree", fsync=fsync, progress=progress)


def write_structure(
    obj: TensorTree,
    path: PathLike,
    *,
    kind: str,
    fsync: bool = True,
    progress: ProgressFn | None = None,
) -> None:
    """Encode and atomically write ``obj``; ``kind`` tells readers what the tree means."""
    tensors, metadata = encode_structure(obj, kind=kind)
    with atomic_write(path, fsync=fsync) as handle:
        write_safetensors(handle, tensors, metadata, progress=progress)


def encode_structure(obj: TensorTree, *, kind: str) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """The tensors and safetensors metadata that store ``obj`` (``kind`` as in ``write_structure``)."""
    encoded = _tree.encode(obj)
    header = {
        "format": FORMAT_ID,
        "kind": kind,
        "tree": encoded.tree,
        "stored": {name: s.info() for name, s in encoded.stored.items() if s.info()},
        "torch": torch.__version__,
        "torchferry": __version__,
    }
    metadata = {"format": "pt", META_KEY: json.dumps(header, separators=(",", ":"), allow_nan=False)}
    return {name: s.tensor for name, s in encoded.stored.items()}, metadata


@dataclass(frozen=True)
class Loaded:
    """A file read back: what it held, and what kind of file it was."""

    obj: Any
    kind: str
    """``"tree"``/``"checkpoint"`` for our files, ``"safetensors"`` for plain ones, ``"legacy"``."""


def load(path: PathLike, map_location: MapLocation = None, *, mmap: bool = True, trust_pickle: bool = False) -> Any:
    """Load what ``save`` (or ``save_checkpoint``) wrote, a plain safetensors file, or a
    legacy ``torch.save`` file.

    ``map_location`` has ``torch.load``'s meanings. With ``mmap=True`` (the default, as
    in safetensors) CPU tensors are backed by a private copy-on-write mapping of the
    file: loading copies nothing and pages are read on first use. ``mmap=False`` reads
    every byte now into ordinary memory (prefer it when another program may truncate
    the file in place while the tensors live, or on Windows to replace a file that is
    still loaded). Legacy files are read with ``weights_only`` only; a file holding
    pickled objects raises ``UnsafePickleError`` unless ``trust_pickle=True``.
    """
    return read(path, map_location, mmap=mmap, trust_pickle=trust_pickle).obj


def read(
    path: PathLike,
    map_location: MapLocation = None,
    *,
    mmap: bool = True,
    trust_pickle: bool = False,
    progress: ProgressFn | None = None,
) -> Loaded:
    """Load any supported file and say which kind it was (``progress`` implies ``mmap=False``)."""
    spath = os.fspath(path)
    prefix = file_prefix(spath)
    if looks_like_safetensors(prefix):
        header = read_header(spath)
        raw = map_tensors(header) if mmap and progress is None else read_tensors(header, progress=progress)
        return decode(header, raw, map_location)
    if legacy_kind(prefix):
        return Loaded(load_legacy(spath, map_location, trust_pickle=trust_pickle), "legacy")
    raise unknown_format(spath, prefix)


def unknown_format(path: str, prefix: bytes) -> FileFormatError:
    """The error for a file that is neither safetensors nor ``torch.save`` output."""
    if not prefix:
        return FileFormatError(f"{path} is empty (0 bytes). Re-create or re-download it.", path=path)
    hint = ""
    if prefix.startswith(b"\x08") or b"onnx" in prefix.lower():
        hint = " It may be an ONNX model; torchferry reads state files here, not ONNX graphs."
    return FileFormatError(
        f"{path} is not a safetensors or torch.save file (it starts with {prefix[:8]!r}).{hint} "
        "torchferry reads files written by torchferry.save, safetensors, and torch.save (.pt/.pth).",
        path=path,
    )


def parse_meta(header: Header) -> dict[str, Any] | None:
    """The torchferry part of a header, validated; None for a plain safetensors file."""
    raw = header.metadata.get(META_KEY)
    if raw is None:
        return None
    try:
        meta = json.loads(raw)
    except (ValueError, RecursionError):
        raise CorruptFileError(f"{header.path}: the torchferry metadata is not valid JSON.", path=header.path) from None
    if not isinstance(meta, dict) or not isinstance(meta.get("format"), str):
        raise CorruptFileError(f"{header.path}: the torchferry metadata has no format id.", path=header.path)
    if meta["format"] != FORMAT_ID:
        raise FileFormatError(
            f"{header.path} uses format {meta['format']!r}, which this torchferry {__version__} "
            f"does not read (it reads {FORMAT_ID!r}). Upgrade: pip install -U torchferry.",
            path=header.path,
        )
    if not isinstance(meta.get("stored", {}), dict) or meta.get("kind") not in ("tree", "checkpoint"):
        raise CorruptFileError(f"{header.path}: the torchferry metadata is malformed.", path=header.path)
    return meta


def restore_complex(tensor: torch.Tensor, info: dict[str, Any], path: str) -> torch.Tensor:
    """Turn a stored real view back into the complex tensor it was, checking its layout."""
    wanted = info.get("complex")
    if wanted is None:
        return tensor
    expected = {"complex128": torch.float64, "complex32": torch.float16}.get(str(wanted))
    if expected is None or tensor.dtype != expected or tensor.dim() == 0 or tensor.shape[-1] != 2:
        raise CorruptFileError(f"{path}: a complex tensor is stored with the wrong layout.", path=path)
    if tensor.data_ptr() % (2 * tensor.element_size()):
        tensor = tensor.clone()  # complex kernels need the pair's alignment, which the file only gives per part
    return torch.view_as_complex(tensor)


def decode(header: Header, raw: dict[str, torch.Tensor], map_location: MapLocation) -> Loaded:
    """Rebuild what a safetensors file holds from its header and raw tensors."""
    meta = parse_meta(header)
    place = placer(map_location, header.path)
    if meta is None:
        return Loaded({name: place(t, "cpu") for name, t in raw.items()}, "safetensors")
    stored_info = meta.get("stored", {})
    placed = {}
    for name, tensor in raw.items():
        info = stored_info.get(name, {})
        if not isinstance(info, dict):
            raise CorruptFileError(f"{header.path}: the torchferry metadata is malformed.", path=header.path)
        device = info.get("device", "cpu")
        placed[name] = place(restore_complex(tensor, info, header.path), str(device))
    try:
        obj = _tree.decode(meta.get("tree"), placed)
    except (_tree.TreeError, KeyError, TypeError, ValueError, RuntimeError) as exc:
        raise CorruptFileError(
            f"{header.path}: the stored structure is damaged ({exc}). Re-create the file.", path=header.path
        ) from None
    return Loaded(obj, meta["kind"])
