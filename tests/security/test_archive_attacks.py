"""Hostile ``.ferry`` archives: nothing in an archive may run code, escape the archive or leak paths.

Every attack here is built from a real packed archive (``tests/archive_helpers.py``) and
handed to every entry point that reads archives (``load_model`` with every combination of
flags, ``inspect``, ``verify``). The rules under test:

- no pickle in any member is ever unpickled (a marker file proves it: each payload creates
  one when unpickled, and a positive control shows the payloads do fire through
  ``torch.load``/``torch.export.load``);
- the graph interpreter resolves only ATen/prims operators and never evaluates the
  symbolic expressions torch's serializer stores as Python source;
- code in a ``mode="python"`` archive is refused before it is read unless ``trust_code=True``;
- the container refuses compressed members (zip bombs), overlapping members, unsafe
  names and links before reading any member, and nothing is ever extracted to disk;
- a packed archive holds no absolute path of the packing machine.

Tampered members are re-hashed in the manifest where the test needs the tampering to get
past the integrity check; hashes are not signatures, so an attacker can do the same.
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import json
import os
import pickle
import re
import site
import stat
import sys
import time
import tracemalloc
import uuid
import warnings
import zipfile
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
    ExecMarker,
    MkdirMarker,
    OpenMarker,
    RawEntry,
    deflate_bomb,
    files_under,
    graph_of,
    local_record,
    pack_tiny,
    raw_zip,
    read_members,
    rebuild,
    with_graph,
)
from tests.archive_helpers import outcome as _outcome
from torchferry.errors import ArchiveError, IntegrityError, UntrustedCodeError

pytestmark = [pytest.mark.security]

ALL_MEMBERS = (WEIGHTS, GRAPH, CONSTANTS, EXAMPLE_INPUTS, EXAMPLE_OUTPUTS, MANIFEST)
READ_BY_LOAD = {WEIGHTS, GRAPH, CONSTANTS, MANIFEST}
"""Members ``load_model`` reads; the example members are read only by ``verify``."""

LOAD_FLAGS: list[dict[str, Any]] = [
    {},
    {"check_integrity": False},
    {"trust_code": True},
    {"trust_code": True, "check_integrity": False},
]


@pytest.fixture(scope="module")
def archive(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    return pack_tiny(tmp_path_factory.mktemp("attacks"))


@pytest.fixture
def marker(tmp_path: Path) -> Iterator[Path]:
    path = tmp_path / "PWNED"
    yield path
    assert not path.exists(), "a payload ran"


def _write(tmp_path: Path, data: bytes, name: str = "hostile.ferry") -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


# ----------------------------------------------------------------------------- pickles in members


def _raw_pickle(payload: object) -> bytes:
    return pickle.dumps(payload, protocol=2)


def _torch_save(payload: object) -> bytes:
    buffer = io.BytesIO()
    torch.save({"weight": torch.zeros(2), "hook": payload}, buffer)
    return buffer.getvalue()


def _torch_save_legacy(payload: object) -> bytes:
    buffer = io.BytesIO()
    torch.save({"hook": payload}, buffer, _use_new_zipfile_serialization=False)
    return buffer.getvalue()


PICKLE_FORMS: dict[str, Callable[[object], bytes]] = {
    "raw-pickle": _raw_pickle,
    "torch.save": _torch_save,
    "torch.save-legacy": _torch_save_legacy,
}
PAYLOADS: dict[str, Callable[[Path], object]] = {"open": OpenMarker, "exec": ExecMarker, "mkdir": MkdirMarker}


@pytest.mark.parametrize("form", sorted(PICKLE_FORMS))
@pytest.mark.parametrize("payload", sorted(PAYLOADS))
def test_positive_control_payloads_fire_through_pickle(form: str, payload: str, marker: Path) -> None:
    """Without this, a payload that never fires would make every refusal test pass vacuously."""
    data = PICKLE_FORMS[form](PAYLOADS[payload](marker))
    if form == "raw-pickle":
        result = pickle.loads(data)
    else:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            result = torch.load(io.BytesIO(data), weights_only=False)
    for value in result.values() if isinstance(result, dict) else [result]:
        if hasattr(value, "close"):
            value.close()  # the open() payload returns the file it opened
    assert marker.exists()
    if marker.is_dir():
        marker.rmdir()
    else:
        marker.unlink()


@pytest.mark.parametrize("rehash", [True, False], ids=["rehashed", "stale-hash"])
@pytest.mark.parametrize("form", sorted(PICKLE_FORMS))
@pytest.mark.parametrize("member", ALL_MEMBERS)
def test_pickle_in_any_member_is_never_unpickled(
    archive: bytes, tmp_path: Path, marker: Path, member: str, form: str, rehash: bool
) -> None:
    path = _write(tmp_path, rebuild(archive, replace={member: PICKLE_FORMS[form](OpenMarker(marker))}, rehash=rehash))
    for flags in LOAD_FLAGS:
        error = _outcome(torchferry.load_model, path, **flags)
        assert not marker.exists(), f"load_model({flags}) ran the payload"
        if member == MANIFEST:
            assert isinstance(error, ArchiveError) and "ferry.json" in str(error)
        elif not rehash and flags.get("check_integrity", True):
            assert isinstance(error, IntegrityError) and error.member == member
        elif member in READ_BY_LOAD:
            assert isinstance(error, ArchiveError) and repr(member) in str(error)
        else:
            assert error is None  # the examples are read by verify only
    error = _outcome(torchferry.inspect, path)  # inspect reads the manifest only
    assert isinstance(error, ArchiveError) if member == MANIFEST else error is None
    for trust in (False, True):
        report = torchferry.verify(path, trust_code=trust)
        assert not report.ok and report.problems, str(report)
        if member != MANIFEST and not rehash:
            assert repr(member) in report.problems[0] and "the manifest says" in report.problems[0]
    assert not marker.exists()


@pytest.mark.parametrize("hostile_env", [False, True], ids=["default-env", "TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD"])
@pytest.mark.parametrize("name", ["data.pkl", "program/model.pkl", "weights.pt"])
def test_extra_pickle_member_is_never_unpickled(
    archive: bytes, tmp_path: Path, marker: Path, monkeypatch: pytest.MonkeyPatch, name: str, hostile_env: bool
) -> None:
    """An added member is refused unless the manifest lists it; listed, it is inert (nothing reads it)."""
    if hostile_env:
        monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")
    payload = _torch_save(ExecMarker(marker))
    unlisted = _write(tmp_path, rebuild(archive, add={name: payload}, rehash=False), "unlisted.ferry")
    for flags in LOAD_FLAGS:
        with pytest.raises(IntegrityError) as info:
            torchferry.load_model(unlisted, **flags)
        assert info.value.member == name
        assert "not listed in the manifest" in str(info.value)
    with pytest.raises(IntegrityError):
        torchferry.inspect(unlisted)
    assert not torchferry.verify(unlisted).ok
    listed = _write(tmp_path, rebuild(archive, add={name: payload}, rehash=True), "listed.ferry")
    for flags in LOAD_FLAGS:
        model = torchferry.load_model(listed, **flags)
        assert model(torch.randn(3, 4)).shape == (3, 3)
    assert torchferry.verify(listed, trust_code=True).hashes_ok


def _zip_of(members: dict[str, bytes]) -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as archive:
        for name, body in members.items():
            archive.writestr(name, body)
    return out.getvalue()


def test_torch_export_pt2_renamed_to_ferry_is_refused_and_its_pickle_never_runs(
    archive: bytes, tmp_path: Path, marker: Path
) -> None:
    """A real ``torch.export.save`` file whose sample inputs are a payload (torch.export.load runs it)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        program = torch.export.export(torch.nn.Linear(4, 2), (torch.randn(2, 4),))
        torch.export.save(program, tmp_path / "model.pt2")
    members = read_members((tmp_path / "model.pt2").read_bytes())
    (sample,) = [name for name in members if name.endswith("sample_inputs/model.pt")]
    members[sample] = _torch_save(ExecMarker(marker))
    pt2 = _write(tmp_path, _zip_of(members), "model.ferry")
    for flags in LOAD_FLAGS:
        with pytest.raises(ArchiveError, match=r"without ferry\.json"):
            torchferry.load_model(pt2, **flags)
    with pytest.raises(ArchiveError, match=r"without ferry\.json"):
        torchferry.inspect(pt2)
    assert not torchferry.verify(pt2, trust_code=True).ok
    # the same pt2 with a genuine ferry.json added: its own members are unlisted, so it is refused all the same
    polyglot = _write(tmp_path, _zip_of({**members, MANIFEST: read_members(archive)[MANIFEST]}), "polyglot.ferry")
    for flags in LOAD_FLAGS:
        with pytest.raises(IntegrityError):
            torchferry.load_model(polyglot, **flags)
    assert not torchferry.verify(polyglot, trust_code=True).ok
    assert not marker.exists()
    # positive control: torch's own loader runs the payload in the very same file (its weights_only=True
    # attempt fails, it falls back to weights_only=False); whether it then returns or raises does not matter
    with warnings.catch_warnings(), contextlib.suppress(Exception):
        warnings.simplefilter("ignore")
        torch.export.load(pt2)
    assert marker.exists()
    marker.unlink()


# ----------------------------------------------------------------------------- python-mode archives


def _python_archive(archive: bytes, marker: Path, interned: Any) -> bytes:
    source = f"open({str(marker)!r}, 'w').close()\n".encode()

    def as_python(document: dict[str, Any]) -> None:
        document["program"] = {
            "kind": "python",
            "format": 1,
            "entry": "program/model.json",
            "interned": interned,
            "externed": ["torch"],
        }

    return rebuild(
        archive,
        add={
            "program/code/evil/__init__.py": source,
            "program/model.json": b'{"module": "evil", "class": "Net"}',
            "program/code/evil.pkl": _raw_pickle(OpenMarker(marker)),
        },
        manifest=as_python,
    )


@pytest.mark.parametrize(
    "interned",
    [["evil"], {"evil": "program/code/evil/__init__.py"}, 5, None],
    ids=["as-capture-writes", "dict", "number", "null"],
)
def test_python_archive_code_never_runs_without_trust_code(
    archive: bytes, tmp_path: Path, marker: Path, interned: Any
) -> None:
    path = _write(tmp_path, _python_archive(archive, marker, interned))
    for flags in ({}, {"check_integrity": False}, {"trust_code": False}, {"device": "cpu"}):
        with pytest.raises(UntrustedCodeError, match="trust_code=True") as info:
            torchferry.load_model(path, **flags)
        assert "carries Python code" in str(info.value)
        if isinstance(interned, list):
            assert "(evil)" in str(info.value)
        assert not marker.exists()
    assert torchferry.inspect(path).carries_code
    report = torchferry.verify(path)
    assert not report.ok and report.hashes_ok
    assert any("trust_code=True" in p for p in report.problems)
    assert not marker.exists()


_SIDE_EFFECT_MODULE = """
import torch

open({marker!r}, "a").close()  # runs whenever this module is imported


class Net(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = torch.nn.Linear(4, 3)

    def forward(self, x):
        return self.fc(x)
"""


@pytest.fixture
def packed_python(tmp_path: Path, marker: Path) -> Iterator[Path]:
    """A real mode='python' archive whose captured module creates ``marker`` when imported."""
    pytest.importorskip("torchferry.runtime.python_program", reason="mode='python' is not implemented yet")
    module = _import_source(tmp_path, _SIDE_EFFECT_MODULE.format(marker=str(marker)))
    try:
        torch.manual_seed(0)
        torchferry.pack(module.Net(), tmp_path / "py.ferry", example_inputs=torch.randn(2, 4), mode="python")
    finally:
        sys.modules.pop(module.__name__, None)
    assert marker.exists()  # importing the module here, to pack it, ran the side effect
    marker.unlink()
    (tmp_path / "src" / f"{module.__name__}.py").unlink()  # the loader can only use the archive's copy
    yield tmp_path / "py.ferry"


def test_real_python_archive_runs_its_code_only_with_trust_code(packed_python: Path, marker: Path) -> None:
    assert torchferry.inspect(packed_python).carries_code
    for flags in ({}, {"check_integrity": False}, {"device": "cpu"}):
        with pytest.raises(UntrustedCodeError):
            torchferry.load_model(packed_python, **flags)
    report = torchferry.verify(packed_python)
    assert not report.ok and report.hashes_ok
    assert not marker.exists()
    # positive control: with trust the archive's own code runs (so the refusals above were not vacuous)
    model = torchferry.load_model(packed_python, trust_code=True)
    assert marker.exists()
    assert model(torch.randn(5, 4)).shape == (5, 3)
    marker.unlink()
    assert torchferry.verify(packed_python, trust_code=True).ok
    marker.unlink()


@pytest.mark.parametrize("member", ["program/model.json", WEIGHTS])
def test_real_python_archive_never_unpickles_even_with_trust_code(
    packed_python: Path, tmp_path: Path, member: str
) -> None:
    """trust_code=True trusts the captured source, not pickles: the module tree is JSON."""
    pickled = tmp_path / "PICKLED"
    payload = _torch_save(ExecMarker(pickled))
    path = _write(tmp_path, rebuild(packed_python.read_bytes(), replace={member: payload}))
    with pytest.raises(ArchiveError):
        torchferry.load_model(path, trust_code=True)
    assert not torchferry.verify(path, trust_code=True).ok
    assert not pickled.exists()
    if (tmp_path / "PWNED").exists():
        (tmp_path / "PWNED").unlink()  # the module's own side effect may have run: it is trusted code


def test_python_archive_refused_before_integrity_is_checked(archive: bytes, tmp_path: Path, marker: Path) -> None:
    """Trust is decided on the manifest alone: a python archive with damaged code still says 'untrusted'."""
    data = _python_archive(archive, marker, ["evil"])
    damaged = rebuild(data, replace={"program/code/evil/__init__.py": b"import os; os.system('true')\n"}, rehash=False)
    with pytest.raises(UntrustedCodeError):
        torchferry.load_model(_write(tmp_path, damaged))
    assert not marker.exists()


# ----------------------------------------------------------------------------- the graph interpreter


def _nodes(graph: dict[str, Any]) -> list[dict[str, Any]]:
    nodes: list[dict[str, Any]] = graph["graph_module"]["graph"]["nodes"]
    return nodes


HOSTILE_TARGETS = [
    "builtins.exec",
    "builtins.eval",
    "builtins.__import__",
    "os.system",
    "posix.system",
    "subprocess.Popen",
    "torch.load",
    "torch.save",
    "torch.ops.load_library",
    "torch.ops.aten.from_file.default",
    "torch.ops.aten.from_file",
    "torch.ops.aten.linear.default.__reduce__",
    "torch.ops.aten.__class__.__init__",
    "torch.ops.aten.linear.__call__",
    "torch.ops.evil.system.default",
    "torch.ops.aten.no_such_op.default",
    "_operator.getitem",
    "_operator.attrgetter",
    "math.__loader__",
    "torch._C._jit_set_profiling_executor",
    "",
]


@pytest.mark.parametrize("target", HOSTILE_TARGETS)
def test_node_target_outside_aten_and_prims_is_refused(
    archive: bytes, tmp_path: Path, marker: Path, target: str
) -> None:
    graph = graph_of(archive)
    _nodes(graph)[0]["target"] = target
    path = _write(tmp_path, with_graph(archive, graph))
    for flags in LOAD_FLAGS:
        with pytest.raises(ArchiveError, match="cannot run here") as info:
            torchferry.load_model(path, **flags)
        assert repr(target) in str(info.value) or "malformed" in str(info.value)
    report = torchferry.verify(path)
    assert not report.ok and report.hashes_ok


def test_file_reading_operator_is_refused_with_reason(archive: bytes, tmp_path: Path) -> None:
    graph = graph_of(archive)
    _nodes(graph)[0]["target"] = "torch.ops.aten.from_file.default"
    with pytest.raises(ArchiveError, match="reads or writes files"):
        torchferry.load_model(_write(tmp_path, with_graph(archive, graph)))


@pytest.mark.parametrize(
    "target",
    [
        "torch.ops.aten._reshape_alias.default",  # a view with no storage bounds check: reads past the tensor
        "torch.ops.aten.set_.source_Storage",
        "torch.ops.aten.relu_.default",
        "torch.ops.aten.add.out",
        "torch.ops.aten._cudnn_rnn.default",
    ],
)
def test_memory_aliasing_and_internal_operators_are_refused(archive: bytes, tmp_path: Path, target: str) -> None:
    graph = graph_of(archive)
    _nodes(graph)[0]["target"] = target
    with pytest.raises(ArchiveError, match="not allowed in archives"):
        torchferry.load_model(_write(tmp_path, with_graph(archive, graph)))


@pytest.mark.parametrize("target", [5, None, ["torch.ops.aten.relu.default"], {"torch": "ops"}, True])
def test_non_string_node_target_is_refused(archive: bytes, tmp_path: Path, target: Any) -> None:
    graph = graph_of(archive)
    _nodes(graph)[0]["target"] = target
    with pytest.raises(ArchiveError, match="malformed"):
        torchferry.load_model(_write(tmp_path, with_graph(archive, graph)))


def _code(marker: Path) -> str:
    return f"__import__('os').system('touch {marker}')"


def _sym_expr_everywhere(value: Any, expression: str) -> Any:
    """Replace every ``expr_str`` (symbolic shapes stored as Python source) with ``expression``."""
    if isinstance(value, dict):
        return {k: expression if k == "expr_str" else _sym_expr_everywhere(v, expression) for k, v in value.items()}
    if isinstance(value, list):
        return [_sym_expr_everywhere(v, expression) for v in value]
    return value


def test_symbolic_expressions_in_metadata_are_never_evaluated(archive: bytes, tmp_path: Path, marker: Path) -> None:
    """torch's deserializer would ``sympify`` these strings (an eval); our interpreter never reads them."""
    graph = graph_of(archive)
    assert "expr_str" in json.dumps(graph)  # the batch dimension is symbolic: the field is really there
    hostile = _sym_expr_everywhere(graph, _code(marker))
    hostile["range_constraints"] = {_code(marker): {"min_val": 1, "max_val": 4}}
    hostile["guards_code"] = [_code(marker)]
    path = _write(tmp_path, with_graph(archive, hostile))
    for flags in LOAD_FLAGS:
        model = torchferry.load_model(path, **flags)
        assert model(torch.randn(5, 4)).shape == (5, 3)
    report = torchferry.verify(path)
    assert report.ok, str(report)
    assert not marker.exists()


@pytest.mark.parametrize(
    "arg",
    [
        {"as_sym_int": {"as_expr": {"expr_str": "EXPR", "hint": {"as_int": 2}}}},
        {"as_sym_int": {"as_expr": "EXPR"}},
        {"as_sym_float": {"as_expr": {"expr_str": "EXPR"}}},
        {"as_sym_bool": {"as_expr": {"expr_str": "EXPR"}}},
        {"as_sym_ints": [{"as_expr": {"expr_str": "EXPR"}}]},
        {"as_sym_int": {"as_string": "EXPR"}},
        {"as_graph": {"graph": {"nodes": [], "inputs": [], "outputs": []}, "name": "EXPR"}},
        {"as_custom_obj": {"name": "obj", "class_fqn": "EXPR"}},
        {"as_operator": "builtins.exec"},
        {"as_string_to_argument": {"x": {"as_string": "EXPR"}}},
    ],
    ids=lambda arg: json.dumps(arg)[:48],
)
def test_expression_in_an_argument_is_refused_not_evaluated(
    archive: bytes, tmp_path: Path, marker: Path, arg: dict[str, Any]
) -> None:
    graph = graph_of(archive)
    argument = json.loads(json.dumps(arg).replace("EXPR", _code(marker)))
    _nodes(graph)[0]["inputs"].append({"name": "extra", "arg": argument, "kind": 2})
    path = _write(tmp_path, with_graph(archive, graph))
    for flags in LOAD_FLAGS:
        with pytest.raises(ArchiveError, match="cannot run here"):
            torchferry.load_model(path, **flags)
    assert not torchferry.verify(path).ok
    assert not marker.exists()


def _signature(graph: dict[str, Any]) -> dict[str, Any]:
    signature: dict[str, Any] = graph["graph_module"]["signature"]
    return signature


def _parameter_named(graph: dict[str, Any], name: str) -> None:
    spec = next(s for s in _signature(graph)["input_specs"] if "parameter" in s)
    spec["parameter"]["parameter_name"] = name


GRAPH_EDITS: dict[str, Callable[[dict[str, Any]], Any]] = {
    "device-type": lambda g: _nodes(g)[0]["inputs"].append(
        {"name": "device", "arg": {"as_device": {"type": "evil", "index": None}}, "kind": 2}
    ),
    "graph-is-a-list": lambda g: [g],
    "missing-signature": lambda g: g["graph_module"].pop("signature"),
    "input-spec-custom-obj": lambda g: _signature(g)["input_specs"].append(
        {"custom_obj": {"arg": {"name": "obj"}, "custom_obj_name": "x"}}
    ),
    "input-spec-token": lambda g: _signature(g)["input_specs"].insert(0, {"token": {"arg": {"name": "tok"}}}),
    "output-spec-user-input-mutation": lambda g: _signature(g)["output_specs"].append(
        {"user_input_mutation": {"arg": {"name": "x"}, "user_input_name": "x"}}
    ),
    "unknown-parameter": lambda g: _parameter_named(g, "../../etc/passwd"),
    "parameter-is-another-tensor": lambda g: _parameter_named(g, "bn.running_mean"),
    "scalar-type-out-of-range": lambda g: _nodes(g)[0]["inputs"].append(
        {"name": "dtype", "arg": {"as_scalar_type": 99}, "kind": 2}
    ),
    "argument-with-two-kinds": lambda g: _nodes(g)[0]["inputs"][0].update(
        arg={"as_tensor": {"name": "x"}, "as_int": 1}
    ),
    "output-kind": lambda g: _nodes(g)[0].update(outputs=[{"as_custom_obj": {"name": "o"}}]),
    "nodes-not-a-list": lambda g: g["graph_module"]["graph"].update(nodes={"a": 1}),
}


@pytest.mark.parametrize("edit", sorted(GRAPH_EDITS))
def test_malformed_graph_is_an_archive_error(archive: bytes, tmp_path: Path, edit: str) -> None:
    graph = graph_of(archive)
    replaced = GRAPH_EDITS[edit](graph)
    hostile = replaced if isinstance(replaced, list) else graph
    path = _write(tmp_path, with_graph(archive, hostile))
    for flags in LOAD_FLAGS:
        with pytest.raises(ArchiveError, match="cannot run here"):
            torchferry.load_model(path, **flags)
    report = torchferry.verify(path)
    assert not report.ok and report.problems


@pytest.mark.parametrize(
    ("name", "replacement"),
    [
        ("fc.weight", torch.zeros(3, 4, dtype=torch.int32)),
        ("fc.weight", torch.zeros(4, 3)),
        ("fc.bias", torch.zeros(3, 1)),
        ("bn.num_batches_tracked", torch.zeros(())),
    ],
    ids=["dtype", "transposed", "rank", "int-to-float"],
)
def test_weights_that_do_not_fit_the_graph_are_refused_at_load(
    archive: bytes, tmp_path: Path, name: str, replacement: torch.Tensor
) -> None:
    """Re-hashed weights of the wrong dtype or shape: refused when loading, not at the first call."""
    buffer = tmp_path / "w.safetensors"
    buffer.write_bytes(read_members(archive)[WEIGHTS])
    state = torchferry.load(buffer)
    assert name in state
    state[name] = replacement
    torchferry.save(state, buffer)
    path = _write(tmp_path, rebuild(archive, replace={WEIGHTS: buffer.read_bytes()}))
    with pytest.raises(ArchiveError, match=f"tensor '{re.escape(name)}' is .* but the graph expects"):
        torchferry.load_model(path)
    report = torchferry.verify(path)
    assert not report.ok and report.hashes_ok


def test_dtype_codes_are_read_as_torch_writes_them() -> None:
    """The interpreter's table of serialized dtype codes matches torch's serializer (uint16 is 28, not 14)."""
    from torchferry.runtime.graph import _SCALAR_TYPES

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from torch._export.serde import serialize

    written = {int(code): dtype for dtype, code in serialize._TORCH_TO_SERIALIZE_DTYPE.items() if int(code)}
    assert written == _SCALAR_TYPES


@pytest.mark.parametrize("depth", [100, 480, 495, 2000])
def test_deeply_nested_graph_arguments_fail_cleanly(archive: bytes, tmp_path: Path, depth: int) -> None:
    """Nesting deep enough to exhaust the stack in the JSON decoder or the compiler: an ArchiveError
    (or, while the stack suffices, a program that compiles; calling it is not part of loading)."""
    graph = graph_of(archive)
    _nodes(graph)[0]["inputs"][0]["arg"] = "HOLE"
    nested = '{"as_optional_tensors": [' * depth + '{"as_tensor": {"name": "x"}}' + "]}" * depth
    path = _write(tmp_path, rebuild(archive, replace={GRAPH: json.dumps(graph).replace('"HOLE"', nested).encode()}))
    error = _outcome(torchferry.load_model, path)
    assert error is None or isinstance(error, ArchiveError)
    if depth > 1000:
        assert isinstance(error, ArchiveError)


def test_verify_reports_a_graph_that_fails_when_run(archive: bytes, tmp_path: Path) -> None:
    graph = graph_of(archive)
    for node in _nodes(graph):
        if node["target"] == "torch.ops.aten.relu.default":
            node["target"] = "torch.ops.aten.mm.default"  # compiles, fails at run time (mat2 missing)
    path = _write(tmp_path, with_graph(archive, graph))
    torchferry.load_model(path)  # loading is fine: nothing runs until called
    report = torchferry.verify(path)
    assert not report.ok and report.problems


# ----------------------------------------------------------------------------- the zip container


def _entries(archive: bytes, *, skip: tuple[str, ...] = ()) -> list[RawEntry]:
    return [RawEntry(name, body) for name, body in read_members(archive).items() if name not in skip]


@pytest.fixture
def sandbox(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A working directory inside ``tmp_path``; asserts nothing appears anywhere under ``tmp_path``."""
    work = tmp_path / "work" / "deeper"
    work.mkdir(parents=True)
    monkeypatch.chdir(work)
    yield tmp_path
    assert files_under(tmp_path) == {"work", "work/deeper", "hostile.ferry"}, "something was extracted"


def test_zip_bomb_is_refused_without_inflating(archive: bytes, sandbox: Path) -> None:
    compressed, size, crc = deflate_bomb(200)
    assert size // len(compressed) > 900  # a real bomb: ~200 MiB from ~200 KiB
    entries = _entries(archive, skip=(WEIGHTS,))
    entries.insert(0, RawEntry(WEIGHTS, compressed, method=zipfile.ZIP_DEFLATED, uncompressed_size=size, crc=crc))
    data = raw_zip(entries)
    with zipfile.ZipFile(io.BytesIO(data)) as check:  # positive control: any unzip would inflate 200 MiB
        assert check.getinfo(WEIGHTS).file_size == 200 << 20
    path = _write(sandbox, data)
    tracemalloc.start()
    started = time.perf_counter()
    try:
        for flags in LOAD_FLAGS:
            with pytest.raises(ArchiveError, match="compressed") as info:
                torchferry.load_model(path, **flags)
            assert "zip-bomb" in str(info.value)
        with pytest.raises(ArchiveError, match="compressed"):
            torchferry.inspect(path)
        report = torchferry.verify(path)
        elapsed = time.perf_counter() - started
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert not report.ok and any("compressed" in p for p in report.problems)
    assert elapsed < 2.0, f"took {elapsed:.2f}s: something inflated the member"
    assert peak < 16 << 20, f"peak {peak} bytes: something inflated the member"


def test_deflated_manifest_is_refused(archive: bytes, sandbox: Path) -> None:
    members = read_members(archive)
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as rezip:
        for name, body in members.items():
            rezip.writestr(name, body, compress_type=zipfile.ZIP_DEFLATED if name == MANIFEST else zipfile.ZIP_STORED)
    path = _write(sandbox, out.getvalue())
    with pytest.raises(ArchiveError, match="compressed"):
        torchferry.inspect(path)


def test_hand_written_copy_of_a_valid_archive_loads(archive: bytes, sandbox: Path) -> None:
    """Positive control for the tests below: ``raw_zip`` itself makes archives the reader accepts."""
    path = _write(sandbox, raw_zip(_entries(archive)))
    for flags in LOAD_FLAGS:
        assert torchferry.load_model(path, **flags)(torch.randn(2, 4)).shape == (2, 3)
    assert torchferry.verify(path).ok


@pytest.mark.parametrize(
    ("lie", "message"),
    [
        ("local-header-says-deflate", "damaged"),
        ("central-says-deflate-local-says-stored", "compressed"),
        ("sizes-disagree", "compressed"),
        ("size-past-end-of-file", "past the end"),
        ("encrypted", "encrypted"),
        ("header-offset-past-end", "cut off"),
    ],
)
def test_container_lies_are_refused(archive: bytes, sandbox: Path, lie: str, message: str) -> None:
    entries = _entries(archive)
    weights = next(e for e in entries if e.name == WEIGHTS)
    if lie == "local-header-says-deflate":
        weights.local_method = zipfile.ZIP_DEFLATED
    elif lie == "central-says-deflate-local-says-stored":
        weights.method, weights.local_method = zipfile.ZIP_DEFLATED, zipfile.ZIP_STORED
    elif lie == "sizes-disagree":
        weights.uncompressed_size = len(weights.data) * 1000
    elif lie == "size-past-end-of-file":
        weights.central_size = weights.uncompressed_size = len(weights.data) + (1 << 30)
    elif lie == "encrypted":
        weights.flags = 0x1
    elif lie == "header-offset-past-end":
        weights.header_offset = 1 << 31
    path = _write(sandbox, raw_zip(entries))
    for flags in LOAD_FLAGS:
        with pytest.raises(ArchiveError, match=message):
            torchferry.load_model(path, **flags)
    with pytest.raises(ArchiveError, match=message):
        torchferry.inspect(path)
    assert not torchferry.verify(path).ok


def test_two_entries_sharing_one_local_header_are_refused(archive: bytes, sandbox: Path) -> None:
    entries = _entries(archive)
    assert entries[0].name == WEIGHTS  # its local header is at offset 0
    entries.append(RawEntry("weights2.safetensors", entries[0].data, header_offset=0, write_local=False))
    path = _write(sandbox, raw_zip(entries))
    with pytest.raises(ArchiveError, match="names a different member"):
        torchferry.inspect(path)
    assert not torchferry.verify(path).ok


def test_overlapping_member_data_is_refused(archive: bytes, sandbox: Path) -> None:
    """Member A's data holds member B's whole local record (the 'overlapping files' zip-bomb layout)."""
    members = read_members(archive)
    inner = local_record(EXAMPLE_INPUTS, members[EXAMPLE_INPUTS])
    entries = [RawEntry(WEIGHTS, inner + members[WEIGHTS])]  # A = [B's header | B's data | weights]
    entries += [RawEntry(n, body) for n, body in members.items() if n not in (WEIGHTS, EXAMPLE_INPUTS)]
    entries.append(
        RawEntry(EXAMPLE_INPUTS, members[EXAMPLE_INPUTS], header_offset=30 + len(WEIGHTS), write_local=False)
    )
    path = _write(sandbox, raw_zip(entries))
    with zipfile.ZipFile(path) as check:  # positive control: zipfile reads B out of the middle of A
        assert check.read(EXAMPLE_INPUTS) == members[EXAMPLE_INPUTS]
    with pytest.raises(ArchiveError, match="overlaps"):
        torchferry.inspect(path)
    with pytest.raises(ArchiveError, match="overlaps"):
        torchferry.load_model(path, check_integrity=False)
    assert not torchferry.verify(path).ok


def test_duplicate_member_names_are_refused(archive: bytes, sandbox: Path) -> None:
    entries = _entries(archive)
    entries.insert(0, RawEntry(WEIGHTS, b"\0" * 64))
    path = _write(sandbox, raw_zip(entries))
    with pytest.raises(ArchiveError, match="appears twice"):
        torchferry.inspect(path)


UNSAFE_NAMES: list[str | bytes] = [
    "../evil",
    "../../evil.py",
    "/abs",
    "/tmp/torchferry-evil",
    "a/../../b",
    "program/../../evil",
    "./weights.safetensors",
    "a\\..\\..\\evil",
    "..\\evil",
    "C:/evil",
    "C:\\evil",
    "a//b",
    "dir/",
    "",
    " ",
    "~/evil",
    "evil\n",
    "wéights.safetensors",
    b"weights.safetensors\x00/../../evil",
    b"\xff\xfe",
]


@pytest.mark.parametrize("name", UNSAFE_NAMES, ids=repr)
def test_unsafe_member_names_are_refused(archive: bytes, sandbox: Path, name: str | bytes) -> None:
    entries = _entries(archive)
    entries.insert(1, RawEntry(name, b"evil\n", flags=0x800 if isinstance(name, str) and not name.isascii() else 0))
    path = _write(sandbox, raw_zip(entries))
    for flags in LOAD_FLAGS:
        with pytest.raises(ArchiveError):
            torchferry.load_model(path, **flags)
    with pytest.raises(ArchiveError):
        torchferry.inspect(path)
    assert not torchferry.verify(path).ok
    assert not Path("/tmp/torchferry-evil").exists()


@pytest.mark.parametrize(
    "mode", [stat.S_IFLNK | 0o777, stat.S_IFDIR | 0o755, stat.S_IFCHR | 0o644, stat.S_IFIFO | 0o644]
)
@pytest.mark.parametrize("name", [WEIGHTS, "program/link"])
def test_links_and_special_files_are_refused(archive: bytes, sandbox: Path, mode: int, name: str) -> None:
    entries = _entries(archive, skip=(name,))
    entries.insert(0, RawEntry(name, b"/etc/passwd", external_attr=mode << 16))
    path = _write(sandbox, raw_zip(entries))
    for flags in LOAD_FLAGS:
        with pytest.raises(ArchiveError, match="not a regular file"):
            torchferry.load_model(path, **flags)
    assert not torchferry.verify(path).ok


# ----------------------------------------------------------------------------- no path leaks

_LEAKY_MODULE = '''
import torch


class LeakyNet(torch.nn.Module):
    """Defined in a file under the test's temporary directory, so its path is known."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = torch.nn.Linear(4, 3)
        self.register_buffer("scale", torch.full((3,), 2.0))

    def forward(self, x):
        y = self.fc(x) * self.scale
        assert y.dim() == 2, "rank"
        return torch.nn.functional.gelu(y)
'''


def _machine_paths(tmp_path: Path) -> dict[str, str]:
    paths = {
        "tmp_path": str(tmp_path),
        "tmp_path (resolved)": str(tmp_path.resolve()),
        "cwd": os.getcwd(),
        "home": str(Path.home()),
        "sys.prefix": sys.prefix,
        "sys.base_prefix": sys.base_prefix,
        "torch": str(Path(torch.__file__).parent),
        "torchferry": str(Path(torchferry.__file__).parent),
    }
    paths.update({f"site-packages {i}": p for i, p in enumerate(site.getsitepackages())})
    return {label: p for label, p in paths.items() if len(p) > 4}  # "/" or "/tmp" would match anything


def _import_source(tmp_path: Path, source: str) -> Any:
    """Import ``source`` as a module file under ``tmp_path / "src"`` (not on sys.path)."""
    name = f"ferry_test_model_{uuid.uuid4().hex[:8]}"
    path = tmp_path / "src" / f"{name}.py"
    path.parent.mkdir(exist_ok=True)
    path.write_text(source)
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def _assert_no_paths(data: bytes, tmp_path: Path) -> None:
    paths = _machine_paths(tmp_path)
    for name, body in {"<whole file>": data, **read_members(data)}.items():
        for label, value in paths.items():
            for encoded in {value.encode(), json.dumps(value)[1:-1].encode()}:
                assert encoded not in body, f"{name} holds the {label} path {value!r}"


def test_packed_archive_holds_no_absolute_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    module = _import_source(tmp_path, _LEAKY_MODULE)
    monkeypatch.chdir(tmp_path / "src")
    try:
        torch.manual_seed(0)
        torchferry.pack(module.LeakyNet(), tmp_path / "leaky.ferry", example_inputs=torch.randn(2, 4), fsync=False)
    finally:
        sys.modules.pop(module.__name__, None)
    data = (tmp_path / "leaky.ferry").read_bytes()
    assert module.__name__.encode() in read_members(data)[GRAPH]  # the graph does name the module: not vacuous
    _assert_no_paths(data, tmp_path)


def test_python_mode_archive_holds_no_absolute_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("torchferry.runtime.python_program", reason="mode='python' is not implemented yet")
    module = _import_source(tmp_path, _LEAKY_MODULE)
    monkeypatch.chdir(tmp_path / "src")
    try:
        torch.manual_seed(0)
        torchferry.pack(
            module.LeakyNet(), tmp_path / "leaky.ferry", example_inputs=torch.randn(2, 4), mode="python", fsync=False
        )
    finally:
        sys.modules.pop(module.__name__, None)
    _assert_no_paths((tmp_path / "leaky.ferry").read_bytes(), tmp_path)
