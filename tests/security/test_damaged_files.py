"""Damaged, truncated and hand-crafted hostile files: every reader fails with our error.

Files are built byte by byte (``struct`` + ``json``) so each case breaks exactly one rule
of the safetensors container or of the torchferry structure kept in its metadata. Every
failure must be a :class:`CorruptFileError` or :class:`FileFormatError` whose message
names the file, never a ``struct.error``, ``KeyError``, ``UnicodeDecodeError`` or the like.
"""

from __future__ import annotations

import io
import json
import os
import random
import struct
import subprocess
import sys
import warnings
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

import torchferry
from torchferry.errors import CheckpointError, CorruptFileError, FerryError, FileFormatError
from torchferry.state._safetensors_io import MAX_HEADER_BYTES
from torchferry.state.summary import describe
from torchferry.state.tensors import FORMAT_ID

pytestmark = pytest.mark.security

# ----------------------------------------------------------------------------- crafting


def st_bytes(header: dict[str, Any] | bytes, data: bytes = b"", *, declared: int | None = None) -> bytes:
    """A safetensors file: u64 little-endian header length, JSON header, data."""
    raw = header if isinstance(header, bytes) else json.dumps(header).encode()
    return struct.pack("<Q", len(raw) if declared is None else declared) + raw + data


def entry(dtype: Any, shape: Any, begin: Any, end: Any) -> dict[str, Any]:
    return {"dtype": dtype, "shape": shape, "data_offsets": [begin, end]}


GOOD_ENTRIES = {"a": entry("F32", [2], 0, 8), "b": entry("I64", [1], 8, 16)}
GOOD_DATA = struct.pack("<2f", 1.0, 2.0) + struct.pack("<q", 7)


def ferry_meta(**overrides: Any) -> dict[str, str]:
    """The metadata of a torchferry state file over GOOD_ENTRIES, with fields overridden."""
    meta: dict[str, Any] = {
        "format": FORMAT_ID,
        "kind": "tree",
        "tree": {"D": [["a", {"T": "a"}], ["b", {"L": [{"T": "b"}, 1]}]]},
        "stored": {},
        "torch": torch.__version__,
        "torchferry": "0.0.0",
    }
    meta.update(overrides)
    return {"format": "pt", "torchferry": json.dumps(meta)}


def ferry_file(**overrides: Any) -> bytes:
    return st_bytes({"__metadata__": ferry_meta(**overrides), **GOOD_ENTRIES}, GOOD_DATA)


def ferry_file_raw_meta(raw: str) -> bytes:
    return st_bytes({"__metadata__": {"torchferry": raw}, **GOOD_ENTRIES}, GOOD_DATA)


def _tree_with(node: Any) -> dict[str, Any]:
    return {"D": [["x", node]]}


def _deep_meta(depth: int) -> bytes:
    """Metadata whose tree nests ``depth`` lists (written as text: json.dumps would recurse)."""
    tree = '{"L":[' * depth + "1" + "]}" * depth
    return ferry_file_raw_meta(f'{{"format":"{FORMAT_ID}","kind":"tree","stored":{{}},"tree":{tree}}}')


def _load(path: Path) -> object:
    return torchferry.load(path)


def _describe(path: Path) -> object:
    return describe(path)


def _load_into(path: Path) -> object:
    return torchferry.load_into(torch.nn.Linear(2, 2), path, strict=False)


def _resume(path: Path) -> object:
    return torchferry.resume(path, model=torch.nn.Linear(2, 2))


READERS: dict[str, Callable[[Path], object]] = {
    "load": _load,
    "describe": _describe,
    "load_into": _load_into,
    "resume": _resume,
}


def _assert_names_file(exc: BaseException, path: Path) -> None:
    assert str(path) in str(exc), f"the message does not name the file: {exc}"
    assert getattr(exc, "path", None) == str(path)


# ----------------------------------------------------------------------------- container damage

CORRUPT_CONTAINERS: dict[str, bytes] = {
    "only-length-prefix": struct.pack("<Q", 16) + b"{",
    "header-claims-more-than-file": st_bytes(b'{"a":1}', declared=1000),
    "header-claims-the-maximum": st_bytes(b"{" + b" " * 7, declared=MAX_HEADER_BYTES),
    "invalid-json": st_bytes(b'{"a": {"dtype": "F32", ' + b" " * 8),
    "invalid-utf8": st_bytes(b'{"\xff\xfe": 1}   '),
    "json-nesting-bomb": st_bytes(b'{"a":' + b"[" * 200_000 + b"]" * 200_000 + b"}"),
    "trailing-garbage-after-json": st_bytes(b'{"a": 1} xyz'),
    "duplicate-tensor-keys": st_bytes(
        b'{"a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]},'
        b' "a": {"dtype": "F32", "shape": [1], "data_offsets": [4, 8]}}',
        b"\0" * 8,
    ),
    "duplicate-metadata-keys": st_bytes(b'{"__metadata__": {"x": "1", "x": "2"}}'),
    "duplicate-metadata-entries": st_bytes(b'{"__metadata__": {"x": "1"}, "__metadata__": {"y": "2"}}'),
    "entry-not-an-object": st_bytes({"a": [1, 2, 3]}),
    "entry-extra-field": st_bytes({"a": {**entry("F32", [1], 0, 4), "extra": 1}}, b"\0" * 4),
    "entry-missing-field": st_bytes({"a": {"dtype": "F32", "shape": [1]}}, b"\0" * 4),
    "unknown-dtype": st_bytes({"a": entry("F128", [1], 0, 16)}, b"\0" * 16),
    "dtype-lowercase": st_bytes({"a": entry("f32", [1], 0, 4)}, b"\0" * 4),
    "dtype-is-number": st_bytes({"a": entry(4, [1], 0, 4)}, b"\0" * 4),
    "shape-negative": st_bytes({"a": entry("F32", [-1], 0, 4)}, b"\0" * 4),
    "shape-float": st_bytes({"a": entry("F32", [1.0], 0, 4)}, b"\0" * 4),
    "shape-bool": st_bytes({"a": entry("F32", [True], 0, 4)}, b"\0" * 4),
    "shape-not-a-list": st_bytes({"a": entry("F32", 1, 0, 4)}, b"\0" * 4),
    "shape-huge": st_bytes({"a": entry("F32", [2**40, 2**40], 0, 4)}, b"\0" * 4),
    "shape-size-mismatch": st_bytes({"a": entry("F32", [3], 0, 8)}, b"\0" * 8),
    "shape-size-mismatch-bigger-span": st_bytes({"a": entry("F32", [1], 0, 8)}, b"\0" * 8),
    "offsets-reversed": st_bytes({"a": entry("U8", [0], 4, 0)}, b"\0" * 4),
    "offsets-negative": st_bytes({"a": entry("U8", [4], -4, 0)}, b"\0" * 4),
    "offsets-float": st_bytes({"a": entry("U8", [4], 0.0, 4.0)}, b"\0" * 4),
    "offsets-three": st_bytes({"a": {"dtype": "U8", "shape": [4], "data_offsets": [0, 2, 4]}}, b"\0" * 4),
    "offsets-overlap": st_bytes({"a": entry("F32", [2], 0, 8), "b": entry("F32", [2], 4, 12)}, b"\0" * 12),
    "offsets-identical": st_bytes({"a": entry("F32", [2], 0, 8), "b": entry("F32", [2], 0, 8)}, b"\0" * 8),
    "offsets-gap": st_bytes({"a": entry("F32", [2], 0, 8), "b": entry("F32", [2], 12, 20)}, b"\0" * 20),
    "offsets-not-from-zero": st_bytes({"a": entry("F32", [2], 4, 12)}, b"\0" * 12),
    "offsets-past-end-of-file": st_bytes({"a": entry("F32", [4], 0, 16)}, b"\0" * 8),
    "data-trailing-bytes": st_bytes(dict(GOOD_ENTRIES), GOOD_DATA + b"\0" * 8),
    "data-missing-bytes": st_bytes(dict(GOOD_ENTRIES), GOOD_DATA[:12]),
    "metadata-value-not-string": st_bytes({"__metadata__": {"format": 1}}),
    "metadata-is-list": st_bytes({"__metadata__": ["format", "pt"]}),
    "metadata-is-string": st_bytes({"__metadata__": "pt"}),
    "metadata-nested-map": st_bytes({"__metadata__": {"torchferry": {"format": FORMAT_ID}}}),
}


@pytest.mark.parametrize("reader", ["load", "describe"])
@pytest.mark.parametrize("case", sorted(CORRUPT_CONTAINERS))
def test_corrupt_container(case: str, reader: str, tmp_path: Path) -> None:
    path = tmp_path / f"{case}.safetensors"
    path.write_bytes(CORRUPT_CONTAINERS[case])
    with pytest.raises(CorruptFileError) as info:
        READERS[reader](path)
    _assert_names_file(info.value, path)


@pytest.mark.parametrize("reader", ["load", "describe"])
@pytest.mark.parametrize("shape", [[2**64, 0], [0, 2**63], [10**30, 0, 3]], ids=["2**64", "2**63", "10**30"])
def test_shape_dimension_beyond_int64(shape: list[int], reader: str, tmp_path: Path) -> None:
    path = tmp_path / "shape.safetensors"
    path.write_bytes(st_bytes({"a": entry("F32", shape, 0, 0)}))
    with pytest.raises(CorruptFileError) as info:
        READERS[reader](path)
    _assert_names_file(info.value, path)


@pytest.mark.parametrize("dtype", [["F32"], {"F32": 1}], ids=["list", "object"])
def test_dtype_of_unhashable_json_type(dtype: Any, tmp_path: Path) -> None:
    path = tmp_path / "dtype.safetensors"
    path.write_bytes(st_bytes({"a": entry(dtype, [1], 0, 4)}, b"\0" * 4))
    with pytest.raises(CorruptFileError) as info:
        torchferry.load(path)
    _assert_names_file(info.value, path)


@pytest.mark.parametrize("reader", sorted(READERS))
def test_corrupt_container_through_every_reader(reader: str, tmp_path: Path) -> None:
    path = tmp_path / "overlap.safetensors"
    path.write_bytes(CORRUPT_CONTAINERS["offsets-overlap"])
    with pytest.raises(CorruptFileError) as info:
        READERS[reader](path)
    _assert_names_file(info.value, path)


# ----------------------------------------------------------------------------- not a state file

ONNXISH = (
    b'\x08\x07\x12\x07pytorch\x1a\x052.1.0:\xa6\x01\n\x1f\n\x05input\x12\x06output\x1a\x06Gemm_0"\x04Gemm'
    b"\x12\ntorch_jit"
)


def _random_bytes(seed: int, size: int) -> bytes:
    rng = random.Random(seed)
    data = bytes(rng.getrandbits(8) for _ in range(size))
    # random bytes that happen to start like a zip or a pickle are another test's business
    return b"\x01" + data[1:]


FOREIGN: dict[str, bytes] = {
    "one-byte": b"\x00",
    "eight-bytes": b"\x10\x00\x00\x00\x00\x00\x00\x00",
    "text": b"hello, this is not a model\n",
    "random-bytes": _random_bytes(1, 4096),
    "random-bytes-small": _random_bytes(2, 40),
    "header-bomb-u64-max": struct.pack("<Q", 2**64 - 1) + b'{"a": 1}',
    "header-bomb-2-63": struct.pack("<Q", 2**63) + b'{"a": 1}',
    "header-bomb-just-over-limit": struct.pack("<Q", MAX_HEADER_BYTES + 1) + b'{"a": 1}',
    "header-length-zero": struct.pack("<Q", 0) + b"{}",
    "header-not-an-object": st_bytes(b'["a", 1]'),
    "header-is-a-string": st_bytes(b'"abc"   '),
    "onnx-ish": ONNXISH,
    "pickle-protocol-0": b"(dp0\nS'a'\np1\nI1\ns.",
    "gzip": b"\x1f\x8b\x08\x00" + b"\0" * 20,
    "numpy-npy": b"\x93NUMPY\x01\x00v\x00{'descr': '<f4', 'fortran_order': False, 'shape': (2,), }",
}


@pytest.mark.parametrize("reader", sorted(READERS))
@pytest.mark.parametrize("case", sorted(FOREIGN))
def test_not_a_state_file(case: str, reader: str, tmp_path: Path) -> None:
    path = tmp_path / f"{case}.pt"
    path.write_bytes(FOREIGN[case])
    with pytest.raises(FileFormatError) as info:
        READERS[reader](path)
    _assert_names_file(info.value, path)


def test_onnx_bytes_get_the_onnx_hint(tmp_path: Path) -> None:
    path = tmp_path / "model.onnx"
    path.write_bytes(ONNXISH)
    with pytest.raises(FileFormatError) as info:
        torchferry.load(path)
    assert type(info.value) is FileFormatError
    assert "ONNX" in str(info.value)
    _assert_names_file(info.value, path)


@pytest.mark.parametrize("reader", sorted(READERS))
def test_empty_file(reader: str, tmp_path: Path) -> None:
    path = tmp_path / "empty.safetensors"
    path.write_bytes(b"")
    with pytest.raises(FileFormatError) as info:
        READERS[reader](path)
    assert "empty" in str(info.value)
    _assert_names_file(info.value, path)


@pytest.mark.parametrize("reader", sorted(READERS))
def test_directory_instead_of_file(reader: str, tmp_path: Path) -> None:
    path = tmp_path / "model.safetensors"
    path.mkdir()
    with pytest.raises(FileFormatError) as info:
        READERS[reader](path)
    assert "directory" in str(info.value)
    _assert_names_file(info.value, path)


@pytest.mark.parametrize("reader", sorted(READERS))
def test_missing_file(reader: str, tmp_path: Path) -> None:
    path = tmp_path / "nope" / "model.safetensors"
    with pytest.raises(FileFormatError) as info:
        READERS[reader](path)
    assert "no such file" in str(info.value)
    _assert_names_file(info.value, path)


@pytest.mark.skipif(os.geteuid() == 0, reason="root can read any file")
def test_unreadable_file(tmp_path: Path) -> None:
    path = tmp_path / "secret.safetensors"
    path.write_bytes(ferry_file())
    path.chmod(0)
    try:
        with pytest.raises(FileFormatError) as info:
            torchferry.load(path)
        _assert_names_file(info.value, path)
    finally:
        path.chmod(0o600)


# ----------------------------------------------------------------------------- truncation


@pytest.fixture(scope="module")
def valid_ferry_bytes(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    path = tmp_path_factory.mktemp("valid") / "state.safetensors"
    torch.manual_seed(0)
    torchferry.save(
        {"w": torch.randn(8, 4), "nested": {1: [torch.arange(6), (torch.ones(3, dtype=torch.float16),)]}, "e": 3},
        path,
        fsync=False,
    )
    return path.read_bytes()


def _cut_points(size: int) -> list[int]:
    points = set(range(0, min(size, 40)))
    points.update(range(40, size, max(1, size // 60)))
    points.update({size - 1, size - 2, size - 8})
    return sorted(p for p in points if 0 <= p < size)


def test_truncated_state_file_at_many_points(valid_ferry_bytes: bytes, tmp_path: Path) -> None:
    path = tmp_path / "cut.safetensors"
    for cut in _cut_points(len(valid_ferry_bytes)):
        path.write_bytes(valid_ferry_bytes[:cut])
        for name in ("load", "describe"):
            with pytest.raises(FileFormatError) as info:
                READERS[name](path)
            if cut >= 9:
                assert isinstance(info.value, CorruptFileError), (cut, name, info.value)
            _assert_names_file(info.value, path)


def test_truncated_checkpoint_through_resume(tmp_path: Path) -> None:
    source = tmp_path / "ckpt.safetensors"
    model = torch.nn.Linear(2, 2)
    torchferry.save_checkpoint(source, model=model, optimizer=torch.optim.Adam(model.parameters()), epoch=1)
    data = source.read_bytes()
    path = tmp_path / "cut.safetensors"
    for cut in range(9, len(data), max(1, len(data) // 40)):
        path.write_bytes(data[:cut])
        target = torch.nn.Linear(2, 2)
        before = target.weight.detach().clone()
        with pytest.raises(CorruptFileError) as info:
            torchferry.resume(path, model=target)
        _assert_names_file(info.value, path)
        assert torch.equal(target.weight, before)


@pytest.fixture(scope="module")
def valid_zip_bytes(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    path = tmp_path_factory.mktemp("valid") / "legacy.pt"
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 3)
    torch.save({"model_state_dict": model.state_dict(), "epoch": 2, "losses": [0.5, 0.25]}, path)
    return path.read_bytes()


def test_truncated_torch_save_zip_at_many_points(valid_zip_bytes: bytes, tmp_path: Path) -> None:
    path = tmp_path / "cut.pt"
    for cut in _cut_points(len(valid_zip_bytes)):
        path.write_bytes(valid_zip_bytes[:cut])
        for name in ("load", "describe"):
            with pytest.raises(FileFormatError) as info:
                READERS[name](path)
            if cut >= 4:
                assert isinstance(info.value, CorruptFileError), (cut, name, info.value)
            _assert_names_file(info.value, path)


def test_truncated_torch_save_zip_through_load_into_and_resume(valid_zip_bytes: bytes, tmp_path: Path) -> None:
    path = tmp_path / "cut.pt"
    path.write_bytes(valid_zip_bytes[: len(valid_zip_bytes) // 2])
    for call in (
        lambda: torchferry.load_into(torch.nn.Linear(4, 3), path),
        lambda: torchferry.resume(path, model=torch.nn.Linear(4, 3)),
    ):
        with pytest.raises(CorruptFileError) as info:
            call()
        _assert_names_file(info.value, path)


@pytest.fixture(scope="module")
def valid_legacy_pickle_bytes(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    path = tmp_path_factory.mktemp("valid") / "legacy-nonzip.pt"
    torch.manual_seed(0)
    torch.save(torch.nn.Linear(4, 3).state_dict(), path, _use_new_zipfile_serialization=False)
    return path.read_bytes()


def test_truncated_legacy_pickle_never_escapes(valid_legacy_pickle_bytes: bytes, tmp_path: Path) -> None:
    """Every cut of a non-zip torch.save file fails with one of our errors."""
    path = tmp_path / "cut.pt"
    for cut in _cut_points(len(valid_legacy_pickle_bytes)):
        path.write_bytes(valid_legacy_pickle_bytes[:cut])
        for name in ("load", "describe"):
            with pytest.raises(FerryError) as info:
                READERS[name](path)
            assert str(path) in str(info.value)


def test_truncated_legacy_pickle_inside_a_global_is_corrupt(valid_legacy_pickle_bytes: bytes, tmp_path: Path) -> None:
    at = valid_legacy_pickle_bytes.index(b"collections\nOrderedDict")
    path = tmp_path / "cut.pt"
    path.write_bytes(valid_legacy_pickle_bytes[: at + len(b"collections\nOrde")])
    with pytest.raises(CorruptFileError):
        torchferry.load(path)


def test_foreign_zip_archive(tmp_path: Path) -> None:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("hello.txt", "not a model")
    path = tmp_path / "archive.pt"
    path.write_bytes(buffer.getvalue())
    for name in ("load", "describe"):
        with pytest.raises(FileFormatError) as info:
            READERS[name](path)
        _assert_names_file(info.value, path)


def test_torchscript_archive_is_named(tmp_path: Path) -> None:
    path = tmp_path / "scripted.pt"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.jit.save(torch.jit.script(torch.nn.Linear(2, 2)), path)
    with pytest.raises(FileFormatError) as info:
        torchferry.load(path)
    assert "TorchScript" in str(info.value)
    _assert_names_file(info.value, path)


def test_protocol4_classification_does_not_depend_on_warning_filters(tmp_path: Path) -> None:
    path = tmp_path / "p4.pt"
    torch.save({"w": torch.ones(2)}, path, pickle_protocol=4)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(FerryError) as relaxed:
            torchferry.load(path)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(FerryError) as strict:
            torchferry.load(path)
    assert type(strict.value) is type(relaxed.value)


def test_protocol4_torch_save_fails_with_our_error(tmp_path: Path) -> None:
    """torch's weights_only unpickler cannot read protocol 4 at all; what escapes must still be ours."""
    path = tmp_path / "p4.pt"
    torch.save({"w": torch.ones(2)}, path, pickle_protocol=4)
    for action in ("ignore", "error"):
        with warnings.catch_warnings():
            warnings.simplefilter(action)
            for name in ("load", "describe", "load_into", "resume"):
                with pytest.raises(FerryError) as info:
                    READERS[name](path)
                assert str(path) in str(info.value)


# ----------------------------------------------------------------------------- torchferry metadata damage

COMPLEX_WRONG_LAYOUT = st_bytes(
    {
        "__metadata__": {
            "torchferry": json.dumps(
                {"format": FORMAT_ID, "kind": "tree", "tree": {"T": "c"}, "stored": {"c": {"complex": "complex128"}}}
            )
        },
        "c": entry("F64", [3], 0, 24),
    },
    b"\0" * 24,
)
"""A complex128 tensor is stored as float64 with a trailing dimension of 2; this one has 3."""

CORRUPT_METADATA: dict[str, bytes] = {
    "meta-not-json": ferry_file_raw_meta("{not json"),
    "meta-json-nesting-bomb": ferry_file_raw_meta("[" * 100_000 + "]" * 100_000),
    "meta-not-an-object": ferry_file_raw_meta(json.dumps([FORMAT_ID])),
    "meta-no-format": ferry_file_raw_meta(json.dumps({"kind": "tree", "tree": None})),
    "meta-format-not-string": ferry_file_raw_meta(json.dumps({"format": 1, "kind": "tree", "tree": None})),
    "meta-unknown-kind": ferry_file(kind="model"),
    "meta-kind-missing": ferry_file_raw_meta(json.dumps({"format": FORMAT_ID, "tree": None})),
    "meta-stored-not-a-map": ferry_file(stored=["a"]),
    "meta-stored-entry-not-a-map": ferry_file(stored={"a": "cpu"}),
    "tree-missing-tensor": ferry_file(tree={"D": [["a", {"T": "a"}], ["ghost", {"T": "no-such-tensor"}]]}),
    "tree-tensor-name-not-string": ferry_file(tree=_tree_with({"T": ["a"]})),
    "tree-unknown-node": ferry_file(tree=_tree_with({"Q": 1})),
    "tree-bad-float-tag": ferry_file(tree=_tree_with({"F": "1e999"})),
    "tree-list-node-not-list": ferry_file(tree=_tree_with({"L": {"a": 1}})),
    "tree-dict-node-not-list": ferry_file(tree={"D": {"a": 1}}),
    "tree-dict-entry-not-pair": ferry_file(tree={"D": [["a"]]}),
    "tree-dict-key-is-list": ferry_file(tree={"D": [[["a"], 1]]}),
    "tree-raw-json-list": ferry_file(tree=[1, 2]),
    "tree-too-deep": _deep_meta(600),
    "tree-deep-beyond-decoder-limit": _deep_meta(490),
    "view-out-of-bounds": ferry_file(tree=_tree_with({"T": "a", "V": [0, [3], [1]]})),
    "view-offset-out-of-bounds": ferry_file(tree=_tree_with({"T": "a", "V": [2, [1], [1]]})),
    "view-stride-out-of-bounds": ferry_file(tree=_tree_with({"T": "a", "V": [0, [2], [2]]})),
    "view-negative-offset": ferry_file(tree=_tree_with({"T": "a", "V": [-1, [1], [1]]})),
    "view-negative-stride": ferry_file(tree=_tree_with({"T": "a", "V": [1, [2], [-1]]})),
    "view-rank-mismatch": ferry_file(tree=_tree_with({"T": "a", "V": [0, [1, 1], [1]]})),
    "view-malformed": ferry_file(tree=_tree_with({"T": "a", "V": [0, [1]]})),
    "view-float-shape": ferry_file(tree=_tree_with({"T": "a", "V": [0, [1.0], [1]]})),
    "view-huge-shape-zero-stride-overflow": ferry_file(tree=_tree_with({"T": "a", "V": [0, [2**70], [0]]})),
    "view-dtype-on-non-byte-base": ferry_file(tree=_tree_with({"T": "a", "V": [0, [1], [1]], "dtype": "int32"})),
    "view-unknown-dtype": ferry_file(tree=_tree_with({"T": "a", "V": [0, [1], [1]], "dtype": "float128"})),
    "complex-wrong-layout": COMPLEX_WRONG_LAYOUT,
    "complex-unknown": ferry_file(stored={"a": {"complex": "complex256"}}),
    "parameter-of-integers": ferry_file(tree=_tree_with({"T": "b", "P": True})),
}


@pytest.mark.parametrize("reader", ["load", "load_into"])
@pytest.mark.parametrize("case", sorted(CORRUPT_METADATA))
def test_corrupt_torchferry_metadata(case: str, reader: str, tmp_path: Path) -> None:
    path = tmp_path / f"{case}.safetensors"
    path.write_bytes(CORRUPT_METADATA[case])
    with pytest.raises(CorruptFileError) as info:
        READERS[reader](path)
    _assert_names_file(info.value, path)


@pytest.mark.parametrize("case", sorted(set(CORRUPT_METADATA) - {"complex-wrong-layout"}))
def test_describe_damaged_metadata_never_escapes(case: str, tmp_path: Path) -> None:
    """describe() may fall back to listing the stored tensors, but only our errors escape it."""
    path = tmp_path / f"{case}.safetensors"
    path.write_bytes(CORRUPT_METADATA[case])
    try:
        describe(path)
    except FerryError as exc:
        _assert_names_file(exc, path)


def test_describe_complex_with_wrong_layout(tmp_path: Path) -> None:
    path = tmp_path / "complex.safetensors"
    path.write_bytes(CORRUPT_METADATA["complex-wrong-layout"])
    try:
        describe(path)
    except FerryError as exc:
        _assert_names_file(exc, path)


@pytest.mark.parametrize("reader", sorted(READERS))
@pytest.mark.parametrize("format_id", ["torchferry.state/2", "torchferry.state/99", "torchferry.archive/1"])
def test_newer_format_asks_for_upgrade(format_id: str, reader: str, tmp_path: Path) -> None:
    path = tmp_path / "future.safetensors"
    path.write_bytes(ferry_file(format=format_id))
    with pytest.raises(FileFormatError) as info:
        READERS[reader](path)
    assert type(info.value) is FileFormatError
    message = str(info.value)
    assert format_id in message
    assert "Upgrade" in message or "upgrade" in message
    assert "pip install -U torchferry" in message
    _assert_names_file(info.value, path)


def test_crafted_header_is_readable_when_intact(tmp_path: Path) -> None:
    """Control: the hand-made file is valid when not damaged, so each case above tests one rule."""
    path = tmp_path / "good.safetensors"
    path.write_bytes(ferry_file())
    loaded = torchferry.load(path)
    assert torch.equal(loaded["a"], torch.tensor([1.0, 2.0]))
    assert loaded["b"][1] == 1 and torch.equal(loaded["b"][0], torch.tensor([7]))
    path.write_bytes(st_bytes(dict(GOOD_ENTRIES), GOOD_DATA))
    assert set(torchferry.load(path)) == {"a", "b"}


# ----------------------------------------------------------------------------- checkpoint semantics


@pytest.fixture
def checkpoint_meta(tmp_path: Path) -> tuple[dict[str, Any], Path]:
    """A real checkpoint's header and the path to write variants to."""
    source = tmp_path / "ckpt.safetensors"
    model = torch.nn.Linear(2, 2)
    torchferry.save_checkpoint(source, model=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.1), epoch=1)
    return _split(source.read_bytes()), tmp_path / "variant.safetensors"


def _split(raw: bytes) -> dict[str, Any]:
    (n,) = struct.unpack("<Q", raw[:8])
    return {"header": json.loads(raw[8 : 8 + n]), "data": raw[8 + n :]}


def _write_variant(parts: dict[str, Any], path: Path, edit: Callable[[dict[str, Any]], None]) -> Path:
    header = json.loads(json.dumps(parts["header"]))
    meta = json.loads(header["__metadata__"]["torchferry"])
    edit(meta)
    header["__metadata__"]["torchferry"] = json.dumps(meta)
    path.write_bytes(st_bytes(header, parts["data"]))
    return path


def _set_section(section: str, node: Any) -> Callable[[dict[str, Any]], None]:
    def edit(meta: dict[str, Any]) -> None:
        for pair in meta["tree"]["D"]:
            if pair[0] == section:
                pair[1] = node

    return edit


def _set_tree(node: Any) -> Callable[[dict[str, Any]], None]:
    def edit(meta: dict[str, Any]) -> None:
        meta["tree"] = node

    return edit


def test_checkpoint_variant_control(checkpoint_meta: tuple[dict[str, Any], Path]) -> None:
    parts, path = checkpoint_meta
    _write_variant(parts, path, lambda meta: None)
    model = torch.nn.Linear(2, 2)
    assert torchferry.resume(path, model=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.1)).epoch == 1
    assert describe(path).info["epoch"] == 1


def test_plain_tensor_file_is_not_a_checkpoint(tmp_path: Path) -> None:
    path = tmp_path / "plain.safetensors"
    path.write_bytes(ferry_file())
    with pytest.raises(CheckpointError) as info:
        torchferry.resume(path, model=torch.nn.Linear(2, 2))
    assert str(path) in str(info.value)


MALFORMED_CHECKPOINTS: dict[str, Callable[[dict[str, Any]], None]] = {
    "tree-is-a-list": _set_tree({"L": [1, 2]}),
    "tree-is-a-scalar": _set_tree(5),
    "models-is-a-list": _set_section("models", {"L": [1]}),
    "optimizers-is-a-list": _set_section("optimizers", {"L": [1]}),
    "extra-is-a-list": _set_section("extra", {"L": [1]}),
    "modes-is-a-list": _set_section("modes", {"L": [1]}),
    "rng-torch-is-an-int": _set_section("rng", {"D": [["torch", 3]]}),
    "rng-python-incomplete": _set_section("rng", {"D": [["python", {"D": [["version", 3]]}]]}),
    "rng-mixed-key-types": _set_section("rng", {"D": [[1, None], ["torch", None]]}),
    "modes-entry-is-an-int": _set_section("modes", {"D": [["model", 3]]}),
    "optimizers-is-a-bool": _set_section("optimizers", True),
    "schedulers-is-an-int": _set_section("schedulers", 5),
    "models-mixed-key-types": _set_section("models", {"D": [["a", 1], [1, 2]]}),
    "epoch-is-a-map": _set_section("epoch", {"D": [["a", 1]]}),
}


def _resume_malformed(path: Path) -> torch.nn.Linear:
    model = torch.nn.Linear(2, 2)
    torchferry.resume(path, model=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.1))
    return model


@pytest.mark.parametrize("reader", [_resume_malformed, describe], ids=["resume", "describe"])
@pytest.mark.parametrize("case", sorted(MALFORMED_CHECKPOINTS))
def test_malformed_checkpoint_never_escapes(
    case: str, reader: Callable[[Path], object], checkpoint_meta: tuple[dict[str, Any], Path]
) -> None:
    """resume() and describe() may accept odd values (an epoch that is a map), but only our errors escape."""
    parts, path = checkpoint_meta
    _write_variant(parts, path, MALFORMED_CHECKPOINTS[case])
    try:
        reader(path)
    except FerryError as exc:
        assert str(path) in str(exc)


def test_resume_bad_rng_leaves_model_untouched(checkpoint_meta: tuple[dict[str, Any], Path]) -> None:
    parts, path = checkpoint_meta
    _write_variant(parts, path, MALFORMED_CHECKPOINTS["rng-torch-is-an-int"])
    model = torch.nn.Linear(2, 2)
    before = model.weight.detach().clone()
    with pytest.raises(FerryError):
        torchferry.resume(path, model=model)
    assert torch.equal(model.weight, before)


# ----------------------------------------------------------------------------- CLI


def _cli() -> list[str]:
    script = Path(sys.executable).parent / "torchferry"
    return [str(script)] if script.exists() else [sys.executable, "-m", "torchferry.cli.main"]


def _run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*_cli(), *args], capture_output=True, text=True, timeout=120, check=False)


@pytest.mark.e2e
@pytest.mark.parametrize(
    "case", ["empty", "directory", "missing", "offsets-overlap", "header-bomb-u64-max", "truncated"]
)
def test_cli_inspect_damaged_file(case: str, tmp_path: Path, valid_ferry_bytes: bytes) -> None:
    path = tmp_path / "damaged.safetensors"
    if case == "empty":
        path.write_bytes(b"")
    elif case == "directory":
        path.mkdir()
    elif case == "truncated":
        path.write_bytes(valid_ferry_bytes[: len(valid_ferry_bytes) // 2])
    elif case in CORRUPT_CONTAINERS:
        path.write_bytes(CORRUPT_CONTAINERS[case])
    elif case in FOREIGN:
        path.write_bytes(FOREIGN[case])
    done = _run_cli("inspect", str(path))
    assert done.returncode == 1, done.stdout + done.stderr
    assert "Traceback" not in done.stderr
    assert "error:" in done.stderr
    assert str(path) in " ".join(done.stderr.split())


@pytest.mark.e2e
@pytest.mark.parametrize(
    "case",
    [
        "directory",
        "random-bytes",
        "truncated-zip",
        "missing",
    ],
)
def test_cli_convert_damaged_file(case: str, tmp_path: Path, valid_zip_bytes: bytes) -> None:
    path = tmp_path / "damaged.pt"
    out = tmp_path / "out.safetensors"
    if case == "directory":
        path.mkdir()
    elif case == "random-bytes":
        path.write_bytes(FOREIGN["random-bytes"])
    elif case == "truncated-zip":
        path.write_bytes(valid_zip_bytes[: len(valid_zip_bytes) // 2])
    done = _run_cli("convert", str(path), "-o", str(out))
    assert done.returncode == 1, done.stdout + done.stderr
    assert "Traceback" not in done.stderr, done.stderr
    assert "error:" in done.stderr
    assert str(path) in " ".join(done.stderr.split())
    assert not out.exists()
