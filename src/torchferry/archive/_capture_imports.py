"""Static scan of one module's source for the modules it imports.

Like torch.package we read ``import`` statements instead of running anything, but we also
look inside functions and ``try`` blocks, follow ``__import__("x")`` and
``importlib.import_module("x")`` with literal names, and remember which imports are
*guarded* (inside ``try: ... except ImportError`` or ``if TYPE_CHECKING:``): such code
already copes with a missing module, so a guarded import that is not installed is no
reason to refuse packing.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass

_IMPORT_ERRORS = {"ImportError", "ModuleNotFoundError", "Exception", "BaseException"}


@dataclass(frozen=True)
class FoundImport:
    module: str
    """Absolute name of the module the statement imports."""
    names: tuple[str, ...]
    """For ``from module import a, b``: the names, which may be submodules."""
    guarded: bool


def _catches_import_error(handler: ast.ExceptHandler) -> bool:
    kinds = handler.type
    if kinds is None:
        return True
    elts = kinds.elts if isinstance(kinds, ast.Tuple) else [kinds]
    return any(isinstance(e, ast.Name) and e.id in _IMPORT_ERRORS for e in elts)


def _is_type_checking(test: ast.expr) -> bool:
    if isinstance(test, ast.Name):
        return test.id == "TYPE_CHECKING"
    return isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"


def _literal_import_call(node: ast.Call) -> str | None:
    """``__import__("x")`` / ``importlib.import_module("x")`` with an absolute literal name."""
    func = node.func
    name = func.id if isinstance(func, ast.Name) else func.attr if isinstance(func, ast.Attribute) else ""
    if name not in {"__import__", "import_module"} or not node.args:
        return None
    first = node.args[0]
    if isinstance(first, ast.Constant) and isinstance(first.value, str) and not first.value.startswith("."):
        return first.value
    return None


class _Scanner(ast.NodeVisitor):
    def __init__(self, module: str, is_package: bool) -> None:
        self.package = module if is_package else module.rpartition(".")[0]
        self.guard = 0
        self.found: list[FoundImport] = []

    def _add(self, module: str, names: tuple[str, ...] = ()) -> None:
        self.found.append(FoundImport(module, names, self.guard > 0))

    def _guarded(self, nodes: list[ast.stmt]) -> None:
        self.guard += 1
        for node in nodes:
            self.visit(node)
        self.guard -= 1

    def visit_Try(self, node: ast.Try) -> None:
        if any(_catches_import_error(h) for h in node.handlers):
            self._guarded(node.body)
        else:
            for stmt in node.body:
                self.visit(stmt)
        rest: list[ast.AST] = [*node.handlers, *node.orelse, *node.finalbody]
        for other in rest:
            self.visit(other)

    def visit_TryStar(self, node: ast.AST) -> None:  # ``except*`` (3.11+) has the same fields as ``try``
        self.visit_Try(node)  # type: ignore[arg-type]

    def visit_If(self, node: ast.If) -> None:
        if _is_type_checking(node.test):
            self._guarded(node.body)
            for stmt in node.orelse:
                self.visit(stmt)
        else:
            self.generic_visit(node)

    def visit_Import(self, node: ast.Import) -> None:
        for alias in node.names:
            self._add(alias.name)

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        module = self._absolute(node.module or "", node.level)
        if module:
            self._add(module, tuple(a.name for a in node.names if a.name != "*"))

    def visit_Call(self, node: ast.Call) -> None:
        target = _literal_import_call(node)
        if target:
            self._add(target)
        self.generic_visit(node)

    def _absolute(self, name: str, level: int) -> str:
        if level == 0:
            return name
        bits = self.package.split(".") if self.package else []
        if level - 1 >= len(bits):
            return ""  # beyond the top-level package: Python fails there too, at run time
        base = ".".join(bits[: len(bits) - (level - 1)])
        return f"{base}.{name}" if name else base


def scan_imports(source: bytes, module: str, *, is_package: bool) -> list[FoundImport]:
    """Every import in ``source``; raises SyntaxError when the file does not parse."""
    scanner = _Scanner(module, is_package)
    scanner.visit(ast.parse(source, filename=f"<{module}>"))
    return scanner.found
