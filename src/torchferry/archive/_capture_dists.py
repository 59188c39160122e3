"""Installed distributions: which one provides a module, at which version, and whether it
was installed from a source folder (editable), where its files live outside site-packages."""

from __future__ import annotations

import ast
import importlib.metadata
import json
from collections.abc import Iterable, Mapping
from pathlib import Path

_SITE_DIRS = {"site-packages", "dist-packages"}


def in_site_packages(path: str) -> bool:
    return any(part in _SITE_DIRS for part in Path(path).parts)


def _is_editable(dist: importlib.metadata.Distribution) -> bool:
    text = dist.read_text("direct_url.json")
    if not text:
        return False
    try:
        info = json.loads(text)
    except ValueError:
        return False
    return isinstance(info, dict) and bool(info.get("dir_info", {}).get("editable"))


def _pth_folders(pth: Path) -> list[Path]:
    """Folders a ``.pth`` file adds to sys.path (``import`` lines run code; they are not folders)."""
    try:
        lines = pth.read_text().splitlines()
    except (OSError, UnicodeDecodeError):
        return []
    found = []
    for line in lines:
        line = line.strip()
        if line and not line.startswith(("#", "import ", "import\t")):
            folder = (pth.parent / line).resolve()
            if folder.is_dir():
                found.append(folder)
    return found


def _finder_mapping(finder: Path) -> dict[str, Path]:
    """setuptools' editable finder keeps ``MAPPING = {"top": "/src/top", ...}`` as a literal."""
    try:
        tree = ast.parse(finder.read_bytes())
    except (OSError, SyntaxError, ValueError):
        return {}
    for node in tree.body:
        target: ast.expr
        if isinstance(node, ast.AnnAssign):
            target, value = node.target, node.value
        elif isinstance(node, ast.Assign) and len(node.targets) == 1:
            target, value = node.targets[0], node.value
        else:
            continue
        if isinstance(target, ast.Name) and target.id == "MAPPING" and value is not None:
            try:
                mapping = ast.literal_eval(value)
            except ValueError:
                return {}
            return {str(k): Path(v) for k, v in mapping.items()} if isinstance(mapping, dict) else {}
    return {}


def _is_under(path: Path, folder: Path) -> bool:
    try:
        path.relative_to(folder)
    except ValueError:
        return False
    return True


class Distributions:
    """Lookups over the installed distributions, computed once per capture."""

    def __init__(self) -> None:
        self._top_map: Mapping[str, list[str]] | None = None
        self._editable: list[tuple[Path, str, str | None]] | None = None

    @property
    def _tops(self) -> Mapping[str, list[str]]:
        if self._top_map is None:  # ~0.1-0.5 s: only when a module outside stdlib and torch is met
            self._top_map = importlib.metadata.packages_distributions()
        return self._top_map

    def requirement(self, top: str, file: str | None) -> tuple[str, str] | None:
        if top == "torch":
            return "torch", importlib.metadata.version("torch")
        names = list(dict.fromkeys(self._tops.get(top, [])))
        if len(names) > 1 and file is not None:  # namespace packages (google.*) are shared by several
            names = [n for n in names if self._has_file(n, file)] or names
        if not names:
            return None
        dist = importlib.metadata.distribution(names[0])
        return str(dist.metadata["Name"]), dist.version

    @staticmethod
    def _has_file(dist_name: str, file: str) -> bool:
        target = Path(file).resolve()
        files = importlib.metadata.distribution(dist_name).files or []
        return any(Path(str(f.locate())).resolve() == target for f in files)

    def source_checkout_owner(self, top: str, where: Iterable[str]) -> str | None:
        """The distribution that provides ``top`` although its files here live outside site-packages."""
        names = self._tops.get(top)
        if names:
            return names[0]
        paths = [Path(p).resolve() for p in where]
        for folder, dist, mapped_top in self._editable_roots():
            if mapped_top is not None and mapped_top != top:
                continue
            for path in paths:
                if _is_under(path, folder) and (mapped_top or path.relative_to(folder).parts[0] in (top, f"{top}.py")):
                    return dist
        return None

    def _editable_roots(self) -> list[tuple[Path, str, str | None]]:
        if self._editable is None:
            self._editable = []
            for dist in importlib.metadata.distributions():
                if _is_editable(dist):
                    self._editable += _roots_of(dist)
        return self._editable


def _roots_of(dist: importlib.metadata.Distribution) -> list[tuple[Path, str, str | None]]:
    name = str(dist.metadata["Name"])
    roots: list[tuple[Path, str, str | None]] = []
    for file in dist.files or []:
        located = Path(str(file.locate()))
        if file.name.endswith(".pth"):
            roots += [(folder, name, None) for folder in _pth_folders(located)]
        elif file.name.startswith("__editable__") and file.name.endswith("_finder.py"):
            roots += [(folder.resolve(), name, top) for top, folder in _finder_mapping(located).items()]
    return roots
