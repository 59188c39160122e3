"""End-to-end checks of ``examples/iris``: the demo that ``make demo`` runs, for real.

Everything runs as subprocesses of the test's own interpreter, as a user would run it,
so these tests catch what unit tests cannot: a weights file that does not survive a
process boundary, a checkpoint that does not resume, a script that prints the wrong thing.
The demo runs once per module, beside an uninterrupted training run to compare it with
(about 25 s on 2 cores, mostly each process importing torch and scikit-learn).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

import torchferry as ferry

IRIS = Path(__file__).resolve().parents[2] / "examples" / "iris"
ACCURACY_LINE = re.compile(r"^\s*test accuracy (\d\.\d+) \((\d+)/(\d+)\)$", re.MULTILINE)
SAVED_FILES = ("iris.safetensors", "iris-ckpt.safetensors", "accuracy.txt")
TIMEOUT_S = 120

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


def run_example(script: str, *args: str | Path, cwd: Path) -> subprocess.CompletedProcess[str]:
    """Run an example script in a fresh interpreter; output is captured as UTF-8 (the demo prints a check mark)."""
    return subprocess.run(
        [sys.executable, str(IRIS / script), *map(str, args)],
        cwd=cwd,
        capture_output=True,
        encoding="utf-8",
        env={**os.environ, "PYTHONIOENCODING": "utf-8"},
        timeout=TIMEOUT_S,
        check=False,
    )


def explain(result: subprocess.CompletedProcess[str]) -> str:
    """What to show when an assertion about a subprocess fails."""
    return f"exit status {result.returncode}\n--- stdout ---\n{result.stdout}\n--- stderr ---\n{result.stderr}"


@dataclass(frozen=True)
class Runs:
    """The subprocess results the tests look at, produced once for the module."""

    demo: subprocess.CompletedProcess[str]
    demo_dir: Path
    straight: subprocess.CompletedProcess[str]
    """``train.py --epochs 110`` in one go: what the demo's 100 + resume + 10 must equal."""
    straight_dir: Path
    tampered: subprocess.CompletedProcess[str] | None
    """``evaluate.py`` on a copy of ``straight_dir`` whose accuracy.txt says 0.5."""


def straight_then_tampered(
    root: Path,
) -> tuple[subprocess.CompletedProcess[str], subprocess.CompletedProcess[str] | None]:
    """Train 110 epochs without a break, then evaluate a copy whose recorded accuracy is wrong."""
    straight = run_example("train.py", "--workdir", root / "straight", "--epochs", "110", cwd=root)
    if straight.returncode != 0:
        return straight, None
    shutil.copytree(root / "straight", root / "tampered")
    (root / "tampered" / "accuracy.txt").write_text("0.5\n", encoding="utf-8")
    return straight, run_example("evaluate.py", "--workdir", root / "tampered", cwd=root)


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> Runs:
    """The demo with its defaults in a fresh work directory and, on the other core, the runs it is compared with."""
    root = tmp_path_factory.mktemp("iris")
    with ThreadPoolExecutor(max_workers=2) as pool:
        demo = pool.submit(run_example, "demo.py", "--workdir", root / "demo", cwd=root)
        others = pool.submit(straight_then_tampered, root)
        straight, tampered = others.result()
        return Runs(demo.result(), root / "demo", straight, root / "straight", tampered)


def test_demo_succeeds_and_saves_every_file(runs: Runs) -> None:
    assert runs.demo.returncode == 0, explain(runs.demo)
    for name in SAVED_FILES:
        assert (runs.demo_dir / name).is_file(), f"{name} missing\n{explain(runs.demo)}"
    for step in ("1/3 train", "2/3 reload in a fresh process", "3/3 resume"):
        assert step in runs.demo.stdout


def test_reloaded_model_scores_the_training_accuracy(runs: Runs) -> None:
    assert runs.demo.returncode == 0, explain(runs.demo)
    # Printed by train.py, then evaluate.py, then train.py --resume.
    trained, reloaded, *_ = ACCURACY_LINE.findall(runs.demo.stdout)
    assert reloaded == trained
    assert int(trained[1]) / int(trained[2]) > 0.9, "the example should learn Iris well"
    assert f"same accuracy {trained[0]}" in runs.demo.stdout


def test_demo_picks_up_the_checkpoint_where_it_stopped(runs: Runs) -> None:
    assert runs.demo.returncode == 0, explain(runs.demo)
    assert "at epoch 100" in runs.demo.stdout
    state = ferry.load(runs.demo_dir / "iris-ckpt.safetensors")
    assert state["epoch"] == 110
    assert isinstance(state["extra"]["loss"], float)


def test_resuming_equals_training_without_a_break(runs: Runs) -> None:
    """The demo's 100 + resume + 10 epochs must give the weights of 110 epochs in one go, bit for bit.

    That holds only if resume restored Adam's moments and step counts, not just the weights.
    """
    assert runs.demo.returncode == 0, explain(runs.demo)
    assert runs.straight.returncode == 0, explain(runs.straight)
    expected = ferry.load(runs.straight_dir / "iris.safetensors")
    resumed = ferry.load(runs.demo_dir / "iris.safetensors")
    assert expected.keys() == resumed.keys()
    for key, tensor in expected.items():
        assert torch.equal(resumed[key], tensor), key
    expected_loss = ferry.load(runs.straight_dir / "iris-ckpt.safetensors")["extra"]["loss"]
    assert ferry.load(runs.demo_dir / "iris-ckpt.safetensors")["extra"]["loss"] == expected_loss


def test_evaluate_fails_when_the_accuracy_differs(runs: Runs) -> None:
    """The equality check must be able to fail, or "same accuracy" would prove nothing."""
    assert runs.straight.returncode == 0, explain(runs.straight)
    assert runs.tampered is not None
    assert runs.tampered.returncode == 1, explain(runs.tampered)
    assert "but training measured 0.5000" in runs.tampered.stderr
