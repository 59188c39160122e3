"""Damaged ``.ferry`` archives: every kind of damage is an ``ArchiveError`` that says what and where.

Damage here is accidental rather than hostile: flipped bits, truncated downloads, manifests
edited by hand or written by another release, members lost or added, and writes that stop
half-way. The rules under test:

- a flipped byte in any member fails the integrity check, naming the member
  (``IntegrityError.member``); ``verify`` reports the sha256 mismatch; with
  ``check_integrity=False`` (the documented debugging opt-out) loading may succeed, but
  any failure is still a ``FerryError``;
- a truncated file is an ``ArchiveError`` (a ``FileFormatError``) at every offset, and
  no call returns a half-built object;
- a manifest field of the wrong type, missing, or out of range is an ``ArchiveError``
  naming the field; a newer format version says to upgrade;
- an interrupted ``pack`` leaves the previous archive byte-identical and no temporary file.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

import torchferry
from tests.archive_helpers import (
    CONSTANTS,
    EXAMPLE_INPUTS,
    EXAMPLE_OUTPUTS,
    GRAPH,
    MANIFEST,
    WEIGHTS,
    TinyNet,
    central_directory_start,
    flip_byte,
    header_length,
    manifest_of,
    member_span,
    pack_tiny,
    read_members,
    rebuild,
    weights_header,
)
from tests.archive_helpers import outcome as _outcome
from torchferry.errors import ArchiveError, FerryError, FileFormatError, IntegrityError

pytestmark = [pytest.mark.security]

HASHED_MEMBERS = (WEIGHTS, GRAPH, CONSTANTS, EXAMPLE_INPUTS, EXAMPLE_OUTPUTS)
LOAD_FLAGS: list[dict[str, Any]] = [{}, {"check_integrity": False}, {"trust_code": True}]


@pytest.fixture(scope="module")
def packed(tmp_path_factory: pytest.TempPathFactory) -> tuple[bytes, int]:
    """The archive's bytes, and how many times ``pack`` called its progress callback."""
    calls: list[int] = []
    return pack_tiny(tmp_path_factory.mktemp("damage"), progress=calls.append), len(calls)


@pytest.fixture
def archive(packed: tuple[bytes, int]) -> bytes:
    return packed[0]


def _write(tmp_path: Path, data: bytes, name: str = "damaged.ferry") -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


# ----------------------------------------------------------------------------- flipped bytes


@pytest.mark.parametrize("where", ["first", "middle", "last"])
@pytest.mark.parametrize("member", HASHED_MEMBERS)
def test_flipped_byte_fails_integrity_naming_the_member(
    archive: bytes, tmp_path: Path, member: str, where: str
) -> None:
    offset, size = member_span(archive, member)
    position = offset + {"first": 0, "middle": size // 2, "last": size - 1}[where]
    path = _write(tmp_path, flip_byte(archive, position, 0x10))
    for flags in ({}, {"trust_code": True}, {"device": "cpu"}):
        with pytest.raises(IntegrityError) as info:
            torchferry.load_model(path, **flags)
        assert info.value.member == member
        assert repr(member) in str(info.value) and "xxh3_64" in str(info.value)
        assert "re-pack" in str(info.value).lower() or "re-download" in str(info.value).lower()
    report = torchferry.verify(path)
    assert not report.ok and not report.hashes_ok
    assert any("sha256" in p and repr(member) in p for p in report.problems), str(report)
    # the documented opt-out: no hashing, so the damage may load; any failure is still a FerryError
    _outcome(torchferry.load_model, path, check_integrity=False)
    assert torchferry.inspect(path).name == "tiny"  # inspect never hashes members


def test_flipped_weight_value_loads_with_integrity_off_and_differs(archive: bytes, tmp_path: Path) -> None:
    """The opt-out really skips the check: the damaged value comes through (which is why it is debug-only)."""
    offset, _ = member_span(archive, WEIGHTS)
    header = weights_header(archive)
    (name,) = [n for n in header if n.endswith("fc.weight")]
    position = offset + 8 + header_length(archive) + header[name]["data_offsets"][0] + 3  # high byte of a float32
    path = _write(tmp_path, flip_byte(archive, position, 0x40))
    good = _write(tmp_path, archive, "good.ferry")
    x = torch.randn(3, 4)
    damaged = torchferry.load_model(path, check_integrity=False)(x)
    assert not torch.equal(damaged, torchferry.load_model(good)(x))


def test_flipped_digest_in_manifest_names_the_member(archive: bytes, tmp_path: Path) -> None:
    """load_model checks xxh3_64 and verify checks sha256: a wrong digest of either kind is caught by its checker."""
    digests = manifest_of(archive)["members"][CONSTANTS]

    def corrupt(kind: str) -> Callable[[dict[str, Any]], None]:
        def edit(document: dict[str, Any]) -> None:
            value = digests[kind]
            document["members"][CONSTANTS][kind] = ("0" if value[0] != "0" else "1") + value[1:]

        return edit

    fast = _write(tmp_path, rebuild(archive, rehash=False, manifest=corrupt("xxh3_64")), "xxh3.ferry")
    with pytest.raises(IntegrityError) as info:
        torchferry.load_model(fast)
    assert info.value.member == CONSTANTS
    strong = _write(tmp_path, rebuild(archive, rehash=False, manifest=corrupt("sha256")), "sha.ferry")
    report = torchferry.verify(strong)
    assert not report.ok and any("sha256" in p and repr(CONSTANTS) in p for p in report.problems)


def test_every_sampled_byte_flip_of_the_manifest_is_refused_or_harmless(archive: bytes, tmp_path: Path) -> None:
    """ferry.json is not hashed (a signature covers it): a flip may leave it valid, but never crashes."""
    offset, size = member_span(archive, MANIFEST)
    refused = 0
    path = tmp_path / "flipped.ferry"
    for position in range(offset, offset + size, 7):
        path.write_bytes(flip_byte(archive, position, 0x04))
        error = _outcome(torchferry.load_model, path)
        if error is not None:
            assert isinstance(error, ArchiveError), repr(error)
            refused += 1
        _outcome(torchferry.inspect, path)
        assert isinstance(torchferry.verify(path).ok, bool)
    assert refused > size // 7 // 4  # most flips hit structure, keys, digests or enums


def test_flipped_byte_in_the_central_directory_is_an_archive_error(archive: bytes, tmp_path: Path) -> None:
    start = central_directory_start(archive)
    path = tmp_path / "flipped.ferry"
    refused = 0
    for position in range(start, len(archive), 3):
        path.write_bytes(flip_byte(archive, position, 0xFF))
        error = _outcome(torchferry.load_model, path, check_integrity=False)
        assert error is None or isinstance(error, ArchiveError), (position, repr(error))
        refused += error is not None
        if position % 9 == 0:
            assert isinstance(torchferry.verify(path).ok, bool)
    assert refused > (len(archive) - start) // 3 // 4  # signatures, names, sizes, offsets, methods, attributes


def test_unsupported_zip_version_is_an_archive_error(archive: bytes, tmp_path: Path) -> None:
    """zipfile raises NotImplementedError for a 'version needed to extract' it does not know."""
    damaged = bytearray(archive)
    damaged[central_directory_start(archive) + 6] = 0xFF
    path = _write(tmp_path, bytes(damaged))
    with pytest.raises(ArchiveError, match="not a readable zip file"):
        torchferry.load_model(path)
    assert not torchferry.verify(path).ok


# ----------------------------------------------------------------------------- truncation


def _truncation_offsets(archive: bytes) -> list[int]:
    offsets = {0, 1, 2, 3, 4, 10, 29, 30, 31, 64, len(archive) - 22, len(archive) - 21, len(archive) - 1}
    for name in read_members(archive):
        start, size = member_span(archive, name)
        offsets |= {start - 1, start, start + 1, start + 8, start + size // 2, start + size - 1, start + size}
    start = central_directory_start(archive)
    offsets |= set(range(start, len(archive), 11))
    return sorted(o for o in offsets if 0 <= o < len(archive))


def test_truncation_at_any_offset_is_an_archive_error(archive: bytes, tmp_path: Path) -> None:
    path = tmp_path / "truncated.ferry"
    offsets = _truncation_offsets(archive)
    assert len(offsets) > 60
    for offset in offsets:
        path.write_bytes(archive[:offset])
        for flags in LOAD_FLAGS:
            with pytest.raises(ArchiveError) as info:
                torchferry.load_model(path, **flags)
            assert isinstance(info.value, FileFormatError) and info.value.path == str(path)
            assert str(path) in str(info.value)
        with pytest.raises(ArchiveError):
            torchferry.inspect(path)
        report = torchferry.verify(path)
        assert not report.ok and report.manifest is None and report.problems


@pytest.mark.parametrize("member", HASHED_MEMBERS)
def test_truncated_member_in_an_intact_zip(archive: bytes, tmp_path: Path, member: str) -> None:
    """A member cut short but the zip rewritten around it: a size mismatch, or (re-hashed) a damaged member."""
    body = read_members(archive)[member]
    stale = _write(tmp_path, rebuild(archive, replace={member: body[: len(body) // 2]}, rehash=False), "stale.ferry")
    with pytest.raises(IntegrityError, match="bytes, the manifest says") as info:
        torchferry.load_model(stale)
    assert info.value.member == member
    rehashed = _write(tmp_path, rebuild(archive, replace={member: body[: len(body) // 2]}), "rehashed.ferry")
    error = _outcome(torchferry.load_model, rehashed)
    if member in (EXAMPLE_INPUTS, EXAMPLE_OUTPUTS):
        assert error is None  # only verify reads the examples
    else:
        assert isinstance(error, ArchiveError) and repr(member) in str(error)
    report = torchferry.verify(rehashed)
    assert not report.ok and report.hashes_ok and any(repr(member) in p for p in report.problems)


@pytest.mark.parametrize(
    "content",
    [b"", b"PK", b"not a zip at all\n", b"PK\x05\x06" + bytes(18), b"\0" * 4096],
    ids=["empty", "PK", "text", "empty-zip", "zeros"],
)
def test_files_that_are_not_archives(tmp_path: Path, content: bytes) -> None:
    path = _write(tmp_path, content, "junk.ferry")
    for call in (torchferry.load_model, torchferry.inspect):
        with pytest.raises(ArchiveError):
            call(path)
    assert not torchferry.verify(path).ok


def test_missing_path_and_directory(tmp_path: Path) -> None:
    with pytest.raises(ArchiveError, match="no such file"):
        torchferry.load_model(tmp_path / "nope.ferry")
    with pytest.raises(ArchiveError, match="directory"):
        torchferry.load_model(tmp_path)
    assert not torchferry.verify(tmp_path / "nope.ferry").ok


def test_a_safetensors_file_is_not_an_archive(archive: bytes, tmp_path: Path) -> None:
    path = _write(tmp_path, read_members(archive)[WEIGHTS], "weights.ferry")
    with pytest.raises(ArchiveError, match="not a readable zip"):
        torchferry.load_model(path)


@pytest.mark.parametrize("where", ["prepended", "appended"])
def test_extra_bytes_around_the_zip_load_or_fail_cleanly(archive: bytes, tmp_path: Path, where: str) -> None:
    junk = b"#!/bin/sh\necho hi\n" * 10
    path = _write(tmp_path, junk + archive if where == "prepended" else archive + junk)
    error = _outcome(torchferry.load_model, path)
    assert error is None or isinstance(error, ArchiveError)
    report = torchferry.verify(path)
    assert report.ok == (error is None), str(report)


# ----------------------------------------------------------------------------- the manifest


def test_null_tolerances_mean_the_defaults(archive: bytes, tmp_path: Path) -> None:
    path = _write(tmp_path, rebuild(archive, manifest=lambda d: d["examples"].update(rtol=None, atol=None)))
    assert "rtol" not in torchferry.inspect(path).examples
    assert torchferry.verify(path).ok


def test_newer_format_version_says_to_upgrade(archive: bytes, tmp_path: Path) -> None:
    path = _write(tmp_path, rebuild(archive, manifest=lambda d: d.update(format="torchferry.archive/2")))
    for call in (torchferry.load_model, torchferry.inspect):
        with pytest.raises(ArchiveError) as info:
            call(path)
        message = str(info.value)
        assert "'torchferry.archive/2'" in message and "newer torchferry" in message
        assert "pip install -U torchferry" in message
    report = torchferry.verify(path)
    assert not report.ok and "pip install -U torchferry" in report.problems[0]


def test_missing_manifest(archive: bytes, tmp_path: Path) -> None:
    path = _write(tmp_path, rebuild(archive, remove=[MANIFEST]))
    for call in (torchferry.load_model, torchferry.inspect):
        with pytest.raises(ArchiveError, match=r"without ferry\.json, so it is not a torchferry archive"):
            call(path)
    assert not torchferry.verify(path).ok


FieldPath = str | tuple[str, ...]


def _walk(document: dict[str, Any], path: FieldPath) -> tuple[Any, str | int]:
    """The container holding ``path`` (dotted, or a tuple when keys hold dots) and the last key."""
    *parents, last = path.split(".") if isinstance(path, str) else path
    target: Any = document
    for key in parents:
        target = target[int(key)] if isinstance(target, list) else target[key]
    return target, int(last) if isinstance(target, list) else last


def _set(path: FieldPath, value: Any) -> Callable[[dict[str, Any]], None]:
    def edit(document: dict[str, Any]) -> None:
        target, key = _walk(document, path)
        target[key] = value

    return edit


def _delete(path: FieldPath) -> Callable[[dict[str, Any]], None]:
    def edit(document: dict[str, Any]) -> None:
        target, key = _walk(document, path)
        del target[key]

    return edit


MANIFEST_EDITS: dict[str, tuple[Callable[[dict[str, Any]], None], str]] = {
    "format-missing": (_delete("format"), "format is missing"),
    "format-number": (_set("format", 1), "format should be a string"),
    "format-foreign": (_set("format", "mlflow/3"), "field format is 'mlflow/3'"),
    "name-missing": (_delete("name"), "name is missing"),
    "name-number": (_set("name", 5), "name should be a string, not int"),
    "name-bool": (_set("name", True), "name should be a string, not bool"),
    "version-bool": (_set("version", True), "version should be"),
    "version-list": (_set("version", [1]), "version should be"),
    "created-missing": (_delete("created"), "created is missing"),
    "program-list": (_set("program", []), "program should be an object"),
    "program-kind-unknown": (_set("program.kind", "pickle"), "program.kind is 'pickle'"),
    "program-kind-missing": (_delete("program.kind"), "program.kind is None"),
    "program-kind-list": (_set("program.kind", ["export"]), "program.kind"),
    "signature-string": (_set("signature", "x"), "signature should be an object"),
    "inputs-object": (_set("signature.inputs", {}), "signature.inputs should be a list"),
    "input-not-object": (_set("signature.inputs.0", "x"), "signature.inputs[0] should be an object"),
    "dtype-unknown": (_set("signature.inputs.0.dtype", "float128"), "dtype is 'float128'"),
    "dtype-object": (_set("signature.inputs.0.dtype", "object"), "dtype is 'object'"),
    "dtype-number": (_set("signature.inputs.0.dtype", 7), "dtype should be a string"),
    "shape-strings": (_set("signature.inputs.0.shape", ["4"]), "shape should list sizes"),
    "shape-negative": (_set("signature.inputs.0.shape", [-2, 4]), "shape should list sizes"),
    "shape-float": (_set("signature.inputs.0.shape", [1.5, 4]), "shape should list sizes"),
    "shape-bool": (_set("signature.inputs.0.shape", [True, 4]), "shape should list sizes"),
    "input-name-empty": (_set("signature.inputs.0.name", ""), "is empty or repeated"),
    "output-structure": (_set("signature.output_structure", "pickle"), "output_structure is 'pickle'"),
    "tensor-with-two-outputs": (
        lambda d: d["signature"]["outputs"].append(dict(d["signature"]["outputs"][0], name="second")),
        "exactly one output",
    ),
    "members-list": (_set("members", []), "members should be an object"),
    "member-size-negative": (_set(("members", WEIGHTS, "size"), -1), "negative size"),
    "member-size-string": (_set(("members", WEIGHTS, "size"), "668"), "size should be an integer"),
    "member-size-float": (_set(("members", WEIGHTS, "size"), 1.5), "size should be an integer"),
    "member-size-bool": (_set(("members", WEIGHTS, "size"), True), "size should be an integer"),
    "member-sha-short": (_set(("members", WEIGHTS, "sha256"), "abc"), "malformed hash"),
    "member-xxh-missing": (_delete(("members", WEIGHTS, "xxh3_64")), "xxh3_64 is missing"),
    "member-entry-string": (_set(("members", WEIGHTS), "x"), "should be an object"),
    "requirements-number": (_set("requirements.torch", 2), "requirements should map names"),
    "requirements-missing": (_delete("requirements"), "requirements is missing"),
    "labels-string": (_set("labels", "cat"), "labels should be a list"),
    "labels-numbers": (_set("labels", [1, 2]), "labels should be a list of strings"),
    "preprocess-op": (_set("preprocess", [{"op": 1}]), "preprocess[0]"),
    "preprocess-object": (_set("preprocess", {"op": "image"}), "preprocess should be a list"),
    "examples-list": (_set("examples", []), "examples should be an object"),
    "examples-rtol-string": (_set("examples.rtol", "abc"), "examples.rtol should be"),
    "examples-rtol-negative": (_set("examples.rtol", -1), "examples.rtol should be a tolerance"),
    "examples-atol-bool": (_set("examples.atol", True), "examples.atol should be"),
    "examples-inputs-number": (_set("examples.inputs", 5), "examples.inputs should be a string"),
    "metadata-list": (_set("metadata", [1]), "metadata should be an object"),
    "batching-string": (_set("batching", "yes"), "batching should be an object"),
}


@pytest.mark.parametrize("case", sorted(MANIFEST_EDITS))
def test_manifest_field_errors_name_the_field(archive: bytes, tmp_path: Path, case: str) -> None:
    edit, expected = MANIFEST_EDITS[case]
    path = _write(tmp_path, rebuild(archive, manifest=edit))
    for call in (torchferry.load_model, torchferry.inspect):
        with pytest.raises(ArchiveError) as info:
            call(path)
        assert expected in str(info.value)
        assert "ferry.json" in str(info.value) and "re-pack" in str(info.value)
        assert not isinstance(info.value, IntegrityError)
    report = torchferry.verify(path)
    assert not report.ok and report.manifest is None and expected in report.problems[0]


RAW_MANIFESTS: dict[str, tuple[Callable[[str], str], str]] = {
    "NaN": (lambda text: text.replace('"rtol": 0.0001', '"rtol": NaN'), "NaN is not allowed"),
    "Infinity": (lambda text: text.replace('"atol": 1e-05', '"atol": Infinity'), "Infinity is not allowed"),
    "-Infinity": (lambda text: text.replace('"atol": 1e-05', '"atol": -Infinity'), "-Infinity is not allowed"),
    "overflowing-float": (lambda text: text.replace('"rtol": 0.0001', '"rtol": 1e999'), "tolerance >= 0"),
    "duplicate-key": (lambda text: text.replace('"name": "tiny"', '"name": "tiny", "name": "evil"'), "appears twice"),
    "duplicate-member": (
        lambda text: text.replace('"members": {', f'"members": {{"{WEIGHTS}": {{}}, '),
        "appears twice",
    ),
    "not-an-object": (lambda text: f"[{text}]", "not a JSON object"),
    "trailing-garbage": (lambda text: text + "}", "not valid JSON"),
    "deeply-nested": (
        lambda text: text.replace('"metadata": {}', '"metadata": ' + "[" * 100_000 + "]" * 100_000),
        "JSON",
    ),
    "huge-int": (lambda text: text.replace('"batch_dim": 0', '"batch_dim": ' + "9" * 5000), "not valid JSON"),
}


@pytest.mark.parametrize("case", sorted(RAW_MANIFESTS))
def test_manifest_that_is_not_plain_json(archive: bytes, tmp_path: Path, case: str) -> None:
    change, expected = RAW_MANIFESTS[case]
    text = json.dumps(manifest_of(archive))
    changed = change(text)
    assert changed != text
    path = _write(tmp_path, rebuild(archive, manifest_bytes=changed.encode()))
    for call in (torchferry.load_model, torchferry.inspect):
        with pytest.raises(ArchiveError, match=r"ferry\.json") as info:
            call(path)
        assert expected in str(info.value)
    assert not torchferry.verify(path).ok


@pytest.mark.parametrize(
    "content", [b"\xff\xfe{}", "{}".encode("utf-16"), b"\x80abc"], ids=["latin1", "utf16", "continuation"]
)
def test_manifest_not_utf8(archive: bytes, tmp_path: Path, content: bytes) -> None:
    path = _write(tmp_path, rebuild(archive, manifest_bytes=content))
    with pytest.raises(ArchiveError, match="not valid JSON"):
        torchferry.inspect(path)


def test_oversized_manifest_is_refused_before_parsing(archive: bytes, tmp_path: Path) -> None:
    document = manifest_of(archive)
    document["metadata"] = {"padding": "x" * (17 << 20)}
    path = _write(tmp_path, rebuild(archive, manifest_bytes=json.dumps(document).encode()))
    with pytest.raises(ArchiveError, match="more than the 16777216 allowed"):
        torchferry.inspect(path)


PROGRAM_EDITS: dict[str, Callable[[dict[str, Any]], None]] = {
    "entry-number": _set("program.entry", 5),
    "entry-missing": _delete("program.entry"),
    "entry-absent-member": _set("program.entry", "program/other.json"),
    "entry-is-weights": _set("program.entry", WEIGHTS),
    "entry-is-manifest": _set("program.entry", MANIFEST),
    "entry-traversal": _set("program.entry", "../../etc/passwd"),
    "constants-number": _set("program.constants", 7),
    "constants-absent-member": _set("program.constants", "program/nope.safetensors"),
    "constants-is-graph": _set("program.constants", GRAPH),
    "constants-dropped": _set("program.constants", None),
}


@pytest.mark.parametrize("case", sorted(PROGRAM_EDITS))
def test_program_section_errors_surface_at_load(archive: bytes, tmp_path: Path, case: str) -> None:
    """The manifest parses (inspect works) but the program it describes cannot be built."""
    path = _write(tmp_path, rebuild(archive, manifest=PROGRAM_EDITS[case]))
    assert torchferry.inspect(path).kind == "export"
    for flags in LOAD_FLAGS:
        with pytest.raises(ArchiveError):
            torchferry.load_model(path, **flags)
    report = torchferry.verify(path)
    assert not report.ok and report.hashes_ok and report.problems


@pytest.mark.parametrize("edit", ["no-inputs", "two-inputs"])
def test_signature_that_disagrees_with_the_program_is_refused(archive: bytes, tmp_path: Path, edit: str) -> None:
    def change(document: dict[str, Any]) -> None:
        inputs = document["signature"]["inputs"]
        if edit == "no-inputs":
            inputs.clear()
        else:
            inputs.append(dict(inputs[0], name="y"))

    path = _write(tmp_path, rebuild(archive, manifest=change))
    with pytest.raises(ArchiveError, match="inputs"):
        torchferry.load_model(path)


@pytest.mark.parametrize("member", HASHED_MEMBERS)
def test_member_listed_but_missing(archive: bytes, tmp_path: Path, member: str) -> None:
    path = _write(tmp_path, rebuild(archive, remove=[member], rehash=False))
    for flags in LOAD_FLAGS:
        with pytest.raises(IntegrityError, match="listed in the manifest but missing") as info:
            torchferry.load_model(path, **flags)
        assert info.value.member == member
    with pytest.raises(IntegrityError):
        torchferry.inspect(path)
    report = torchferry.verify(path)
    assert not report.ok and member in report.problems[0]


@pytest.mark.parametrize("name", ["extra.bin", "program/extra.json", "examples/more.safetensors", "FERRY.JSON"])
def test_extra_member_not_listed(archive: bytes, tmp_path: Path, name: str) -> None:
    path = _write(tmp_path, rebuild(archive, add={name: b"{}"}, rehash=False))
    for flags in LOAD_FLAGS:
        with pytest.raises(IntegrityError, match="not listed in the manifest") as info:
            torchferry.load_model(path, **flags)
        assert info.value.member == name
    assert not torchferry.verify(path).ok


# ----------------------------------------------------------------------------- interrupted writes


class _InterruptError(Exception):
    """Raised from the progress callback to stop pack() part-way through writing."""


def _stop_at(call: int, exc: BaseException) -> Callable[[int], None]:
    seen: list[int] = []

    def progress(nbytes: int) -> None:
        seen.append(nbytes)
        if len(seen) == call:
            raise exc

    return progress


class _DataDependent(torch.nn.Module):
    """Branches on a tensor's value: torch.export cannot capture it."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = torch.nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y: torch.Tensor = self.fc(x)
        return y if float(y.sum()) > 0 else -y


class _Broken(TinyNet):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        raise ValueError("forward is broken")


@pytest.fixture
def previous(archive: bytes, tmp_path: Path) -> Iterator[Path]:
    """An existing archive that a failing pack tries to overwrite; checked unchanged afterwards."""
    path = _write(tmp_path, archive, "model.ferry")
    yield path
    assert path.read_bytes() == archive, "the previous archive was modified"
    assert sorted(os.listdir(tmp_path)) == ["model.ferry"], "a temporary file was left behind"
    assert torchferry.verify(path).ok


def _pack(model: torch.nn.Module, path: Path, **kwargs: Any) -> None:
    torchferry.pack(model, path, example_inputs=torch.randn(2, 4), fsync=False, **kwargs)


@pytest.mark.parametrize("at", ["first", "last"])
@pytest.mark.parametrize("exc", [_InterruptError("stop"), KeyboardInterrupt()], ids=["exception", "KeyboardInterrupt"])
def test_pack_interrupted_while_writing_keeps_the_previous_archive(
    packed: tuple[bytes, int], previous: Path, at: str, exc: BaseException
) -> None:
    calls = packed[1]
    assert calls >= 4  # one call per tensor at least: "first" and "last" are different moments
    with pytest.raises(type(exc)):
        _pack(TinyNet(), previous, progress=_stop_at(1 if at == "first" else calls, exc))


def test_pack_whose_export_fails_keeps_the_previous_archive(previous: Path) -> None:
    with pytest.raises(FerryError, match=r"torch\.export could not export"):
        _pack(_DataDependent(), previous, mode="export")


def test_pack_whose_forward_fails_keeps_the_previous_archive(previous: Path) -> None:
    with pytest.raises(ValueError, match="forward is broken"):
        _pack(_Broken(), previous)


def test_failed_pack_to_a_new_path_leaves_nothing(tmp_path: Path) -> None:
    target = tmp_path / "new.ferry"
    with pytest.raises(_InterruptError):
        _pack(TinyNet(), target, progress=_stop_at(2, _InterruptError("stop")))
    assert os.listdir(tmp_path) == []
