"""The registry under real concurrent processes and writers killed mid-add."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
from torch import nn

import torchferry as ferry

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

WRITERS = 8


@pytest.fixture(scope="module")
def archive(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("concurrency") / "m.ferry"
    torch.manual_seed(0)
    ferry.pack(
        nn.Sequential(nn.Linear(512, 512), nn.Linear(512, 8)).eval(), path, example_inputs=torch.randn(2, 512), name="m"
    )
    return path


@pytest.fixture(scope="module")
def other_archive(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Other weights, so that adding it writes new blobs."""
    path = tmp_path_factory.mktemp("concurrency") / "other.ferry"
    torch.manual_seed(1)
    model = nn.Sequential(nn.Linear(512, 512), nn.Linear(512, 8)).eval()
    ferry.pack(model, path, example_inputs=torch.randn(2, 512), name="other")
    return path


def spawn(code: str, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(code), *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def test_concurrent_adds_get_distinct_consecutive_versions(archive: Path, tmp_path: Path) -> None:
    root, go = tmp_path / "registry", tmp_path / "go"
    code = """
        import sys, time
        from pathlib import Path
        import torchferry
        root, archive, go, alias = sys.argv[1:5]
        while not Path(go).exists():
            time.sleep(0.005)
        print(torchferry.Registry(root).add(archive, alias=alias).version)
    """
    writers = [spawn(code, str(root), str(archive), str(go), f"w{i}") for i in range(WRITERS)]
    time.sleep(3)  # let every interpreter import torch and wait at the line
    go.touch()
    versions = []
    for writer in writers:
        out, err = writer.communicate(timeout=180)
        assert writer.returncode == 0, err
        versions.append(int(out.strip()))
    assert sorted(versions) == list(range(1, WRITERS + 1))
    registry = ferry.Registry(root)
    entries = registry.list("m")
    assert [e.version for e in entries] == list(range(1, WRITERS + 1))
    assert sorted(a for e in entries for a in e.aliases) == sorted(f"w{i}" for i in range(WRITERS))
    assert registry.check().ok
    x = torch.randn(2, 512)
    torch.testing.assert_close(registry.load("m@w3")(x), ferry.load_model(archive)(x))


@pytest.mark.parametrize("when", ["mid-blob", "near-the-end"])
def test_a_writer_killed_mid_add_leaves_nothing_gc_cannot_clean(
    archive: Path, other_archive: Path, tmp_path: Path, when: str
) -> None:
    root, marker = tmp_path / "registry", tmp_path / "reached"
    ferry.Registry(root).add(archive, name="kept")
    code = """
        import sys, time
        from pathlib import Path
        import torchferry
        root, archive, marker, when = sys.argv[1:5]
        total = Path(archive).stat().st_size
        seen = 0
        def progress(n):
            global seen
            seen += n
            # progress counts hashing (one pass) then copying; stop half-way through copying, or at its end
            if (when == "mid-blob" and seen > total * 1.3) or (when == "near-the-end" and seen >= 2 * total - 4096):
                Path(marker).touch()
                time.sleep(60)
        torchferry.Registry(root).add(archive, name="lost", progress=progress)
    """
    writer = spawn(code, str(root), str(other_archive), str(marker), when)
    deadline = time.monotonic() + 120
    while not marker.exists():
        assert writer.poll() is None, writer.communicate()[1]
        assert time.monotonic() < deadline
        time.sleep(0.02)
    os.kill(writer.pid, signal.SIGKILL)
    writer.communicate(timeout=30)  # also closes its pipes

    registry = ferry.Registry(root)
    assert [e.ref for e in registry.list()] == ["kept:1"]  # no half entry
    leftovers = [p for p in (root / "blobs").rglob("*") if p.is_file()]
    kept = {registry.blobs.path(sha) for sha, _ in registry.get("kept").members.values()}
    assert set(leftovers) - kept  # the killed writer did leave something behind...
    registry.gc(grace_s=0)
    assert {p for p in (root / "blobs").rglob("*") if p.is_file()} == kept  # ...and gc removed all of it
    assert registry.check().ok
    assert registry.load("kept")(torch.randn(1, 512)).shape == (1, 8)
