"""Malicious pickles must never run, whatever torchferry entry point they are fed to.

Every payload here would create a file (``marker``) if its pickle were executed. Each is
packed in several forms (``torch.save`` zip, nested inside a normal checkpoint dict, the
legacy non-zip ``torch.save`` format, a raw ``pickle`` stream) and handed to every public
reader. The reader must refuse with a :class:`torchferry.errors.FerryError` that says
why and how to opt in (``trust_pickle``), and the marker must not exist afterwards.
A positive control proves each payload really does fire when loaded unsafely.
"""

from __future__ import annotations

import builtins
import os
import pickle
import shlex
import subprocess
import sys
import types
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

import torchferry
from torchferry.errors import FerryError, FileFormatError, UnsafePickleError
from torchferry.state.summary import describe

pytestmark = pytest.mark.security


# ----------------------------------------------------------------------------- payloads


class OpenPayload:
    """Unpickling calls ``open(marker, "w")``: creates the marker file."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self) -> tuple[Any, ...]:
        return (builtins.open, (self.marker, "w"))


class SystemPayload:
    """Unpickling calls ``os.system("touch marker")``."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self) -> tuple[Any, ...]:
        return (os.system, (f"touch {shlex.quote(self.marker)}",))


class MkdirPayload:
    """Unpickling calls ``os.mkdir(marker)``."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self) -> tuple[Any, ...]:
        return (os.mkdir, (self.marker,))


PAYLOADS: dict[str, type] = {"open": OpenPayload, "system": SystemPayload, "mkdir": MkdirPayload}
DANGEROUS_GLOBAL = {"open": "open", "system": "system", "mkdir": "mkdir"}


def _small_state_dict() -> dict[str, torch.Tensor]:
    return torch.nn.Linear(3, 2).state_dict()


def _write_zip(payload: object, path: Path) -> None:
    torch.save(payload, path)


def _write_zip_nested(payload: object, path: Path) -> None:
    torch.save({"model_state_dict": _small_state_dict(), "epoch": 3, "evil": payload}, path)


def _write_legacy(payload: object, path: Path) -> None:
    torch.save(payload, path, _use_new_zipfile_serialization=False)


def _write_legacy_nested(payload: object, path: Path) -> None:
    obj = {"model_state_dict": _small_state_dict(), "epoch": 3, "evil": payload}
    torch.save(obj, path, _use_new_zipfile_serialization=False)


def _write_raw_pickle(payload: object, path: Path) -> None:
    path.write_bytes(pickle.dumps(payload, protocol=2))


def _write_raw_pickle_default(payload: object, path: Path) -> None:
    path.write_bytes(pickle.dumps(payload))


def _write_raw_pickle_protocol0(payload: object, path: Path) -> None:
    path.write_bytes(pickle.dumps(payload, protocol=0))


FORMS: dict[str, Callable[[object, Path], None]] = {
    "zip": _write_zip,
    "zip-nested-in-checkpoint": _write_zip_nested,
    "legacy": _write_legacy,
    "legacy-nested-in-checkpoint": _write_legacy_nested,
    "raw-pickle-p2": _write_raw_pickle,
    "raw-pickle-default": _write_raw_pickle_default,
    "raw-pickle-p0": _write_raw_pickle_protocol0,
}
ZIP_FORMS = ("zip", "zip-nested-in-checkpoint")
LEGACY_FORMS = ("legacy", "legacy-nested-in-checkpoint", "raw-pickle-p2", "raw-pickle-default")
"""Forms torchferry recognises as ``torch.save`` output but that are not zip archives."""


def _linear() -> torch.nn.Linear:
    return torch.nn.Linear(3, 2)


def _call_load(path: Path) -> object:
    return torchferry.load(str(path), map_location="cpu")


def _call_load_into(path: Path) -> object:
    return torchferry.load_into(_linear(), path)


def _call_load_into_key(path: Path) -> object:
    return torchferry.load_into(_linear(), path, key="model_state_dict", strict=False)


def _call_resume(path: Path) -> object:
    model = _linear()
    return torchferry.resume(path, model=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.1))


def _call_describe(path: Path) -> object:
    return describe(path)


ENTRY_POINTS: dict[str, Callable[[Path], object]] = {
    "load": _call_load,
    "load_into": _call_load_into,
    "load_into-key": _call_load_into_key,
    "resume": _call_resume,
    "describe": _call_describe,
}


@pytest.fixture
def marker(tmp_path: Path) -> Path:
    return tmp_path / "PWNED-marker"


@pytest.fixture(params=["default-env", "TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1"])
def hostile_env(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Run with and without the variable that turns torch.load's weights_only default off."""
    monkeypatch.delenv("TORCH_FORCE_WEIGHTS_ONLY_LOAD", raising=False)
    if request.param != "default-env":
        monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")
    else:
        monkeypatch.delenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", raising=False)
    return str(request.param)


def _make(form: str, payload: str, tmp_path: Path, marker: Path) -> Path:
    path = tmp_path / f"evil-{form}-{payload}.pt"
    FORMS[form](PAYLOADS[payload](marker), path)
    assert not marker.exists(), "writing the payload must not fire it"
    return path


def _assert_refusal_message(exc: FerryError, path: Path) -> None:
    message = str(exc)
    assert str(path) in message
    assert "trust_pickle" in message
    lowered = message.lower()
    assert "run" in lowered and "code" in lowered, f"message does not say why: {message}"
    assert "Traceback" not in message


# ----------------------------------------------------------------------------- controls


@pytest.mark.parametrize("payload", sorted(PAYLOADS))
@pytest.mark.parametrize("form", ["zip", "legacy", "raw-pickle-p2"])
def test_positive_control_payload_fires_when_loaded_unsafely(
    form: str, payload: str, tmp_path: Path, marker: Path
) -> None:
    """Without torchferry the payload does create the marker: the refusals below mean something."""
    path = _make(form, payload, tmp_path, marker)
    result = pickle.loads(path.read_bytes()) if form.startswith("raw") else torch.load(path, weights_only=False)
    if hasattr(result, "close"):
        result.close()
    assert marker.exists()


# ----------------------------------------------------------------------------- refusals


@pytest.mark.parametrize("entry", sorted(ENTRY_POINTS))
@pytest.mark.parametrize("payload", sorted(PAYLOADS))
@pytest.mark.parametrize("form", sorted(FORMS))
def test_malicious_pickle_never_runs(
    form: str, payload: str, entry: str, hostile_env: str, tmp_path: Path, marker: Path
) -> None:
    path = _make(form, payload, tmp_path, marker)
    with pytest.raises(FerryError) as info, warnings.catch_warnings():
        # torch warns about protocol-4 pickles; the project's warnings-as-errors config would
        # turn that into a different error (see test_protocol4_payload_under_warnings_as_errors).
        warnings.filterwarnings("ignore", message="Detected pickle protocol", category=UserWarning)
        ENTRY_POINTS[entry](path)
    assert not marker.exists(), f"the payload ran through {entry} ({form}, {hostile_env})"
    if form == "raw-pickle-p0":
        # A protocol-0 pickle is not torch.save output at all: refused before any unpickling.
        assert type(info.value) is FileFormatError
        assert str(path) in str(info.value)
        return
    assert isinstance(info.value, UnsafePickleError)
    assert info.value.path == str(path)
    _assert_refusal_message(info.value, path)


@pytest.mark.parametrize("entry", sorted(ENTRY_POINTS))
def test_protocol4_payload_under_warnings_as_errors(entry: str, tmp_path: Path, marker: Path) -> None:
    """With warnings as errors (this project's pytest config) the payload still never runs."""
    path = _make("raw-pickle-default", "system", tmp_path, marker)
    with pytest.raises(FerryError) as info, warnings.catch_warnings():
        warnings.simplefilter("error")
        ENTRY_POINTS[entry](path)
    assert not marker.exists()
    assert str(path) in str(info.value)


@pytest.mark.parametrize("payload", sorted(PAYLOADS))
@pytest.mark.parametrize("form", ZIP_FORMS)
def test_zip_refusal_names_the_dangerous_call(form: str, payload: str, tmp_path: Path, marker: Path) -> None:
    path = _make(form, payload, tmp_path, marker)
    with pytest.raises(UnsafePickleError) as info:
        torchferry.load(path)
    assert not marker.exists()
    assert any(g.endswith("." + DANGEROUS_GLOBAL[payload]) for g in info.value.globals), info.value.globals
    assert "would call" in str(info.value)
    assert "do not load this file" in str(info.value)


@pytest.mark.parametrize("payload", sorted(PAYLOADS))
@pytest.mark.parametrize("form", LEGACY_FORMS)
def test_legacy_refusal_names_the_dangerous_call(form: str, payload: str, tmp_path: Path, marker: Path) -> None:
    path = _make(form, payload, tmp_path, marker)
    with pytest.raises(UnsafePickleError) as info, warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Detected pickle protocol", category=UserWarning)
        torchferry.load(path)
    assert not marker.exists()
    message = str(info.value)
    assert "\x1b[" not in message
    assert "weights_only` set to `False`" not in message
    assert any(g.endswith("." + DANGEROUS_GLOBAL[payload]) for g in info.value.globals), info.value.globals
    assert "would call" in message


@pytest.mark.parametrize("form", ["zip-nested-in-checkpoint", "legacy-nested-in-checkpoint"])
@pytest.mark.parametrize("entry", ["load_into", "resume"])
def test_refused_load_leaves_the_model_untouched(form: str, entry: str, tmp_path: Path, marker: Path) -> None:
    path = _make(form, "system", tmp_path, marker)
    model = _linear()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(UnsafePickleError):
        if entry == "load_into":
            torchferry.load_into(model, path, strict=False)
        else:
            torchferry.resume(path, model=model)
    assert not marker.exists()
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key])


@pytest.mark.parametrize("entry", ["load", "describe", "load_into", "resume"])
def test_force_weights_only_env_still_refuses(
    entry: str, tmp_path: Path, marker: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TORCH_FORCE_WEIGHTS_ONLY_LOAD", "1")
    monkeypatch.delenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", raising=False)
    path = _make("zip-nested-in-checkpoint", "system", tmp_path, marker)
    with pytest.raises(UnsafePickleError):
        ENTRY_POINTS[entry](path)
    assert not marker.exists()


# ----------------------------------------------------------------------------- whole models


class TinyNet(torch.nn.Module):
    """A model defined here, so ``torch.save(model)`` pickles a reference to this module."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = torch.nn.Linear(4, 3)
        self.head = torch.nn.Linear(3, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.fc(x)))


class BareNet(torch.nn.Module):
    """A model with its own parameters and no torch.nn submodules."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = torch.nn.Parameter(torch.randn(3, 2))
        self.register_buffer("scale", torch.ones(2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x @ self.weight * self.scale


@pytest.mark.parametrize("entry", ["load", "describe", "load_into", "resume"])
def test_whole_pickled_model_is_refused(entry: str, tmp_path: Path) -> None:
    path = tmp_path / "whole.pt"
    torch.save(TinyNet(), path)
    calls: dict[str, Callable[[], object]] = {
        "load": lambda: torchferry.load(path),
        "describe": lambda: describe(path),
        "load_into": lambda: torchferry.load_into(TinyNet(), path),
        "resume": lambda: torchferry.resume(path, model=TinyNet()),
    }
    with pytest.raises(UnsafePickleError) as info:
        calls[entry]()
    message = str(info.value)
    assert "whole pickled model" in message
    assert "trust_pickle" in message
    assert str(path) in message
    assert f"{TinyNet.__module__}.TinyNet" in info.value.globals


def test_whole_pickled_model_loads_with_trust_pickle(tmp_path: Path) -> None:
    path = tmp_path / "whole.pt"
    original = TinyNet()
    torch.save(original, path)
    loaded = torchferry.load(path, trust_pickle=True)
    assert type(loaded) is TinyNet
    for key, value in original.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value)
    x = torch.randn(5, 4)
    assert torch.equal(loaded(x), original(x))


def test_whole_pickled_model_load_into_with_trust_pickle(tmp_path: Path) -> None:
    path = tmp_path / "whole.pt"
    original = TinyNet()
    torch.save(original, path)
    target = TinyNet()
    report = torchferry.load_into(target, path, trust_pickle=True)
    assert report.ok
    for key, value in original.state_dict().items():
        assert torch.equal(target.state_dict()[key], value)


def test_whole_pickled_model_without_nn_submodules_is_recognised(tmp_path: Path) -> None:
    path = tmp_path / "bare.pt"
    torch.save(BareNet(), path)
    with pytest.raises(UnsafePickleError) as info:
        torchferry.load(path)
    assert "whole pickled model" in str(info.value)


def test_whole_pickled_model_legacy_format_is_recognised(tmp_path: Path) -> None:
    path = tmp_path / "whole-legacy.pt"
    torch.save(TinyNet(), path, _use_new_zipfile_serialization=False)
    with pytest.raises(UnsafePickleError) as info:
        torchferry.load(path)
    assert "whole pickled model" in str(info.value)


def test_whole_pickled_model_legacy_format_loads_with_trust_pickle(tmp_path: Path) -> None:
    path = tmp_path / "whole-legacy.pt"
    original = TinyNet()
    torch.save(original, path, _use_new_zipfile_serialization=False)
    with pytest.raises(UnsafePickleError):
        torchferry.load(path)
    loaded = torchferry.load(path, trust_pickle=True)
    assert type(loaded) is TinyNet
    for key, value in original.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value)


def test_trusted_model_whose_class_is_gone_gives_readable_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    module = types.ModuleType("torchferry_test_vanished_module")
    exec(  # noqa: S102 - defines a throwaway class inside the throwaway module
        "import torch\nclass Gone(torch.nn.Module):\n"
        "    def __init__(self):\n        super().__init__()\n        self.fc = torch.nn.Linear(2, 2)\n",
        module.__dict__,
    )
    path = tmp_path / "gone.pt"
    with monkeypatch.context() as patch:
        patch.setitem(sys.modules, module.__name__, module)
        torch.save(module.Gone(), path)
    assert module.__name__ not in sys.modules
    with pytest.raises(UnsafePickleError) as refused:
        torchferry.load(path)
    assert "whole pickled model" in str(refused.value)
    with pytest.raises(FileFormatError) as info:
        torchferry.load(path, trust_pickle=True)
    assert str(path) in str(info.value)
    assert "importable" in str(info.value)


# ----------------------------------------------------------------------------- CLI


def _cli() -> list[str]:
    script = Path(sys.executable).parent / "torchferry"
    return [str(script)] if script.exists() else [sys.executable, "-m", "torchferry.cli.main"]


CLI_CASES = [
    ("zip", "inspect"),
    ("zip", "inspect-json"),
    ("zip", "convert"),
    ("zip-nested-in-checkpoint", "convert"),
    ("legacy-nested-in-checkpoint", "inspect"),
    ("legacy-nested-in-checkpoint", "convert"),
    ("raw-pickle-p2", "inspect"),
]


@pytest.mark.e2e
@pytest.mark.parametrize(("form", "command"), CLI_CASES)
def test_cli_refuses_malicious_pickle(form: str, command: str, tmp_path: Path, marker: Path) -> None:
    path = _make(form, "system", tmp_path, marker)
    out = tmp_path / "converted.safetensors"
    args = {
        "inspect": ["inspect", str(path)],
        "inspect-json": ["inspect", "--json", str(path)],
        "convert": ["convert", str(path), "-o", str(out)],
    }[command]
    env = {k: v for k, v in os.environ.items() if not k.startswith("TORCH_FORCE")}
    env["TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD"] = "1"
    done = subprocess.run([*_cli(), *args], capture_output=True, text=True, timeout=120, check=False, env=env)
    output = done.stdout + done.stderr
    assert done.returncode == 1, output
    assert not marker.exists()
    assert not out.exists()
    assert "Traceback" not in output
    assert "error:" in done.stderr
    assert str(path) in " ".join(done.stderr.split()) or path.name in done.stderr
    assert "trust" in output.lower() and "pickle" in output.lower(), output
