"""``torchferry registry`` and references in ``inspect``/``verify``, run as real subprocesses.

Each CLI process costs about 2 s (importing torch), so the steps share a registry and
the read-only ones run two at a time; the whole module takes about 30 s on 2 cores.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

import torchferry as ferry
from torchferry.archive.reader import open_archive
from torchferry.cli.main import app, main

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

CLI = [sys.executable, "-m", "torchferry.cli.main"]
Result = subprocess.CompletedProcess[str]


def cli(*args: str | Path, home: Path) -> Result:
    """One ``torchferry`` process; ``home`` is its ``TORCHFERRY_HOME`` so no test touches the user's registry."""
    env = {"COLUMNS": "200", "PATH": "", "TORCHFERRY_HOME": str(home), "PYTHONIOENCODING": "utf-8"}
    return subprocess.run(
        [*CLI, *map(str, args)], capture_output=True, text=True, encoding="utf-8", timeout=120, env=env
    )


def in_parallel(home: Path, *commands: tuple[str | Path, ...]) -> list[Result]:
    """Run independent commands two at a time (they only read, or change different things)."""
    with ThreadPoolExecutor(max_workers=2) as pool:
        return list(pool.map(lambda args: cli(*args, home=home), commands))


def explain(result: Result) -> str:
    return f"exit {result.returncode}\n--- stdout ---\n{result.stdout}\n--- stderr ---\n{result.stderr}"


@pytest.fixture(scope="module")
def archives(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """Two versions of one tiny classifier: the same weights, graph and examples; another description."""
    folder = tmp_path_factory.mktemp("archives")
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3)).eval()
    example = torch.randn(2, 4)
    first, second = folder / "tiny.ferry", folder / "tiny-2.ferry"
    ferry.pack(model, first, example_inputs=example, name="tiny", labels=["a", "b", "c"])
    ferry.pack(model, second, example_inputs=example, name="tiny", labels=["a", "b", "c"], description="again")
    return first, second


def test_every_command_has_examples_in_its_help() -> None:
    runner = CliRunner()
    group = runner.invoke(app, ["registry", "--help"], terminal_width=200)
    assert group.exit_code == 0 and "--root" in group.output and "TORCHFERRY_HOME" in group.output
    for command in ("add", "ls", "show", "alias", "unalias", "rm", "gc", "check", "export"):
        result = runner.invoke(app, ["registry", command, "--help"], terminal_width=200)
        assert result.exit_code == 0 and f"torchferry registry {command}" in result.output, command
        assert "Examples:" in result.output, command


def test_registry_workflow_from_add_to_gc(
    archives: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    first, second = archives
    root, home = tmp_path / "registry", tmp_path / "home"
    reg = ("registry", "--root", root)

    added = cli(*reg, "add", first, "--alias", "production", home=home)
    assert added.returncode == 0, explain(added)
    assert f"added {first} as tiny:1 (tiny@production)" in added.stdout
    assert "input: float32[?,4] → output: float32[?,3]" in added.stdout
    again = cli(*reg, "add", second, "--json", home=home)
    assert again.returncode == 0, explain(again)
    entry = json.loads(again.stdout)
    assert (entry["ref"], entry["version"], entry["aliases"]) == ("tiny:2", 2, [])
    assert entry["summary"]["description"] == "again" and entry["summary"]["kind"] == "export"

    (
        table,
        listed,
        shown,
        detail,
        inspected,
        inspected_json,
        verified,
        checked,
        *errors,
    ) = in_parallel(
        home,
        (*reg, "ls"),
        (*reg, "ls", "tiny", "--json"),
        (*reg, "show", "tiny@production", "--json"),
        (*reg, "show", "tiny:2"),
        ("inspect", "tiny@production", "--registry", root),
        ("inspect", "tiny:2", "--json", "--registry", root),
        ("verify", "tiny@production", "--registry", root),
        (*reg, "check"),
        # errors (more run in-process below): nothing here changes the registry
        (*reg, "show", "nope"),
        ("inspect", "bad ref!", "--registry", root),
    )
    for result in (table, listed, shown, detail, inspected, inspected_json, verified, checked):
        assert result.returncode == 0, explain(result)
    for ref, aliases in (("tiny:1", "production"), ("tiny:2", "")):
        row = next(line for line in table.stdout.splitlines() if f" {ref} " in line)
        assert aliases in row and "export" in row and "float32[?,4] → output: float32[?,3]" in row and "KiB" in row
    assert "2 versions of 1 model" in table.stdout
    assert [e["ref"] for e in json.loads(listed.stdout)] == ["tiny:1", "tiny:2"]

    details = json.loads(shown.stdout)
    assert details["ref"] == "tiny:1" and details["aliases"] == ["production"]
    weights = details["members"]["weights.safetensors"]
    assert weights["shared_with"] == ["tiny:2"]  # stored once for both versions
    assert details["members"]["ferry.json"]["shared_with"] == []
    assert details["size"] == sum(m["size"] for m in details["members"].values())
    assert "weights.safetensors" in detail.stdout and "tiny:1" in detail.stdout and "again" in detail.stdout

    assert "tiny:1, tiny@production in the registry at" in inspected.stdout and "signature" in inspected.stdout
    assert json.loads(inspected_json.stdout)["description"] == "again"
    assert "tiny:1: OK" in verified.stdout and "sha256 of 4 members: ok" in verified.stdout
    assert "index ok, 2 versions, sha256 of 6 blobs ok" in checked.stdout

    for result in errors:
        assert result.returncode == 1, explain(result)
        assert result.stderr.startswith("error: ") and "Traceback" not in result.stderr, explain(result)
    missing, bad = (e.stderr for e in errors)
    assert "no model named 'nope'" in missing and "models: tiny" in missing
    assert "not a registry reference" in bad and "NAME@ALIAS" in bad
    # The same error path in this process, where each costs milliseconds instead of seconds.
    monkeypatch.setenv("TORCHFERRY_HOME", str(home))  # holds no registry
    for args, message in (
        ((*reg, "show", "tiny@staging"), "tiny has no alias 'staging'; aliases: production"),
        (("inspect", "tiny"), "tiny: no such file, and there is no registry at"),
        ((*reg, "rm", "tiny"), "rm removes one version: write tiny:2"),
        ((*reg, "rm", "tiny@production"), "tiny:1 is what tiny@production points to"),
        ((*reg, "unalias", "tiny:1"), "unalias takes NAME@ALIAS"),
        ((*reg, "add", first, "--version", "1"), "tiny:1 already exists"),
        ((*reg, "ls", "tiny:1"), "name 'tiny:1' is not valid"),
    ):
        assert main([str(a) for a in args]) == 1, args
        err = capsys.readouterr().err
        assert err.startswith("error: ") and message in " ".join(err.split()), (args, err)

    moved, exported = in_parallel(
        home,
        (*reg, "alias", "tiny:2", "production"),
        (*reg, "export", "tiny:1", "-o", tmp_path / "out.ferry"),
    )
    assert moved.returncode == 0 and "tiny@production → tiny:2 (was tiny:1)" in moved.stdout, explain(moved)
    assert exported.returncode == 0 and "from tiny:1" in exported.stdout, explain(exported)
    assert ferry.verify(tmp_path / "out.ferry").ok
    out_members = open_archive(tmp_path / "out.ferry").manifest.members
    assert out_members == open_archive(first).manifest.members

    removed, unaliased = in_parallel(home, (*reg, "rm", "tiny:1"), (*reg, "unalias", "tiny@production"))
    assert removed.returncode == 0 and "removed tiny:1" in removed.stdout, explain(removed)
    assert unaliased.returncode == 0 and "removed tiny@production" in unaliased.stdout, explain(unaliased)

    assert main([str(a) for a in (*reg, "gc")]) == 0
    assert "removed 0 blobs, freed 0 B (grace period 3600 s)" in capsys.readouterr().out  # all are too young
    collected = cli(*reg, "gc", "--grace", "0", "--json", home=home)
    assert collected.returncode == 0, explain(collected)
    report = json.loads(collected.stdout)
    # Only tiny:1's own ferry.json goes: weights, graph and examples are tiny:2's too.
    assert report["blobs_removed"] == 1 and report["bytes_freed"] > 0
    after = ferry.Registry(root)
    assert [e.ref for e in after.list()] == ["tiny:2"] and after.check().ok
    assert after.load("tiny")(torch.randn(3, 4)).shape == (3, 3)


def test_check_reports_missing_and_damaged_blobs_and_a_broken_index(
    archives: tuple[Path, Path], tmp_path: Path
) -> None:
    first, _ = archives
    damaged, broken, empty = tmp_path / "damaged", tmp_path / "broken", tmp_path / "empty"
    entry = ferry.Registry(damaged).add(first, alias="production")
    shutil.copytree(damaged, broken)
    (broken / "index.sqlite").write_bytes(b"this is not a database" * 100)
    for suffix in ("-wal", "-shm"):
        (broken / f"index.sqlite{suffix}").unlink(missing_ok=True)
    weights_sha, _ = entry.members["weights.safetensors"]
    graph_sha, _ = entry.members["program/graph.json"]
    registry = ferry.Registry(damaged)
    registry.blobs.path(weights_sha).unlink()
    graph = registry.blobs.path(graph_sha)
    graph.write_bytes(graph.read_bytes().replace(b"{", b"[", 1))

    table, as_json, index, listing, verified, nothing = in_parallel(
        tmp_path,
        ("registry", "--root", damaged, "check"),
        ("registry", "--root", damaged, "check", "--json"),
        ("registry", "--root", broken, "check"),
        ("registry", "--root", broken, "ls"),
        ("verify", "tiny@production", "--registry", damaged),
        ("registry", "--root", empty, "ls"),
    )
    assert table.returncode == 1, explain(table)
    assert "2 problems (1 version, 5 blobs checked)" in table.stderr
    assert f"blob {weights_sha[:16]}… (tiny:1 weights.safetensors): missing" in table.stderr
    assert "(tiny:1 program/graph.json): its bytes do not match its sha256" in table.stderr
    report = json.loads(as_json.stdout)
    assert as_json.returncode == 1 and report["ok"] is False and len(report["problems"]) == 2
    assert index.returncode == 1 and "the registry index cannot be opened" in index.stderr, explain(index)
    assert listing.returncode == 1 and listing.stderr.startswith("error: ") and "cannot be opened" in listing.stderr
    assert verified.returncode == 1 and "is missing or truncated" in verified.stderr, explain(verified)
    assert nothing.returncode == 0 and "no models in" in nothing.stdout and not empty.exists(), explain(nothing)


def test_check_reports_a_damaged_index_page(archives: tuple[Path, Path], tmp_path: Path) -> None:
    """SQLite opens the file (page 1 is intact) but every query fails; check must still report it."""
    ferry.Registry(tmp_path / "registry").add(archives[0])
    index = tmp_path / "registry" / "index.sqlite"
    data = bytearray(index.read_bytes())
    data[4096:] = b"\xff" * (len(data) - 4096)
    index.write_bytes(bytes(data))
    assert main(["registry", "--root", str(tmp_path / "registry"), "check"]) == 1
