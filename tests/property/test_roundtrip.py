"""Round-trip properties of ``torchferry.save``/``load``.

Any nesting of dicts (plain and ordered, with str and int keys), lists and tuples around
JSON scalars (None, bools, big ints, NaN/inf/-0.0 floats, unicode strings) and tensors of
every dtype safetensors supports comes back with the same container types, the same key
types and order, and bit-identical tensors of the same dtype and shape. Tensor values are
random bytes viewed as the dtype, so NaN payloads, subnormals and negative zeros occur.
Tensors are often non-contiguous (transposed, stepped, expanded, diagonal), and views that
overlapped in memory before saving still share memory, at the same relative offsets, after.
"""

from __future__ import annotations

import math
import warnings
from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import torchferry
from torchferry.errors import UnsupportedObjectError

pytestmark = pytest.mark.property

ROUNDTRIP_SETTINGS = settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

SAFETENSORS_DTYPES = [
    torch.bool, torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64,
    torch.uint16, torch.uint32, torch.uint64,
    torch.float16, torch.bfloat16, torch.float32, torch.float64,
    torch.float8_e4m3fn, torch.float8_e5m2, torch.float8_e4m3fnuz, torch.float8_e5m2fnuz, torch.float8_e8m0fnu,
    torch.complex64,
]  # fmt: skip
STORED_AS_REAL_VIEW = [torch.complex128, torch.complex32]
"""Complex dtypes safetensors lacks; torchferry stores their real view and restores them."""
ALL_DTYPES = SAFETENSORS_DTYPES + STORED_AS_REAL_VIEW
FLOATING = {torch.float16, torch.bfloat16, torch.float32, torch.float64}


@pytest.fixture(autouse=True)
def _quiet_complex_half() -> Iterator[None]:
    """torch warns (once) that complex32 is experimental; that warning is not under test."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="ComplexHalf support is experimental")
        yield


Roundtrip = Callable[[Any], Any]


@pytest.fixture(scope="module")
def roundtrip(tmp_path_factory: pytest.TempPathFactory) -> Roundtrip:
    """save() then load() through one file (module scope: hypothesis runs many examples per test)."""
    path = tmp_path_factory.mktemp("roundtrip") / "roundtrip.safetensors"

    def run(obj: Any) -> Any:
        torchferry.save(obj, path, fsync=False)
        return torchferry.load(path)

    return run


# ----------------------------------------------------------------------------- tensors


def _from_bytes(raw: bytes, dtype: torch.dtype, shape: tuple[int, ...]) -> torch.Tensor:
    if not raw:
        return torch.empty(shape, dtype=dtype)
    data = bytearray(raw)
    if dtype == torch.bool:
        data = bytearray(b & 1 for b in data)  # other byte values are not valid bools
    return torch.frombuffer(data, dtype=torch.uint8).clone().view(dtype).reshape(shape)


shapes = st.lists(st.integers(min_value=0, max_value=4), min_size=0, max_size=3).map(tuple)


@st.composite
def raw_tensors(
    draw: st.DrawFn, dtype: torch.dtype | None = None, shape: tuple[int, ...] | None = None
) -> torch.Tensor:
    """A contiguous tensor of random bytes viewed as ``dtype``."""
    dtype = dtype if dtype is not None else draw(st.sampled_from(ALL_DTYPES))
    shape = shape if shape is not None else draw(shapes)
    size = math.prod(shape) * dtype.itemsize
    return _from_bytes(draw(st.binary(min_size=size, max_size=size)), dtype, shape)


def _transposed(t: torch.Tensor) -> torch.Tensor:
    return t.transpose(0, -1) if t.dim() >= 2 else t


def _stepped(t: torch.Tensor) -> torch.Tensor:
    return t[::2] if t.dim() >= 1 else t


def _sliced(t: torch.Tensor) -> torch.Tensor:
    return t[1:] if t.dim() >= 1 else t


def _last_column(t: torch.Tensor) -> torch.Tensor:
    return t[..., -1] if t.dim() >= 2 and t.shape[-1] > 0 else t


def _expanded(t: torch.Tensor) -> torch.Tensor:
    return t.unsqueeze(0).expand(3, *t.shape)


def _diagonal(t: torch.Tensor) -> torch.Tensor:
    return t.diagonal(dim1=0, dim2=1) if t.dim() >= 2 else t


def _permuted(t: torch.Tensor) -> torch.Tensor:
    return t.permute(2, 0, 1) if t.dim() == 3 else t


VIEW_OPS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "identity": lambda t: t,
    "transpose": _transposed,
    "step": _stepped,
    "slice": _sliced,
    "last-column": _last_column,
    "expand": _expanded,
    "diagonal": _diagonal,
    "permute": _permuted,
}


def _single_element_with_odd_stride(t: torch.Tensor) -> bool:
    """A one-element view whose flattened stride is not 1 (``torch.zeros(1, 3)[:, 0]``): once a crash
    in save(), now covered by test_single_element_view_with_non_unit_stride."""
    return t.numel() == 1 and t.dim() > 0 and t.reshape(-1).stride(-1) != 1


@st.composite
def tensors(draw: st.DrawFn) -> torch.Tensor:
    """A tensor of any dtype, often a non-contiguous view, sometimes a Parameter or lazily conjugated."""
    base = draw(raw_tensors())
    tensor = VIEW_OPS[draw(st.sampled_from(sorted(VIEW_OPS)))](base)
    if tensor.is_complex() and tensor.dtype != torch.complex32 and draw(st.booleans()):
        tensor = tensor.conj()
    if tensor.dtype in FLOATING and draw(st.integers(min_value=0, max_value=3)) == 0:
        if tensor.is_contiguous() and draw(st.booleans()):
            return torch.nn.Parameter(tensor, requires_grad=draw(st.booleans()))
        tensor = tensor.detach().requires_grad_(True)
    return tensor


# ----------------------------------------------------------------------------- structures

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**100), max_value=2**100),
    st.integers(min_value=-(2**63), max_value=2**64),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([float("nan"), float("inf"), float("-inf"), -0.0, 5e-324, 1.7976931348623157e308]),
    st.text(max_size=12),
    st.sampled_from(["", "__metadata__", "é", "日本語", "\x00", "a/b", "#2", '"{}"', "\U0001f600"]),
)
keys = st.one_of(
    st.text(max_size=6),
    st.text(alphabet=st.sampled_from("ab/#_ é0"), max_size=4),
    st.sampled_from(["__metadata__", "", "tensor", "0", "1", "a/b"]),
    st.integers(min_value=-3, max_value=5),
    st.integers(min_value=-(2**70), max_value=2**70),
)


@dataclass(frozen=True)
class Same:
    """A leaf that reuses an earlier tensor (tied weights)."""

    index: int


def _containers(children: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    dicts = st.dictionaries(keys, children, max_size=4)
    return st.one_of(
        dicts,
        dicts.map(OrderedDict),
        st.lists(children, max_size=4),
        st.lists(children, max_size=4).map(tuple),
    )


structures = st.recursive(
    st.one_of(scalars, tensors(), st.integers(min_value=0, max_value=20).map(Same)),
    _containers,
    max_leaves=10,
)


def _resolve_same(obj: Any, seen: list[torch.Tensor]) -> Any:
    """Replace each ``Same`` leaf by a tensor already placed (or drop it if there is none)."""
    if isinstance(obj, torch.Tensor):
        seen.append(obj)
        return obj
    if isinstance(obj, Same):
        return seen[obj.index % len(seen)] if seen else None
    if isinstance(obj, dict):
        resolved = {k: _resolve_same(v, seen) for k, v in obj.items()}
        return OrderedDict(resolved) if isinstance(obj, OrderedDict) else resolved
    if isinstance(obj, (list, tuple)):
        items = [_resolve_same(v, seen) for v in obj]
        return items if isinstance(obj, list) else tuple(items)
    return obj


# ----------------------------------------------------------------------------- comparison


def _bytes_of(t: torch.Tensor) -> torch.Tensor:
    dense = torch.empty(t.shape, dtype=t.dtype)
    dense.copy_(t.detach())  # standard strides; copies the values of lazily conjugated views
    return dense.reshape(-1).view(torch.uint8)


def assert_tensor_same(before: torch.Tensor, after: torch.Tensor, where: str) -> None:
    assert type(after) is type(before), (where, type(before), type(after))
    assert after.dtype == before.dtype, where
    assert after.shape == before.shape, where
    assert after.requires_grad == before.requires_grad, where
    assert torch.equal(_bytes_of(after), _bytes_of(before)), where


def assert_same(before: Any, after: Any, where: str = "root") -> None:
    """Deep equality that also checks container and key types, and bit-exact tensors."""
    if isinstance(before, torch.Tensor):
        assert isinstance(after, torch.Tensor), (where, type(after))
        assert_tensor_same(before, after, where)
        return
    assert type(after) is type(before), (where, type(before), type(after))
    if isinstance(before, dict):
        assert [(type(k), k) for k in after] == [(type(k), k) for k in before], where
        for key in before:
            assert_same(before[key], after[key], f"{where}[{key!r}]")
    elif isinstance(before, (list, tuple)):
        assert len(after) == len(before), where
        for index, (b, a) in enumerate(zip(before, after)):
            assert_same(b, a, f"{where}[{index}]")
    elif isinstance(before, float):
        if math.isnan(before):
            assert math.isnan(after), where
        else:
            assert after == before and math.copysign(1.0, after) == math.copysign(1.0, before), where
    else:
        assert after == before, where


def _tensor_leaves(obj: Any) -> Iterator[torch.Tensor]:
    if isinstance(obj, torch.Tensor):
        yield obj
    elif isinstance(obj, dict):
        for value in obj.values():
            yield from _tensor_leaves(value)
    elif isinstance(obj, (list, tuple)):
        for value in obj:
            yield from _tensor_leaves(value)


def _span(t: torch.Tensor) -> tuple[int, int]:
    start = t.storage_offset() * t.element_size()
    extent = 1 + sum((n - 1) * s for n, s in zip(t.shape, t.stride()))
    return start, start + extent * t.element_size()


def _overlap(a: torch.Tensor, b: torch.Tensor) -> bool:
    if a.numel() == 0 or b.numel() == 0 or a.untyped_storage().data_ptr() != b.untyped_storage().data_ptr():
        return False
    (a0, a1), (b0, b1) = _span(a), _span(b)
    return a0 < b1 and b0 < a1


def _byte_address(t: torch.Tensor) -> int:
    return t.untyped_storage().data_ptr() + t.storage_offset() * t.element_size()


def assert_sharing_kept(before: Any, after: Any) -> None:
    """Tensors that overlapped in memory still do, at the same relative byte offset; the same
    (non-empty) tensor object placed twice comes back as one object."""
    old = list(_tensor_leaves(before))
    new = list(_tensor_leaves(after))
    assert len(old) == len(new)
    for i in range(len(old)):
        for j in range(i + 1, len(old)):
            if old[i].is_conj() != old[j].is_conj() or old[i].is_neg() != old[j].is_neg():
                continue  # documented: lazily conjugated views are stored resolved, unshared
            if old[i] is old[j] and old[i].numel():  # empty tensors hold no memory to share
                assert new[i] is new[j], (i, j)
            if _overlap(old[i], old[j]):
                assert new[i].untyped_storage().data_ptr() == new[j].untyped_storage().data_ptr(), (i, j)
                assert _byte_address(new[j]) - _byte_address(new[i]) == _byte_address(old[j]) - _byte_address(old[i]), (
                    i,
                    j,
                )


# ----------------------------------------------------------------------------- properties


@ROUNDTRIP_SETTINGS
@given(structure=structures)
def test_nested_structures_roundtrip(structure: Any, roundtrip: Roundtrip) -> None:
    obj = _resolve_same(structure, [])
    loaded = roundtrip(obj)
    assert_same(obj, loaded)
    assert_sharing_kept(obj, loaded)


@ROUNDTRIP_SETTINGS
@given(tensor=tensors())
def test_single_tensor_roundtrip(tensor: torch.Tensor, roundtrip: Roundtrip) -> None:
    loaded = roundtrip(tensor)
    assert_same(tensor, loaded)


@pytest.mark.parametrize("dtype", ALL_DTYPES, ids=lambda d: str(d).removeprefix("torch."))
@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_every_dtype_roundtrips_bit_exactly(dtype: torch.dtype, data: st.DataObject, roundtrip: Roundtrip) -> None:
    base = data.draw(raw_tensors(dtype=dtype, shape=data.draw(st.sampled_from([(), (0,), (5,), (3, 4), (2, 0, 3)]))))
    obj = {"contiguous": base, "transposed": _transposed(base), "stepped": _stepped(base), 0: [base, (base,)]}
    loaded = roundtrip(obj)
    assert_same(obj, loaded)
    assert_sharing_kept(obj, loaded)


SHARING_OPS = sorted(set(VIEW_OPS) | {"as-bytes", "narrow", "same-object"})


def _share_view(base: torch.Tensor, op: str, previous: list[torch.Tensor]) -> torch.Tensor:
    if op == "same-object":
        return previous[-1] if previous else base
    if op == "as-bytes":
        return base.view(torch.uint8)  # the same memory seen with another dtype
    if op == "narrow":
        return base.narrow(0, base.shape[0] // 2, base.shape[0] - base.shape[0] // 2)
    return VIEW_OPS[op](base)


@ROUNDTRIP_SETTINGS
@given(
    dtype=st.sampled_from(ALL_DTYPES),
    shape=st.lists(st.integers(min_value=1, max_value=4), min_size=1, max_size=3).map(tuple),
    ops=st.lists(st.sampled_from(SHARING_OPS), min_size=1, max_size=5),
    data=st.data(),
    wrap=st.sampled_from(["list", "dict", "nested"]),
)
def test_overlapping_views_still_share_memory(
    dtype: torch.dtype, shape: tuple[int, ...], ops: list[str], data: st.DataObject, wrap: str, roundtrip: Roundtrip
) -> None:
    base = data.draw(raw_tensors(dtype=dtype, shape=shape))
    views: list[torch.Tensor] = [base]
    for op in ops:
        views.append(_share_view(base, op, views))
    if wrap == "list":
        obj: Any = views
    elif wrap == "dict":
        obj = {f"v{i}": v for i, v in enumerate(views)}
    else:
        obj = {"model": OrderedDict((str(i), v) for i, v in enumerate(views[::2])), 7: tuple(views[1::2])}
    loaded = roundtrip(obj)
    assert_same(obj, loaded)
    assert_sharing_kept(obj, loaded)


@ROUNDTRIP_SETTINGS
@given(
    dtype=st.sampled_from(ALL_DTYPES),
    shape=st.lists(st.integers(min_value=2, max_value=5), min_size=1, max_size=2).map(tuple),
    data=st.data(),
)
def test_disjoint_slices_of_one_buffer_are_stored_separately(
    dtype: torch.dtype, shape: tuple[int, ...], data: st.DataObject, roundtrip: Roundtrip
) -> None:
    """Slices that share an allocation but not bytes round-trip with their own values."""
    base = data.draw(raw_tensors(dtype=dtype, shape=shape))
    half = shape[0] // 2
    obj = {"head": base[:half], "tail": base[half:]}
    loaded = roundtrip(obj)
    assert_same(obj, loaded)


def test_ordered_dict_metadata_survives(roundtrip: Roundtrip) -> None:
    state = torch.nn.Sequential(torch.nn.Linear(2, 3), torch.nn.BatchNorm1d(3)).state_dict()
    assert isinstance(state, OrderedDict) and hasattr(state, "_metadata")
    loaded = roundtrip({"sd": state})
    assert_same({"sd": state}, loaded)
    assert loaded["sd"]._metadata == state._metadata


@pytest.mark.parametrize(
    "make",
    [
        lambda: torch.zeros(1, 3)[:, 0],
        lambda: torch.arange(6, dtype=torch.int16).reshape(1, 6)[:, 2],
        lambda: torch.nn.Linear(3, 1).weight.detach().t()[0],
        lambda: torch.ones(2, 2, dtype=torch.float64).diagonal()[1:],
    ],
    ids=["column-of-1x3", "int16-column", "row-of-transposed-weight", "diagonal-tail"],
)
def test_single_element_view_with_non_unit_stride(make: Callable[[], torch.Tensor], roundtrip: Roundtrip) -> None:
    tensor = make()
    assert _single_element_with_odd_stride(tensor)
    obj = {"x": tensor, "n": 1}
    assert_same(obj, roundtrip(obj))


def test_single_element_view_with_non_unit_stride_next_to_its_base(roundtrip: Roundtrip) -> None:
    """The same view stored together with its base goes through the shared-span path and works."""
    base = torch.zeros(1, 3)
    obj = {"base": base, "x": base[:, 0]}
    loaded = roundtrip(obj)
    assert_same(obj, loaded)
    assert_sharing_kept(obj, loaded)


@pytest.mark.parametrize("key", ["\ud800", "a\udcff"])
def test_lone_surrogate_key_over_a_tensor(key: str, roundtrip: Roundtrip) -> None:
    obj = {key: torch.ones(2)}
    try:
        loaded = roundtrip(obj)
    except UnsupportedObjectError as exc:
        assert repr(key) in exc.key_path
        return
    assert_same(obj, loaded)


@pytest.mark.parametrize("value", ["\ud800", "a\udcffb"])
def test_lone_surrogate_scalar_roundtrips(value: str, roundtrip: Roundtrip) -> None:
    obj = {"s": value, "t": torch.zeros(1)}
    assert_same(obj, roundtrip(obj))
