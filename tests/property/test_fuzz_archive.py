"""Fuzzing ``.ferry`` archives: damaged archives may load or fail, but only with a FerryError.

A small valid archive is mutated (bytes flipped anywhere or in one region, bytes flipped
in one member that is then re-hashed so the damage reaches the parsers behind the
integrity check, truncation, JSON-level edits of ``ferry.json`` and of the graph) and fed to
``load_model`` (with and without the integrity check) and ``inspect``; ``verify`` must never
raise at all. Any other exception (``KeyError``, ``struct.error``, ``RuntimeError``,
``NotImplementedError`` from zipfile ...) fails the test.

``verify`` is not run on re-hashed graph edits: a graph that compiles but fails when run
makes it raise (see ``test_verify_reports_a_graph_that_fails_when_run`` in
``tests/security/test_archive_attacks.py``).
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import torchferry
from tests.archive_helpers import (
    CONSTANTS,
    EXAMPLE_INPUTS,
    EXAMPLE_OUTPUTS,
    GRAPH,
    MANIFEST,
    WEIGHTS,
    central_directory_start,
    graph_of,
    manifest_of,
    member_span,
    pack_tiny,
    read_members,
    rebuild,
)
from torchferry.errors import FerryError
from torchferry.runtime.packaged import Packaged

pytestmark = [pytest.mark.property]

FUZZ = settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

MEMBERS = (WEIGHTS, GRAPH, CONSTANTS, EXAMPLE_INPUTS, EXAMPLE_OUTPUTS, MANIFEST)


class Sample:
    """The valid archive, where its regions are, and one path every example overwrites."""

    def __init__(self, data: bytes, regions: dict[str, tuple[int, int]], path: Path) -> None:
        self.data, self.regions, self.path = data, regions, path

    def __repr__(self) -> str:  # hypothesis prints it with every failure: keep the bytes out
        return f"<Sample {len(self.data)} bytes at {self.path}>"


@pytest.fixture(scope="module")
def sample(tmp_path_factory: pytest.TempPathFactory) -> Sample:
    directory = tmp_path_factory.mktemp("fuzz_archive")
    data = pack_tiny(directory)
    regions = {name: member_span(data, name) for name in MEMBERS}
    start = central_directory_start(data)
    regions["central directory"] = (start, len(data) - start)
    regions["whole file"] = (0, len(data))
    return Sample(data, regions, directory / "fuzzed.ferry")


def _survives(path: Path, *, run_verify: bool = True) -> None:
    """Every reader returns normally or raises a FerryError; verify never raises."""
    for flags in ({}, {"check_integrity": False}):
        try:
            model = torchferry.load_model(path, **flags)
        except FerryError:
            pass
        else:
            assert isinstance(model, Packaged)
    with contextlib.suppress(FerryError):
        torchferry.inspect(path)
    if run_verify:
        report = torchferry.verify(path)
        assert isinstance(report.ok, bool)
        if not report.ok:
            assert report.problems or not report.outputs or not all(o.ok for o in report.outputs)


def _flip(data: bytes, flips: list[tuple[int, int]], start: int, size: int) -> bytes:
    damaged = bytearray(data)
    for position, mask in flips:
        damaged[start + position % size] ^= mask
    return bytes(damaged)


FLIPS = st.lists(st.tuples(st.integers(0, 2**20), st.integers(1, 255)), min_size=1, max_size=6)


@FUZZ
@given(region=st.sampled_from(["whole file", "central directory", *MEMBERS]), flips=FLIPS)
def test_byte_flips_in_place(sample: Sample, region: str, flips: list[tuple[int, int]]) -> None:
    start, size = sample.regions[region]
    sample.path.write_bytes(_flip(sample.data, flips, start, size))
    _survives(sample.path)


@FUZZ
@given(member=st.sampled_from([WEIGHTS, CONSTANTS, EXAMPLE_INPUTS, EXAMPLE_OUTPUTS, GRAPH]), flips=FLIPS)
def test_byte_flips_in_a_rehashed_member(sample: Sample, member: str, flips: list[tuple[int, int]]) -> None:
    """The manifest records the damaged member's digests, so the parsers behind the hash check see it."""
    body = read_members(sample.data)[member]
    sample.path.write_bytes(rebuild(sample.data, replace={member: _flip(body, flips, 0, len(body))}))
    _survives(sample.path, run_verify=member != GRAPH)


@FUZZ
@given(cut=st.integers(0, 2**20), member=st.sampled_from([None, *MEMBERS]))
def test_truncation(sample: Sample, cut: int, member: str | None) -> None:
    """The file cut short, or (``member``) one member cut short inside an otherwise intact zip."""
    if member is None:
        sample.path.write_bytes(sample.data[: cut % len(sample.data)])
        for call in (torchferry.load_model, torchferry.inspect):
            with pytest.raises(FerryError):
                call(sample.path)
        assert not torchferry.verify(sample.path).ok
        return
    body = read_members(sample.data)[member]
    sample.path.write_bytes(rebuild(sample.data, replace={member: body[: cut % len(body)]}))
    _survives(sample.path, run_verify=member != GRAPH)


# ----------------------------------------------------------------------------- JSON edits

_WORDS = [
    "", "export", "python", "tensor", "tuple", "list", "dict", "float32", "int64", "bool", "x", "output",
    "torchferry.archive/1", "torchferry.archive/2", "../evil", "/abs", "\x00", *MEMBERS, "program/other.json",
    "torch.ops.aten.relu.default", "torch.ops.aten.from_file.default", "builtins.exec", "as_tensor", "as_int",
    "as_expr", "as_name", "as_device", "parameter", "user_input", "0" * 64, "0" * 16,
]  # fmt: skip
_LEAVES = (
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.sampled_from([0, 1, -1, 2, 3, 4, 7, 28, 99, 2**31, 2**63])
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.sampled_from(_WORDS)
    | st.text(max_size=8)
)
JSON_VALUES = st.recursive(
    _LEAVES,
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.sampled_from(_WORDS) | st.text(max_size=6), inner, max_size=3)
    ),
    max_leaves=6,
)


def _paths(value: Any, prefix: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    yield prefix
    if isinstance(value, dict):
        for key, item in value.items():
            yield from _paths(item, (*prefix, key))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from _paths(item, (*prefix, index))


@dataclass(frozen=True)
class Edit:
    """Replace the value at ``path``, delete it, or add ``key`` beside it; shown readably by hypothesis."""

    action: str
    path: tuple[Any, ...]
    value: Any = None
    key: str = ""


def _apply(document: Any, edit: Edit) -> Any:
    if not edit.path:
        return edit.value if edit.action == "replace" else document
    *parents, last = edit.path
    target = document
    for key in parents:
        target = target[key]
    if edit.action == "replace":
        target[last] = edit.value
    elif edit.action == "delete":
        del target[last]
    elif isinstance(target, dict):
        target[edit.key] = edit.value
    else:
        target.insert(last, edit.value)
    return document


@st.composite
def edits(draw: st.DrawFn, document: Any) -> list[Edit]:
    paths = list(_paths(document))
    result = []
    for _ in range(draw(st.integers(1, 3))):
        path = draw(st.sampled_from(paths))
        action = draw(st.sampled_from(["replace", "replace", "delete", "add"]) if path else st.just("replace"))
        key = draw(st.sampled_from(_WORDS) | st.text(max_size=6)) if action == "add" else ""
        value = None if action == "delete" else draw(JSON_VALUES)
        result.append(Edit(action, path, value, key))
    return result


def _edited(document: Any, chosen: list[Edit]) -> bytes:
    for edit in chosen:
        try:
            document = _apply(document, edit)
        except (KeyError, IndexError, TypeError, AttributeError):
            continue  # an earlier edit removed or replaced this path
    return json.dumps(document).encode()


@FUZZ
@given(data=st.data())
def test_manifest_json_edits(sample: Sample, data: st.DataObject) -> None:
    manifest = manifest_of(sample.data)
    chosen = data.draw(edits(manifest), label="edits")
    sample.path.write_bytes(rebuild(sample.data, manifest_bytes=_edited(manifest, chosen)))
    _survives(sample.path)


@FUZZ
@given(data=st.data())
def test_graph_json_edits_reach_the_interpreter(sample: Sample, data: st.DataObject) -> None:
    graph = graph_of(sample.data)
    chosen = data.draw(edits(graph), label="edits")
    sample.path.write_bytes(rebuild(sample.data, replace={GRAPH: _edited(graph, chosen)}))
    _survives(sample.path, run_verify=False)
