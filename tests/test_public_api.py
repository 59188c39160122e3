"""The public facade: what ``import torchferry`` offers, and the error tree's docs."""

from __future__ import annotations

import subprocess
import sys

import pytest

import torchferry
import torchferry.errors

pytestmark = pytest.mark.unit

EXPECTED = {
    "Checkpoint", "FerryError", "LoadReport", "__version__", "load", "load_into", "resume", "save", "save_checkpoint",
    "Classify", "ImageInput", "Manifest", "Packaged", "VerifyReport", "inspect", "load_model", "pack", "verify",
    "Registry", "serve",
}  # fmt: skip


def test_all_is_sorted_and_exact() -> None:
    assert list(torchferry.__all__) == sorted(torchferry.__all__)
    assert set(torchferry.__all__) == EXPECTED
    for name in torchferry.__all__:
        assert getattr(torchferry, name) is not None


def test_every_error_class_is_drawn_in_the_module_docstring_and_documented() -> None:
    doc = torchferry.errors.__doc__ or ""
    for name in torchferry.errors.__all__:
        cls = getattr(torchferry.errors, name)
        assert issubclass(cls, torchferry.FerryError)
        assert name in doc and cls.__doc__, name
        assert isinstance(cls.http_status, int)


def test_import_is_light() -> None:
    """``import torchferry`` must not pull in the CLI stack."""
    code = (
        "import sys, torchferry; "
        "print(' '.join(m for m in ('typer', 'rich', 'fastapi', 'sympy', 'torch._export.serde') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert out.stdout.strip() == ""
