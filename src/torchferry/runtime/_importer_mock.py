"""Stubs for modules mocked at pack time: importing and taking attributes works (so code that
merely mentions them loads), using anything raises ``NotImplementedError`` naming the module."""

from __future__ import annotations

import types
from typing import Any, NoReturn


def _error(name: str, module: str) -> NotImplementedError:
    return NotImplementedError(
        f"{name} cannot be used: module {module!r} was mocked when this model was packed "
        f"(mock=[...]), so everything taken from it is a stub. Pack the model again without "
        f"mocking {module!r}: extern it (and install it where the model loads) or intern it."
    )


def _is_dunder(name: str) -> bool:
    return name.startswith("__") and name.endswith("__")


class MockedObject:
    """Anything taken from a mocked module; attribute access, ``[...]`` and ``|`` give more
    stubs (type annotations use them at import time), every other use raises."""

    __slots__ = ("_ferry_module", "_ferry_name")
    _ferry_module: str
    _ferry_name: str

    def __init__(self, name: str, module: str) -> None:
        object.__setattr__(self, "_ferry_name", name)
        object.__setattr__(self, "_ferry_module", module)

    def _ferry_fail(self, *args: Any, **kwargs: Any) -> NoReturn:
        raise _error(self._ferry_name, self._ferry_module)

    def __getattr__(self, attr: str) -> MockedObject:
        if _is_dunder(attr):
            raise AttributeError(attr)
        return MockedObject(f"{self._ferry_name}.{attr}", self._ferry_module)

    def __getitem__(self, item: Any) -> MockedObject:
        return MockedObject(f"{self._ferry_name}[...]", self._ferry_module)

    def __or__(self, other: Any) -> MockedObject:
        return self

    def __ror__(self, other: Any) -> MockedObject:
        return self

    def __mro_entries__(self, bases: tuple[Any, ...]) -> tuple[type, ...]:
        """``class X(mocked.Base)`` still defines X; making an X raises."""
        return (_placeholder_base(self._ferry_name, self._ferry_module),)

    def __repr__(self) -> str:
        return f"<mocked {self._ferry_name}>"

    def __call__(self, *args: Any, **kwargs: Any) -> NoReturn:
        self._ferry_fail()

    def __setattr__(self, name: str, value: Any) -> NoReturn:
        self._ferry_fail()


_FAILING = (
    "__bool__",
    "__len__",
    "__iter__",
    "__contains__",
    "__setitem__",
    "__delitem__",
    "__int__",
    "__float__",
    "__index__",
    "__complex__",
    "__add__",
    "__radd__",
    "__sub__",
    "__rsub__",
    "__mul__",
    "__rmul__",
    "__matmul__",
    "__rmatmul__",
    "__truediv__",
    "__rtruediv__",
    "__floordiv__",
    "__rfloordiv__",
    "__mod__",
    "__rmod__",
    "__pow__",
    "__rpow__",
    "__neg__",
    "__pos__",
    "__abs__",
    "__invert__",
    "__lt__",
    "__le__",
    "__gt__",
    "__ge__",
    "__and__",
    "__rand__",
    "__xor__",
    "__rxor__",
    "__lshift__",
    "__rshift__",
    "__enter__",
    "__exit__",
    "__await__",
    "__aiter__",
    "__instancecheck__",
    "__subclasscheck__",
    "__array__",
    "__torch_function__",
    "__fspath__",
)
for _name in _FAILING:
    setattr(MockedObject, _name, MockedObject._ferry_fail)


def _placeholder_base(name: str, module: str) -> type:
    def __new__(cls: type, *args: Any, **kwargs: Any) -> NoReturn:  # noqa: N807
        raise _error(name, module)

    return type(name.rpartition(".")[2] or name, (), {"__new__": __new__, "__module__": module})


class MockedModule(types.ModuleType):
    """The stub module itself: registered in sys.modules under the archive's mangled name."""

    def __init__(self, mangled: str, original: str) -> None:
        super().__init__(mangled, f"stub of {original}, mocked when the model was packed")
        self.__ferry_original__ = original

    def __getattr__(self, attr: str) -> Any:
        if _is_dunder(attr):
            raise AttributeError(attr)
        return MockedObject(f"{self.__ferry_original__}.{attr}", self.__ferry_original__)
