"""Fuzzing the readers: damaged bytes may load or fail, but only with a FerryError.

Valid files of each kind torchferry reads are mutated (byte flips, bytes set to JSON
punctuation, digits in the header replaced by other digits so the JSON stays valid but
its numbers lie, truncation) and fed to ``load`` and ``describe``. Any exception other
than a :class:`torchferry.errors.FerryError` subclass (``struct.error``, ``KeyError``,
``UnicodeDecodeError``, ``RuntimeError``, ``OverflowError`` ...) fails the test.
"""

from __future__ import annotations

import json
import struct
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import torchferry
from torchferry.errors import FerryError
from torchferry.state.summary import describe

pytestmark = pytest.mark.property

FUZZ_SETTINGS = settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


@dataclass(frozen=True)
class Sample:
    """A valid file's bytes, and where its header (the region worth mutating most) ends."""

    data: bytes = field(repr=False)
    header_end: int


def _safetensors_sample(path: Path) -> Sample:
    data = path.read_bytes()
    (length,) = struct.unpack("<Q", data[:8])
    return Sample(data, 8 + length)


def _build_samples(root: Path) -> dict[str, Sample]:
    torch.manual_seed(0)
    samples: dict[str, Sample] = {}

    base = torch.randn(6, 4)
    state = {
        "weights": {"w": base, "w_t": base.t(), "row": base[2], "every_other": base[::2]},
        "tied": [base, base],
        "layers": [{"bias": torch.arange(3, dtype=torch.int64)}, (torch.ones(2, dtype=torch.bfloat16), 7)],
        1: {"ints": torch.tensor([1, 2, 3], dtype=torch.int8), "flag": torch.tensor(True)},
        "complex": torch.randn(3, dtype=torch.complex128),
        "param": torch.nn.Parameter(torch.randn(2, 2)),
        "scalars": {"nan": float("nan"), "inf": float("inf"), "big": 2**70, "s": "héllo", "none": None},
        "empty": torch.empty(0, 3),
    }
    path = root / "state.safetensors"
    torchferry.save(state, path, fsync=False)
    samples["torchferry-state"] = _safetensors_sample(path)

    model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.BatchNorm1d(3), torch.nn.Linear(3, 2))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    model(torch.randn(5, 4)).sum().backward()
    optimizer.step()
    path = root / "checkpoint.safetensors"
    torchferry.save_checkpoint(path, model=model, optimizer=optimizer, epoch=3, step=42, fsync=False, best=0.5)
    samples["torchferry-checkpoint"] = _safetensors_sample(path)

    path = root / "plain.safetensors"
    from safetensors.torch import save_file

    save_file({"a": torch.randn(3, 2), "b": torch.arange(4, dtype=torch.int32)}, str(path), metadata={"k": "v"})
    samples["plain-safetensors"] = _safetensors_sample(path)

    path = root / "legacy.pt"
    torch.save({"model_state_dict": model.state_dict(), "epoch": 3, "losses": [0.5, 0.25]}, path)
    data = path.read_bytes()
    # the pickle (data.pkl) sits near the start of the zip: mutate it more often
    samples["legacy-zip"] = Sample(data, min(len(data), data.find(b"data/0") + 64 if b"data/0" in data else 512))

    path = root / "legacy-nonzip.pt"
    torch.save(model.state_dict(), path, _use_new_zipfile_serialization=False)
    data = path.read_bytes()
    samples["legacy-nonzip"] = Sample(data, min(len(data), 600))
    return samples


@dataclass(frozen=True)
class Mutant:
    """Mutated bytes; shown by hypothesis as the list of edits, not as kilobytes of data."""

    data: bytes = field(repr=False)
    edits: tuple[str, ...]


SAMPLE_NAMES = ("legacy-nonzip", "legacy-zip", "plain-safetensors", "torchferry-checkpoint", "torchferry-state")


@pytest.fixture(scope="module")
def samples(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Sample]:
    built = _build_samples(tmp_path_factory.mktemp("fuzz-samples"))
    assert set(built) == set(SAMPLE_NAMES)
    return built


@pytest.fixture(scope="module")
def scratch(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One file rewritten by every example (module scope: hypothesis runs many per test)."""
    return tmp_path_factory.mktemp("fuzz-case") / "mutated.bin"


def test_samples_are_valid(samples: dict[str, Sample], scratch: Path) -> None:
    """Control: the unmutated files load, so a failure below is the mutation's doing."""
    for sample in samples.values():
        scratch.write_bytes(sample.data)
        torchferry.load(scratch)
        describe(scratch)


# ----------------------------------------------------------------------------- mutations

_INTERESTING = b'{}[]",:0123456789-.eE \x00\xff'


_BYTE_EDITS = ["flip-header"] * 3 + ["flip-anywhere"] * 2 + ["set-header"] * 2 + ["digit"] * 3 + ["length-prefix"]


@st.composite
def mutations(draw: st.DrawFn, sample: Sample) -> Mutant:
    """Byte-level damage, biased toward the header: flips, JSON punctuation, digits, truncation."""
    data = bytearray(sample.data)
    size = len(data)
    header_end = max(1, min(sample.header_end, size))
    digit_positions = [i for i in range(header_end) if 48 <= data[i] <= 57]
    edits: list[str] = []
    for _ in range(draw(st.integers(min_value=1, max_value=6))):
        kind = draw(st.sampled_from(_BYTE_EDITS))
        if kind == "digit" and digit_positions:
            position = draw(st.sampled_from(digit_positions))
            data[position] = draw(st.sampled_from(b"0123456789"))
        elif kind == "length-prefix":
            position = draw(st.integers(min_value=0, max_value=min(7, size - 1)))
            data[position] ^= 1 << draw(st.integers(min_value=0, max_value=7))
        elif kind == "set-header":
            position = draw(st.integers(min_value=0, max_value=header_end - 1))
            data[position] = draw(st.sampled_from(_INTERESTING))
        else:
            upper = header_end - 1 if kind == "flip-header" else size - 1
            position = draw(st.integers(min_value=0, max_value=upper))
            data[position] ^= draw(st.integers(min_value=1, max_value=255))
        edits.append(f"{kind}@{position}={data[position]:#04x}" if kind != "digit" or digit_positions else kind)
    if draw(st.booleans()):
        cut = draw(st.one_of(st.integers(0, header_end + 16), st.integers(0, size)))
        del data[cut:]
        edits.append(f"truncate@{cut}")
    return Mutant(bytes(data), tuple(edits))


def _read_both(path: Path) -> None:
    """load() and describe() either succeed or raise one of our errors."""
    with warnings.catch_warnings():
        # torch may warn about odd inputs; the warning itself is not what is tested here
        warnings.simplefilter("ignore")
        for read in (torchferry.load, describe):
            try:
                read(path)
            except FerryError as exc:
                assert str(path) in str(exc), exc


@pytest.mark.parametrize("sample_name", SAMPLE_NAMES)
def test_mutated_file_fails_only_with_ferry_error(sample_name: str, samples: dict[str, Sample], scratch: Path) -> None:
    sample = samples[sample_name]

    @FUZZ_SETTINGS
    @given(mutant=mutations(sample))
    def run(mutant: Mutant) -> None:
        scratch.write_bytes(mutant.data)
        _read_both(scratch)

    run()


@pytest.mark.parametrize("sample_name", SAMPLE_NAMES)
def test_truncated_file_fails_only_with_ferry_error(
    sample_name: str, samples: dict[str, Sample], scratch: Path
) -> None:
    data = samples[sample_name].data

    @settings(max_examples=60, deadline=None)
    @given(cut=st.integers(min_value=0, max_value=len(data) - 1))
    def run(cut: int) -> None:
        scratch.write_bytes(data[:cut])
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            for read in (torchferry.load, describe):
                with pytest.raises(FerryError) as info:
                    read(scratch)
                assert str(scratch) in str(info.value)

    run()


@settings(max_examples=150, deadline=None)
@given(blob=st.binary(min_size=0, max_size=300), prefix=st.sampled_from([b"", b"PK\x03\x04", b"\x80\x02", b"{"]))
def test_arbitrary_bytes_fail_only_with_ferry_error(blob: bytes, prefix: bytes, scratch: Path) -> None:
    if prefix == b"{":
        scratch.write_bytes(struct.pack("<Q", len(blob) + 1) + prefix + blob)
    else:
        scratch.write_bytes(prefix + blob)
    _read_both(scratch)


# ----------------------------------------------------------------------------- structure-aware mutations
#
# Byte flips mostly break the JSON. These mutations parse the header (or the torchferry
# metadata inside it), replace or delete values at random places, and write a file whose
# JSON is valid and whose length prefix is right, so the semantic checks are exercised.

JSON_VALUES: list[Any] = [
    -1, 0, 1, 2, 3, 7, 8, 2**31, 2**63, 2**64, 10**30, 1.5, -0.0,
    "", "F32", "BOOL", "U8", "C64", "F8_E4M3", "cpu", "cuda:0", "meta", "complex128", "complex32",
    "int8", "float64", "T", "x", "nan", "tree", "checkpoint", "torchferry.state/1",
    None, True, False, [], [0], [1, 2], [[0, 1], 2], [0, [1], [1]], {},
    {"T": "x"}, {"L": []}, {"F": "nan"}, {"D": [[1, 2]]}, {"complex": "complex128"}, {"device": "meta"},
]  # fmt: skip

JsonPath = tuple[Any, ...]


def _json_paths(node: Any, prefix: JsonPath = ()) -> Iterator[JsonPath]:
    yield prefix
    if isinstance(node, dict):
        for key, value in node.items():
            yield from _json_paths(value, (*prefix, key))
    elif isinstance(node, list):
        for index, value in enumerate(node):
            yield from _json_paths(value, (*prefix, index))


def _split(sample: Sample) -> tuple[dict[str, Any], bytes]:
    (length,) = struct.unpack("<Q", sample.data[:8])
    return json.loads(sample.data[8 : 8 + length]), sample.data[8 + length :]


@st.composite
def json_mutations(draw: st.DrawFn, sample: Sample, where: str) -> Mutant:
    """Valid-JSON variants of ``sample``: ``where`` is "container" (the safetensors header)
    or "metadata" (the torchferry JSON inside it)."""
    header, data = _split(sample)
    meta = json.loads(header["__metadata__"]["torchferry"]) if where == "metadata" else None
    target = meta if meta is not None else header
    names = sorted(k for k in header if k != "__metadata__")
    values = st.one_of(st.sampled_from(JSON_VALUES), st.sampled_from(names), st.integers(min_value=-3, max_value=2**40))
    edits: list[str] = []
    for _ in range(draw(st.integers(min_value=1, max_value=3))):
        paths = [p for p in _json_paths(target) if p]
        if not paths:
            break
        path = draw(st.sampled_from(paths))
        parent = target
        for key in path[:-1]:
            parent = parent[key]
        if isinstance(parent, dict) and draw(st.integers(min_value=0, max_value=9)) == 0:
            del parent[path[-1]]
            edits.append(f"del {list(path)}")
            continue
        value = json.loads(json.dumps(draw(values)))
        parent[path[-1]] = value
        edits.append(f"{list(path)} = {value!r}")
    if meta is not None:
        header["__metadata__"]["torchferry"] = json.dumps(meta)
    raw = json.dumps(header).encode()
    return Mutant(struct.pack("<Q", len(raw)) + raw + data, tuple(edits))


def _read(path: Path, readers: tuple[Callable[[Path], object], ...]) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for read in readers:
            try:
                read(path)
            except FerryError as exc:
                assert str(path) in str(exc), exc


_OURS = ("torchferry-state", "torchferry-checkpoint")
_SAFETENSORS = ("torchferry-state", "torchferry-checkpoint", "plain-safetensors")


@pytest.mark.parametrize("sample_name", _OURS)
def test_metadata_mutation_load_fails_only_with_ferry_error(
    sample_name: str, samples: dict[str, Sample], scratch: Path
) -> None:
    @FUZZ_SETTINGS
    @given(mutant=json_mutations(samples[sample_name], "metadata"))
    def run(mutant: Mutant) -> None:
        scratch.write_bytes(mutant.data)
        _read(scratch, (torchferry.load, describe))

    run()


@pytest.mark.parametrize("sample_name", _SAFETENSORS)
def test_container_mutation_fails_only_with_ferry_error(
    sample_name: str, samples: dict[str, Sample], scratch: Path
) -> None:
    @FUZZ_SETTINGS
    @given(mutant=json_mutations(samples[sample_name], "container"))
    def run(mutant: Mutant) -> None:
        scratch.write_bytes(mutant.data)
        _read(scratch, (torchferry.load, describe))

    run()
