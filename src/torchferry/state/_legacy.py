"""Reading ``.pt``/``.pth`` files written by ``torch.save``, without running their pickles.

Only ``torch.load(weights_only=True)`` is used unless the caller explicitly passes
``trust_pickle=True``. When the safe loader refuses a file we list, by static
disassembly (nothing is imported or called, see ``_pickle_scan``), the globals the
pickle would import, and say whether it is a whole pickled model, ordinary extra
objects, plainly dangerous, or simply truncated.
Every failure of the underlying reader becomes one of our errors: a truncated or
damaged file must never escape as ``struct.error``, ``EOFError`` or ``KeyError``.
"""

from __future__ import annotations

import os
import pickle
import warnings
from typing import Any

import torch

from torchferry._types import MapLocation
from torchferry.errors import CorruptFileError, DeviceError, FerryError, FileFormatError, UnsafePickleError
from torchferry.state._pickle_scan import Scan, scan_globals
from torchferry.state._safetensors_io import file_prefix

ZIP_MAGIC = b"PK\x03\x04"
_DANGEROUS_MODULES = {
    "os", "posix", "nt", "subprocess", "sys", "shutil", "socket", "runpy", "importlib", "pty", "pickle",
    "code", "webbrowser", "pathlib", "io", "ctypes", "multiprocessing", "asyncio", "pdb", "timeit",
}  # fmt: skip
_DANGEROUS_BUILTINS = {
    "eval", "exec", "open", "compile", "__import__", "getattr", "setattr", "delattr", "input", "breakpoint",
    "globals", "locals", "vars", "exit", "quit",
}  # fmt: skip


def _is_dangerous(name: str) -> bool:
    module, _, attr = name.rpartition(".")
    if module in ("builtins", "__builtin__"):
        return attr in _DANGEROUS_BUILTINS
    return module.split(".", 1)[0] in _DANGEROUS_MODULES


def legacy_kind(prefix: bytes) -> str | None:
    """``"zip"`` or ``"pickle"`` when the bytes start a ``torch.save`` file, else None."""
    if prefix.startswith(ZIP_MAGIC):
        return "zip"
    if len(prefix) >= 2 and prefix[0] == 0x80 and 2 <= prefix[1] <= 5:
        return "pickle"
    return None


def _refusal(path: str, scan: Scan) -> UnsafePickleError:
    globals_ = scan.globals
    shown = ", ".join(globals_[:8]) + (", ..." if len(globals_) > 8 else "") or "objects of unknown classes"
    dangerous = [g for g in globals_ if _is_dangerous(g)]
    if dangerous:
        return UnsafePickleError(
            f"{path} holds a pickle that would call {', '.join(dangerous[:4])} when loaded. That can run any "
            "code or command: do not load this file unless you made it yourself. torchferry refuses it "
            "(trust_pickle=True, or --trust-pickle on the command line, would run it).",
            path=path,
            globals_=globals_,
        )
    if scan.module_like or any(g.startswith("torch.nn.modules.") for g in globals_):
        what = (
            f"{path} holds a whole pickled model (torch.save(model)), not just tensors; loading it "
            f"would import and run code named inside the file ({shown})."
        )
    else:
        what = (
            f"{path} holds pickled Python objects besides tensors ({shown}); loading them would "
            "import and run code named inside the file."
        )
    fix = (
        " torchferry refuses this by default because a crafted file runs arbitrary code this way. "
        "If you trust the file (and its classes are importable), pass trust_pickle=True (--trust-pickle on "
        "the command line); better, convert it once into a safe file: "
        f"`torchferry convert {path} --trust-pickle -o state.safetensors`."
    )
    return UnsafePickleError(what + fix, path=path, globals_=globals_)


def _truncated(path: str) -> CorruptFileError:
    return CorruptFileError(
        f"{path}: the file ends in the middle of its pickle data. It is damaged or incomplete (an "
        "interrupted copy or download?). Re-create or re-download it.",
        path=path,
    )


def _classify_runtime_error(path: str, exc: BaseException) -> FerryError:
    text = str(exc)
    first = text.strip().splitlines()[0] if text.strip() else type(exc).__name__
    if "deserialize object on a CUDA device" in text or "on CUDA device" in text:
        return DeviceError(
            f"{path} was saved from a CUDA device, which is not available here. "
            "Load it onto the CPU with map_location='cpu'."
        )
    if "TorchScript" in text:
        return FileFormatError(
            f"{path} is a TorchScript archive (torch.jit.save), not a state_dict or checkpoint. "
            "It holds a compiled program; load it with torch.jit.load if you trust it.",
            path=path,
        )
    return CorruptFileError(
        f"{path}: torch.load could not read the file ({type(exc).__name__}: {first}). "
        "The file is damaged or incomplete (an interrupted copy or download?). Re-create or re-download it.",
        path=path,
    )


def load_legacy(path: str | os.PathLike[str], map_location: MapLocation = None, *, trust_pickle: bool = False) -> Any:
    """Load a ``torch.save`` file: tensors and plain containers only, unless trusted."""
    spath = str(path)
    is_zip = legacy_kind(file_prefix(spath)) == "zip"
    try:
        with warnings.catch_warnings():
            # torch warns before failing on protocol-4 pickles; the failure is what we report
            warnings.filterwarnings("ignore", message="Detected pickle protocol", category=UserWarning)
            return torch.load(spath, map_location=map_location, weights_only=True, mmap=is_zip)  # type: ignore[arg-type]
    except pickle.UnpicklingError:
        if not trust_pickle:
            scan = scan_globals(spath, is_zip=is_zip)
            raise (_refusal(spath, scan) if scan.complete else _truncated(spath)) from None
    except FerryError:
        raise
    except Exception as exc:  # untrusted input: every reader failure becomes ours
        raise _classify_runtime_error(spath, exc) from None
    return _load_trusted(spath, map_location)


def _load_trusted(path: str, map_location: MapLocation) -> Any:
    try:
        return torch.load(path, map_location=map_location, weights_only=False)  # type: ignore[arg-type]
    except (ModuleNotFoundError, AttributeError) as exc:
        raise FileFormatError(
            f"{path} holds a pickled object whose class cannot be found ({exc}). The class must be "
            "importable under the same module path as when it was saved: run where that code is, "
            "and convert the file once with `torchferry convert FILE --trust-pickle -o state.safetensors`.",
            path=path,
        ) from None
    except Exception as exc:
        raise _classify_runtime_error(path, exc) from None
