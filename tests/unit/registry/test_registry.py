"""The registry API: versions, aliases, references, dedupe, removal, gc and check."""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

import pytest
import torch
from torch import nn

import torchferry as ferry
from tests.archive_helpers import rebuild
from torchferry.errors import ArchiveError, IntegrityError, NotFoundError, RegistryError, UsageError
from torchferry.registry.refs import Ref, parse_ref

pytestmark = pytest.mark.unit


def blob_bytes(registry: ferry.Registry) -> int:
    return sum(path.stat().st_size for _, path in registry.blobs.all())


@pytest.fixture(scope="module")
def archives(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Two archives with the same weights and different metadata, and one with other weights."""
    folder = tmp_path_factory.mktemp("archives")
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 4)).eval()
    example = torch.randn(2, 64)
    ferry.pack(model, folder / "a.ferry", example_inputs=example, name="clf", metadata={"run": 1})
    ferry.pack(model, folder / "b.ferry", example_inputs=example, name="clf", metadata={"run": 2})
    other = nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 4)).eval()
    ferry.pack(other, folder / "c.ferry", example_inputs=example, name="other")
    return {"a": folder / "a.ferry", "b": folder / "b.ferry", "c": folder / "c.ferry", "model": folder}


@pytest.fixture
def registry(tmp_path: Path) -> ferry.Registry:
    return ferry.Registry(tmp_path / "registry")


@pytest.mark.parametrize(
    ("text", "ref"),
    [
        ("iris", Ref("iris")),
        ("iris:3", Ref("iris", 3)),
        ("iris@production", Ref("iris", alias="production")),
        (" resnet-50.v2:12 ", Ref("resnet-50.v2", 12)),
    ],
)
def test_reference_syntax(text: str, ref: Ref) -> None:
    assert parse_ref(text) == ref
    assert str(ref) == text.strip()


@pytest.mark.parametrize("text", ["", "iris:", "iris:x", "iris@", "iris:3@prod", "../iris", "iris:0", "-iris"])
def test_invalid_references_show_the_syntax(text: str) -> None:
    with pytest.raises(UsageError, match=r"NAME:VERSION \(e\.g\. iris:3\)|versions start at 1"):
        parse_ref(text)


def test_versions_count_up_per_name_and_latest_is_the_default(
    registry: ferry.Registry, archives: dict[str, Path]
) -> None:
    assert registry.add(archives["a"]).ref == "clf:1"
    assert registry.add(archives["b"]).ref == "clf:2"
    assert registry.add(archives["c"]).ref == "other:1"
    assert registry.add(archives["c"], name="clf", version=10).ref == "clf:10"
    assert registry.add(archives["a"], name="clf").ref == "clf:11"
    assert registry.get("clf").version == 11
    assert [e.ref for e in registry.list("clf")] == ["clf:1", "clf:2", "clf:10", "clf:11"]
    with pytest.raises(RegistryError, match="clf:2 already exists"):
        registry.add(archives["a"], version=2)


def test_aliases_move_atomically_and_resolve(registry: ferry.Registry, archives: dict[str, Path]) -> None:
    registry.add(archives["a"], alias="production")
    registry.add(archives["b"], alias="staging")
    assert registry.get("clf@production").version == 1
    moved = registry.alias("clf:2", "production")
    assert moved.aliases == ("production", "staging")
    assert registry.get("clf:1").aliases == ()
    registry.unalias("clf@staging")
    assert registry.get("clf:2").aliases == ("production",)
    with pytest.raises(NotFoundError, match="clf has no alias 'staging'; aliases: production"):
        registry.get("clf@staging")


def test_unknown_names_list_the_closest_first(registry: ferry.Registry, archives: dict[str, Path]) -> None:
    registry.add(archives["a"])
    registry.add(archives["c"])
    with pytest.raises(NotFoundError, match=r"no model named 'clff'.*models: clf, other"):
        registry.get("clff")
    with pytest.raises(NotFoundError, match="clf has no version 5; versions: 1"):
        registry.get("clf:5")


def test_identical_weights_are_stored_once(registry: ferry.Registry, archives: dict[str, Path]) -> None:
    registry.add(archives["a"])
    before = blob_bytes(registry)
    registry.add(archives["b"])  # same weights, other metadata
    grown = blob_bytes(registry) - before
    assert 0 < grown < archives["b"].stat().st_size / 4
    registry.add(archives["a"])  # the very same archive
    assert blob_bytes(registry) - before == grown


def test_load_export_and_path_give_the_same_model(registry: ferry.Registry, archives: dict[str, Path]) -> None:
    registry.add(archives["a"], alias="production")
    x = torch.randn(3, 64)
    want = ferry.load_model(archives["a"])(x)
    torch.testing.assert_close(registry.load("clf@production")(x), want)
    torch.testing.assert_close(ferry.load_model("clf@production", registry=registry)(x), want)
    exported = registry.export("clf:1", archives["model"] / "exported.ferry")
    assert ferry.verify(exported).ok and ferry.verify("clf:1", registry=registry).ok
    assert ferry.inspect("clf", registry=registry).metadata == {"run": 1}
    assert registry.path("clf:1").read_bytes() == exported.read_bytes()


def test_adding_a_tampered_or_foreign_file_changes_nothing(
    registry: ferry.Registry, archives: dict[str, Path], tmp_path: Path
) -> None:
    registry.add(archives["a"])
    data = bytearray(archives["c"].read_bytes())
    data[len(data) // 3] ^= 0xFF
    (tmp_path / "bad.ferry").write_bytes(bytes(data))
    (tmp_path / "notes.txt").write_text("hello")
    before = (blob_bytes(registry), [e.ref for e in registry.list()])
    for bad, error in ((tmp_path / "bad.ferry", IntegrityError), (tmp_path / "notes.txt", ArchiveError)):
        with pytest.raises(error):
            registry.add(bad)
    assert (blob_bytes(registry), [e.ref for e in registry.list()]) == before


def test_remove_refuses_aliased_versions_and_gc_frees_unshared_blobs(
    registry: ferry.Registry, archives: dict[str, Path]
) -> None:
    registry.add(archives["a"], alias="production")
    registry.add(archives["c"], name="clf")
    with pytest.raises(RegistryError, match="clf@production points to"):
        registry.remove("clf:1")
    registry.remove("clf:2")
    report = registry.gc(grace_s=0)
    assert report.blobs_removed >= 2 and report.bytes_freed > 0  # other's weights and manifest
    assert registry.gc(grace_s=0).bytes_freed == 0
    assert registry.check().ok
    registry.remove("clf:1", force=True)
    assert registry.list() == []
    registry.gc(grace_s=0)
    assert blob_bytes(registry) == 0


def test_gc_keeps_young_unreferenced_blobs(registry: ferry.Registry, archives: dict[str, Path]) -> None:
    registry.add(archives["a"])
    registry.remove("clf:1")
    assert registry.gc().blobs_removed == 0  # within the grace period an add may still be writing them
    assert registry.gc(grace_s=0).blobs_removed > 0


def test_check_finds_a_flipped_byte_and_a_missing_blob(registry: ferry.Registry, archives: dict[str, Path]) -> None:
    entry = registry.add(archives["a"])
    weights_sha, _ = entry.members["weights.safetensors"]
    blob = registry.blobs.path(weights_sha)
    data = bytearray(blob.read_bytes())
    data[100] ^= 0x01
    blob.write_bytes(bytes(data))
    graph_sha, _ = entry.members["program/graph.json"]
    registry.blobs.path(graph_sha).unlink()
    report = registry.check()
    assert not report.ok and report.versions == 1
    assert any("clf:1 weights.safetensors" in p and "do not match" in p for p in report.problems)
    assert any("clf:1 program/graph.json" in p and "missing" in p for p in report.problems)
    with pytest.raises(RegistryError, match="run `torchferry registry check`"):
        registry.load("clf:1")


def test_a_damaged_index_is_reported(registry: ferry.Registry, archives: dict[str, Path]) -> None:
    registry.add(archives["a"])
    for suffix in ("", "-wal", "-shm"):
        Path(f"{registry.root / 'index.sqlite'}{suffix}").unlink(missing_ok=True)
    (registry.root / "index.sqlite").write_bytes(b"this is not a database" * 100)
    report = registry.check()
    assert not report.ok and "registry index cannot be opened" in report.problems[0]


def test_default_root_follows_torchferry_home(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("TORCHFERRY_HOME", str(tmp_path / "home"))
    assert ferry.Registry().root == tmp_path / "home"
    assert not (tmp_path / "home").exists()  # created on first use only


def test_removed_version_numbers_are_not_reused(registry: ferry.Registry, archives: dict[str, Path]) -> None:
    registry.add(archives["a"])
    registry.add(archives["b"])
    registry.remove("clf:2")
    assert registry.add(archives["b"]).ref == "clf:3"
    registry.remove("clf:1")
    registry.remove("clf:3")
    assert registry.add(archives["a"]).ref == "clf:4"


def test_a_damaged_index_row_is_reported_not_raised_raw(registry: ferry.Registry, archives: dict[str, Path]) -> None:
    registry.add(archives["a"])
    with sqlite3.connect(registry.root / "index.sqlite") as db:
        db.execute("UPDATE versions SET members = '{bad'")
    db.close()
    with pytest.raises(RegistryError, match=r"the index entry of clf:1 is damaged"):
        registry.get("clf")
    assert "clf:1 is damaged" in registry.check().problems[0]


def test_reusing_a_stored_blob_makes_it_young_again(registry: ferry.Registry, archives: dict[str, Path]) -> None:
    """gc spares young unreferenced blobs; an add that reuses an old one must make it young, or a gc
    running between the add's blob step and its index step would delete what the new entry needs."""
    registry.add(archives["a"])
    registry.remove("clf:1")
    old = 1_000_000_000.0
    for _, blob in registry.blobs.all():
        os.utime(blob, (old, old))
    entry = registry.add(archives["a"])
    for sha, _ in entry.members.values():
        assert registry.blobs.path(sha).stat().st_mtime > old + 1


def test_an_archive_with_an_empty_member_loads_from_the_registry(
    registry: ferry.Registry, archives: dict[str, Path], tmp_path: Path
) -> None:
    """An empty member becomes an empty blob, which cannot be memory-mapped (found in review)."""
    data = rebuild(archives["a"].read_bytes(), add={"extra/empty.txt": b""})
    (tmp_path / "empty.ferry").write_bytes(data)
    registry.add(tmp_path / "empty.ferry")
    x = torch.randn(2, 64)
    torch.testing.assert_close(registry.load("clf")(x), ferry.load_model(archives["a"])(x))
