"""Layering rule of DESIGN.md: a module imports only its own layer and the layers below."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

SRC = Path(__file__).resolve().parents[1] / "src" / "torchferry"
ORDER = ["errors", "state", "archive", "runtime", "registry", "serving", "cli", "integrations"]
BASE = {"_types", "_util", "_version", "errors"}  # importable from every layer
THIRD_PARTY_HOMES = {"typer": "cli", "rich": "cli", "fastapi": "serving", "uvicorn": "serving", "ray": "integrations"}


def layer_of(path: Path) -> str:
    parts = path.relative_to(SRC).parts
    return parts[0] if len(parts) > 1 else path.stem


def imports(path: Path) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
    return found


@pytest.mark.parametrize("path", sorted(SRC.rglob("*.py")), ids=lambda p: str(p.relative_to(SRC)))
def test_module_respects_layers(path: Path) -> None:
    layer = layer_of(path)
    if layer == "__init__" or layer in BASE:
        return
    rank = ORDER.index(layer)
    for name in imports(path):
        top, _, rest = name.partition(".")
        if top == "torchferry" and rest:
            target = rest.split(".")[0]
            if target not in BASE:
                assert ORDER.index(target) <= rank, f"{path.name} ({layer}) imports higher layer {name}"
        home = THIRD_PARTY_HOMES.get(top)
        assert home is None or home == layer, f"{path.name} ({layer}) imports {top}, which belongs in {home}/"
