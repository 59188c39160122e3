"""End-to-end checks of the examples: ``examples/iris`` (the demo ``make demo`` runs),
``examples/dcgan`` and ``examples/lenet``, for real.

Everything runs as subprocesses of the test's own interpreter, as a user would run it,
so these tests catch what unit tests cannot: a weights file that does not survive a
process boundary, a checkpoint that does not resume, an archive that needs the model's
class after all, a script that prints the wrong thing. Each example script runs once per
test module. The Iris demo runs beside an uninterrupted training run to compare it with;
the DCGAN and LeNet scripts each start one more interpreter (in a temporary directory
where the model's code cannot be imported). About 65 s on 2 idle cores, mostly each process
importing torch and scikit-learn, and ``torch.export`` (about 1 s per archive).
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

import numpy as np
import pytest
import torch
from PIL import Image

import torchferry as ferry

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
IRIS = EXAMPLES / "iris"
ACCURACY_LINE = re.compile(r"^\s*test accuracy (\d\.\d+) \((\d+)/(\d+)\)$", re.MULTILINE)
DIFFERENCE = re.compile(r"max abs difference (\S+) from the (?:original generator|trained model)")
SAVED_FILES = ("iris.safetensors", "iris-ckpt.safetensors", "accuracy.txt", "iris.ferry", "iris-test.json")
SPECIES = ("setosa", "versicolor", "virginica")
TIMEOUT_S = 300
"""Per subprocess; generous because the Iris demo is one subprocess that starts six interpreters in turn."""

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


def run_example(script: str | Path, *args: str | Path, cwd: Path) -> subprocess.CompletedProcess[str]:
    """Run an example script (a path relative to ``examples/iris`` or absolute) in a fresh interpreter;
    output is captured as UTF-8 (the demo prints a check mark)."""
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
    tampered_pack: subprocess.CompletedProcess[str] | None
    """``pack.py`` on that same copy: the archive's accuracy must not match 0.5 either."""


def straight_then_tampered(
    root: Path,
) -> tuple[
    subprocess.CompletedProcess[str], subprocess.CompletedProcess[str] | None, subprocess.CompletedProcess[str] | None
]:
    """Train 110 epochs without a break, then evaluate and pack a copy whose recorded accuracy is wrong."""
    straight = run_example("train.py", "--workdir", root / "straight", "--epochs", "110", cwd=root)
    if straight.returncode != 0:
        return straight, None, None
    shutil.copytree(root / "straight", root / "tampered")
    (root / "tampered" / "accuracy.txt").write_text("0.5\n", encoding="utf-8")
    evaluated = run_example("evaluate.py", "--workdir", root / "tampered", cwd=root)
    return straight, evaluated, run_example("pack.py", "--workdir", root / "tampered", cwd=root)


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> Runs:
    """The demo with its defaults in a fresh work directory and, on the other core, the runs it is compared with."""
    root = tmp_path_factory.mktemp("iris")
    with ThreadPoolExecutor(max_workers=2) as pool:
        demo = pool.submit(run_example, "demo.py", "--workdir", root / "demo", cwd=root)
        others = pool.submit(straight_then_tampered, root)
        straight, tampered, tampered_pack = others.result()
        return Runs(demo.result(), root / "demo", straight, root / "straight", tampered, tampered_pack)


def test_demo_succeeds_and_saves_every_file(runs: Runs) -> None:
    assert runs.demo.returncode == 0, explain(runs.demo)
    for name in SAVED_FILES:
        assert (runs.demo_dir / name).is_file(), f"{name} missing\n{explain(runs.demo)}"
    steps = ("1/6 train", "2/6 reload in a fresh process", "3/6 resume", "4/6 pack", "5/6 keep iris.ferry", "6/6 serve")
    for step in steps:
        assert step in runs.demo.stdout


def test_demo_serves_queries_batches_and_shuts_down_cleanly(runs: Runs) -> None:
    assert runs.demo.returncode == 0, explain(runs.demo)
    out = runs.demo.stdout
    assert "setosa" in out.split("torchferry predict", 1)[1]  # the CLI asked the server
    assert 'torchferry_requests_total{model="iris",protocol="v2",status="200",version="1"} 128.0' in out
    assert "drained and exited 0" in out


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


def test_archive_scores_the_training_accuracy_without_the_class(runs: Runs) -> None:
    """pack.py's fresh process cannot import Multiclass, and still scores what training measured."""
    assert runs.demo.returncode == 0, explain(runs.demo)
    # train.py, evaluate.py, train.py --resume, then predict.py on the archive of the resumed weights.
    _, _, resumed, from_archive = ACCURACY_LINE.findall(runs.demo.stdout)
    assert from_archive == resumed
    assert "module 'model' (where Multiclass is defined) importable here: no" in runs.demo.stdout
    assert f"same accuracy {resumed[0]} from the archive alone" in runs.demo.stdout
    labels = re.findall(r"^\s*flower \d \[[\d. ]+\] -> (\w+) +p=0\.\d\d  true (\w+) ", runs.demo.stdout, re.MULTILINE)
    assert len(labels) == 5
    assert all(predicted in SPECIES and truth in SPECIES for predicted, truth in labels)


def test_demo_archive_is_exported_labelled_and_verifies(runs: Runs) -> None:
    assert runs.demo.returncode == 0, explain(runs.demo)
    archive = runs.demo_dir / "iris.ferry"
    assert ferry.verify(archive).ok
    model = ferry.load_model(archive)
    assert model.kind == "export"
    assert model.labels == SPECIES
    (ranked,) = model.predict([[5.1, 3.5, 1.4, 0.2]])["output"]  # a textbook setosa
    assert ranked[0]["label"] == "setosa"


def test_demo_registers_the_archive_and_loads_it_by_alias(runs: Runs) -> None:
    """Step 5: the archive goes into a registry inside the work directory (not the user's home)
    as iris@production, and a fresh process loads it by that name."""
    assert runs.demo.returncode == 0, explain(runs.demo)
    assert f"added {runs.demo_dir / 'iris.ferry'} as iris:1 (iris@production)" in runs.demo.stdout
    assert "load_model('iris@production') is iris:1: [5.1, 3.5, 1.4, 0.2] -> setosa p=" in runs.demo.stdout
    registry = ferry.Registry(runs.demo_dir / "registry")
    assert [(e.ref, e.aliases) for e in registry.list()] == [("iris:1", ("production",))]
    assert registry.check().ok
    stored = registry.reader("iris@production").manifest
    assert stored.members == ferry.inspect(runs.demo_dir / "iris.ferry").members  # the very same archive


def test_pack_fails_when_the_archive_accuracy_differs(runs: Runs) -> None:
    """pack.py's equality check must be able to fail too."""
    assert runs.tampered_pack is not None, explain(runs.straight)
    assert runs.tampered_pack.returncode == 1, explain(runs.tampered_pack)
    assert "but training measured 0.5000" in runs.tampered_pack.stderr


# --- examples/dcgan: a generator whose code spans a package, packed twice ------------------------

DCGAN = EXAMPLES / "dcgan"
GRID_PIXELS = (138, 138)
"""4x4 images of 32x32 with 2 pixels of padding around each: 4 * (32 + 2) + 2."""


@dataclass(frozen=True)
class ScriptRun:
    """One run of an example script and the work directory it wrote to."""

    result: subprocess.CompletedProcess[str]
    workdir: Path


@pytest.fixture(scope="module")
def dcgan(tmp_path_factory: pytest.TempPathFactory) -> ScriptRun:
    workdir = tmp_path_factory.mktemp("dcgan")
    return ScriptRun(run_example(DCGAN / "pack_and_generate.py", "--workdir", workdir, cwd=workdir), workdir)


def test_dcgan_auto_mode_exports_and_python_mode_captures_the_package(dcgan: ScriptRun) -> None:
    """What the packing half of the script did (whether the loading half passed is checked below)."""
    assert "mode='auto' chose export" in dcgan.result.stdout, explain(dcgan.result)
    assert "packed dcgan-python.ferry: mode='python'" in dcgan.result.stdout, explain(dcgan.result)
    exported = ferry.inspect(dcgan.workdir / "dcgan-export.ferry")
    assert exported.kind == "export"
    assert exported.program.get("fallback_reason") is None
    captured = ferry.inspect(dcgan.workdir / "dcgan-python.ferry")
    assert captured.kind == "python"
    interned = set(captured.program["interned"])
    assert {"models", "models.networks.dcgan_nets", "models.utils.config"} <= interned
    assert all(name == "models" or name.startswith("models.") for name in interned)
    assert "numpy" in captured.program["externed"]
    assert "numpy" in captured.requirements
    # The captured code rebuilds the generator here too (models/ is not importable from the tests).
    assert ferry.verify(dcgan.workdir / "dcgan-python.ferry", trust_code=True).ok
    assert ferry.verify(dcgan.workdir / "dcgan-export.ferry").ok


def test_dcgan_archives_generate_the_original_images_without_the_package(dcgan: ScriptRun) -> None:
    assert dcgan.result.returncode == 0, explain(dcgan.result)
    assert "package 'models' importable here: no" in dcgan.result.stdout
    assert "dcgan-python.ferry: without trust_code: UntrustedCodeError" in dcgan.result.stdout
    differences = [float(value) for value in DIFFERENCE.findall(dcgan.result.stdout)]
    assert len(differences) == 2
    assert max(differences) <= 1e-5
    for name in ("dcgan-export.png", "dcgan-python.png"):
        with Image.open(dcgan.workdir / name) as image:
            image.verify()
        with Image.open(dcgan.workdir / name) as image:
            assert (image.format, image.size, image.mode) == ("PNG", GRID_PIXELS, "RGB")
            colours = {tuple(pixel) for pixel in np.asarray(image).reshape(-1, 3).tolist()}
            assert len(colours) > 100, "the grid should show 16 different images"


def test_dcgan_loader_fails_when_the_images_differ(dcgan: ScriptRun, tmp_path: Path) -> None:
    """generate.py's 1e-5 check must be able to fail: give it reference images off by 1e-3."""
    assert (dcgan.workdir / "fixed-noise.safetensors").is_file(), explain(dcgan.result)
    reference = ferry.load(dcgan.workdir / "fixed-noise.safetensors")
    ferry.save({"noise": reference["noise"], "images": reference["images"] + 1e-3}, tmp_path / "noise.safetensors")
    shutil.copy2(DCGAN / "generate.py", tmp_path / "generate.py")
    shutil.copy2(dcgan.workdir / "dcgan-export.ferry", tmp_path / "dcgan-export.ferry")
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    result = subprocess.run(
        [sys.executable, "generate.py", "dcgan-export.ferry", "--noise", "noise.safetensors", "--out", "."],
        cwd=tmp_path,
        capture_output=True,
        encoding="utf-8",
        env=env,
        timeout=TIMEOUT_S,
        check=False,
    )
    assert result.returncode == 1, explain(result)
    assert "differ from the original generator by up to 0.001" in result.stderr


# --- examples/lenet: checkpoint -> resume -> archive, and a DataParallel file ----------------------

LENET = EXAMPLES / "lenet"


@pytest.fixture(scope="module")
def lenet(tmp_path_factory: pytest.TempPathFactory) -> ScriptRun:
    workdir = tmp_path_factory.mktemp("lenet")
    return ScriptRun(run_example(LENET / "checkpoint_to_archive.py", "--workdir", workdir, cwd=workdir), workdir)


def test_lenet_checkpoint_resumes_and_packs(lenet: ScriptRun) -> None:
    assert lenet.result.returncode == 0, explain(lenet.result)
    assert "resumed lenet-ckpt.safetensors into a fresh TheModelClass: epoch 3" in lenet.result.stdout
    assert ferry.load(lenet.workdir / "lenet-ckpt.safetensors")["epoch"] == 3
    manifest = ferry.inspect(lenet.workdir / "lenet.ferry")
    assert manifest.kind == "export"
    assert manifest.labels is not None and len(manifest.labels) == 10
    assert manifest.signature.inputs[0].shape == (-1, 3, 32, 32)


def test_lenet_dataparallel_file_loads_with_a_rename(lenet: ScriptRun) -> None:
    assert lenet.result.returncode == 0, explain(lenet.result)
    assert "StateDictMismatchError" in lenet.result.stdout
    assert "rename={'module.': ''}" in lenet.result.stdout
    assert "matched 10 of 10 model keys" in lenet.result.stdout
    assert "same weights as the checkpoint: yes" in lenet.result.stdout


def test_lenet_archive_reproduces_the_trained_model_without_the_class(lenet: ScriptRun) -> None:
    assert lenet.result.returncode == 0, explain(lenet.result)
    assert "module 'lenet' (where TheModelClass is defined) importable here: no" in lenet.result.stdout
    assert "verify: ok" in lenet.result.stdout
    (difference,) = (float(value) for value in DIFFERENCE.findall(lenet.result.stdout))
    assert difference <= 1e-5
    # And here too: the reference logits came from the trained model, before any file existed.
    reference = ferry.load(lenet.workdir / "reference.safetensors")
    logits = ferry.load_model(lenet.workdir / "lenet.ferry")(reference["images"])
    torch.testing.assert_close(logits, reference["logits"], rtol=0, atol=1e-5)
