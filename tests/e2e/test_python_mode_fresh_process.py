"""mode="python" on a fresh machine: the model's source is gone, a new process rebuilds it
from the captured code alone and gives the same outputs."""

from __future__ import annotations

import importlib
import importlib.metadata
import json
import shutil
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

import torchferry
from torchferry.archive.capture import capture_python

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

# A small DCGAN-style repository: a namespace package (models/networks has no __init__.py),
# relative imports, numpy, an enum, a module imported only inside a function, and a plugin
# loaded by a computed name (only the intern pattern can name it).
PACKAGE = {
    "models/__init__.py": "from .registry import build\n",
    "models/config.py": """
        import enum

        LATENT = 8


        class Norm(enum.Enum):
            BATCH = "batch"
            NONE = "none"
    """,
    "models/registry.py": """
        import importlib

        from .networks.dcgan import Generator


        def build(norm):
            generator = Generator(norm)
            generator.post = importlib.import_module("models.plugins." + "clamp").Clamp(1.5)
            return generator
    """,
    "models/networks/dcgan.py": """
        import numpy as np
        import torch
        import torch.nn.functional as F

        from .. import config
        from ..config import Norm


        class Generator(torch.nn.Module):
            def __init__(self, norm):
                super().__init__()
                self.norm_kind = norm
                self.up = torch.nn.Sequential(
                    torch.nn.ConvTranspose2d(config.LATENT, 6, 4, 1, 0, bias=False),
                    torch.nn.BatchNorm2d(6) if norm is Norm.BATCH else torch.nn.Identity(),
                    torch.nn.ReLU(True),
                    torch.nn.ConvTranspose2d(6, 3, 4, 2, 1, bias=False),
                )
                self.act = F.tanh
                self.gain = float(np.float32(0.75))
                self.register_buffer("mean", torch.tensor([0.5, 0.4, 0.3]).view(1, 3, 1, 1), persistent=False)

            def forward(self, z):
                from ..plugins import noise  # imported only here

                return self.post(noise.scale(self.act(self.up(z)), self.gain) + self.mean)
    """,
    "models/plugins/__init__.py": "",
    "models/plugins/noise.py": "def scale(x, gain):\n    return x * gain\n",
    "models/plugins/clamp.py": """
        import torch


        class Clamp(torch.nn.Module):
            def __init__(self, limit):
                super().__init__()
                self.limit = limit

            def forward(self, x):
                return x.clamp(-self.limit, self.limit)
    """,
}

REBUILD = textwrap.dedent(
    """
    import importlib.util, json, sys
    from pathlib import Path
    import torch, torchferry
    from torchferry.runtime.python_program import build_python_model

    out = Path(sys.argv[1])
    assert importlib.util.find_spec("models") is None, "the model's source must be absent"
    program = json.loads((out / "program.json").read_text())
    read_member = lambda member: (out / "members" / member).read_bytes()
    state = torchferry.load(out / "state.safetensors")
    extra = torchferry.load(out / "extra.safetensors")
    io = torchferry.load(out / "io.safetensors")
    model = build_python_model(program, read_member, state, extra)
    torch.testing.assert_close(model(io["z"]), io["y"], rtol=0, atol=0)
    assert not model.training
    assert "models" not in sys.modules
    print("rebuilt", type(model).__module__, type(model.post).__module__)
    """
)


@pytest.fixture
def user_repo(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    repo = tmp_path / "repo"
    for name, text in PACKAGE.items():
        (repo / name).parent.mkdir(parents=True, exist_ok=True)
        (repo / name).write_text(textwrap.dedent(text))
    monkeypatch.syspath_prepend(str(repo))
    yield repo
    for name in [n for n in sys.modules if n == "models" or n.startswith("models.")]:
        del sys.modules[name]


def test_captured_code_rebuilds_in_a_fresh_process_without_the_source(tmp_path: Path, user_repo: Path) -> None:
    models = importlib.import_module("models")
    config = importlib.import_module("models.config")
    torch.manual_seed(0)
    model = models.build(config.Norm.BATCH)
    model.up[1].running_mean.uniform_(-0.1, 0.1)  # trained statistics, not the initial ones
    model.eval()
    z = torch.randn(2, 8, 1, 1)
    expected = model(z)

    captured = capture_python(model, intern=["models.**"])
    assert {"models.networks", "models.plugins.clamp", "models.plugins.noise"} <= set(captured.program["interned"])
    assert "models.networks" in captured.program["packages"]  # a namespace package: shipped as an empty one
    assert captured.files["program/code/models/networks/__init__.py"] == b""

    out = tmp_path / "out"
    for member, content in captured.files.items():
        (out / "members" / member).parent.mkdir(parents=True, exist_ok=True)
        (out / "members" / member).write_bytes(content)
    (out / "program.json").write_text(json.dumps(captured.program))
    torchferry.save(dict(model.state_dict()), out / "state.safetensors")
    torchferry.save(captured.tensors, out / "extra.safetensors")
    torchferry.save({"z": z, "y": expected}, out / "io.safetensors")
    shutil.rmtree(user_repo)  # the fresh machine has no copy of the code

    proc = subprocess.run(
        [sys.executable, "-c", REBUILD, str(out)], capture_output=True, text=True, timeout=300, cwd=tmp_path
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == [
        "rebuilt",
        "_torchferry_code_1.models.networks.dcgan",
        "_torchferry_code_1.models.plugins.clamp",
    ], proc.stdout


MAIN_SCRIPT = textwrap.dedent(
    """
    import torch
    from torchferry.archive.capture import capture_python
    from torchferry.errors import PackagingError

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = torch.nn.Linear(2, 2)

        def forward(self, x):
            return self.lin(x)

    try:
        capture_python(Net())
    except PackagingError as exc:
        print(exc.unresolved)
        print(exc)
    """
)


def test_class_defined_in_the_running_script_is_refused_with_advice(tmp_path: Path) -> None:
    script = tmp_path / "train.py"
    script.write_text(MAIN_SCRIPT)
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines()[0] == "['__main__']"
    assert "class Net is defined in __main__ (the running script or notebook); move it into a module" in proc.stdout
    assert "or use mode='export'" in proc.stdout


LOAD_ARCHIVE = textwrap.dedent(
    """
    import importlib.util, sys
    import torch, torchferry

    assert importlib.util.find_spec("models") is None
    io = torchferry.load(sys.argv[2])
    served = torchferry.load_model(sys.argv[1], trust_code=True)
    torch.testing.assert_close(served(io["z"]), io["y"], rtol=0, atol=0)
    print("ok")
    """
)


def test_pack_and_load_model_in_python_mode_without_the_source(tmp_path: Path, user_repo: Path) -> None:
    models = importlib.import_module("models")
    config = importlib.import_module("models.config")
    torch.manual_seed(0)
    model = models.build(config.Norm.NONE).eval()
    z = torch.randn(2, 8, 1, 1)
    torchferry.save({"z": z, "y": model(z)}, tmp_path / "io.safetensors")
    manifest = torchferry.pack(model, tmp_path / "gen.ferry", example_inputs=z, mode="python", intern=["models.**"])
    assert manifest.requirements["numpy"] == importlib.metadata.version("numpy")
    shutil.rmtree(user_repo)

    args = [str(tmp_path / "gen.ferry"), str(tmp_path / "io.safetensors")]
    proc = subprocess.run(
        [sys.executable, "-c", LOAD_ARCHIVE, *args], capture_output=True, text=True, timeout=300, cwd=tmp_path
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "ok"
