"""docs/format.md and the manifest agree: every field written is documented, and vice versa."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

import torchferry as ferry

pytestmark = pytest.mark.unit

DOC = Path(__file__).resolve().parents[3] / "docs" / "format.md"


def documented_fields() -> set[str]:
    section = DOC.read_text().split("## The manifest", 1)[1].split("\n### ", 1)[0]
    return set(re.findall(r"^\| `(\w+)` \|", section, flags=re.MULTILINE))


def test_manifest_fields_are_exactly_the_documented_ones(tmp_path: Path) -> None:
    manifest = ferry.pack(torch.nn.Linear(4, 3), tmp_path / "m.ferry", example_inputs=torch.randn(2, 4))
    assert set(manifest.to_dict()) == documented_fields()


def test_documented_members_include_every_member_pack_writes(tmp_path: Path) -> None:
    manifest = ferry.pack(torch.nn.Linear(4, 3), tmp_path / "m.ferry", example_inputs=torch.randn(2, 4))
    text = DOC.read_text()
    for name in manifest.members:
        assert f"`{name}`" in text
