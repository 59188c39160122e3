"""``load_model``: open an archive as a callable, checking everything before building anything.

Order matters: the container and manifest are validated, then trust (an archive with
Python code is refused before any of its code is read), then every member's hash, and
only then are tensors mapped and the program built. Any failure raises and returns
nothing half-loaded.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch

from torchferry._types import DeviceLike, PathLike
from torchferry.archive.manifest import WEIGHTS_MEMBER
from torchferry.archive.reader import ArchiveReader, open_archive
from torchferry.archive.signature import flatten_outputs
from torchferry.errors import ArchiveError, DeviceError, UntrustedCodeError
from torchferry.runtime.graph import GraphError, GraphProgram
from torchferry.runtime.packaged import Packaged

__all__ = ["build_runner", "load_model", "open_checked"]


def _device(device: DeviceLike | None) -> torch.device:
    try:
        resolved = torch.device("cpu" if device is None else device)
    except (RuntimeError, TypeError) as exc:
        raise DeviceError(f"device {device!r} is not a valid torch device ({exc}); use 'cpu' or 'cuda:0'.") from None
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise DeviceError(f"device {device!r} was asked for but CUDA is not available here; pass device='cpu'.")
    return resolved


def open_checked(
    path: PathLike | ArchiveReader,
    *,
    trust_code: bool,
    check_integrity: bool,
    progress: Callable[[int], None] | None = None,
) -> ArchiveReader:
    """Open ``path`` (or take an opened reader), refuse untrusted code, and check member hashes
    (xxh3) when asked."""
    reader = path if isinstance(path, ArchiveReader) else open_archive(path)
    if reader.manifest.carries_code and not trust_code:
        program = reader.manifest.program
        interned = program.get("interned")
        named = [str(m) for m in interned[:5]] if isinstance(interned, list) else []
        modules = ", ".join(named) or "its own modules"
        raise UntrustedCodeError(
            f"{reader.path} carries Python code ({modules}) that would run when the model is opened. "
            "Open it only if you trust where it came from: load_model(path, trust_code=True) or "
            "`--trust-code` on the command line. Archives packed with mode='export' need no trust."
        )
    if check_integrity:
        reader.check_integrity(progress=progress)
    return reader


def _export_runner(reader: ArchiveReader, state: dict[str, torch.Tensor], device: torch.device) -> Callable[..., Any]:
    spec = reader.manifest.program
    entry = spec.get("entry")
    constants_member = spec.get("constants")
    if not isinstance(entry, str) or not (constants_member is None or isinstance(constants_member, str)):
        raise ArchiveError(
            f"{reader.path}: ferry.json program section is malformed; re-pack the model.", path=reader.path
        )
    constants = reader.read_tensors(constants_member, device) if constants_member else {}
    try:
        runner = GraphProgram(
            reader.read_json(entry), state, constants, device=device if device.type != "cpu" else None
        )
    except GraphError as exc:
        raise ArchiveError(
            f"{reader.path}: the program in {entry!r} cannot run here: {exc}. It may need a newer torch "
            f"(this is {torch.__version__}; it was packed with {reader.manifest.requirements.get('torch')}).",
            path=reader.path,
        ) from None
    signature = reader.manifest.signature
    if (runner.input_count, runner.output_count) != (len(signature.inputs), len(signature.outputs)):
        raise ArchiveError(
            f"{reader.path}: the signature in ferry.json lists {len(signature.inputs)} inputs and "
            f"{len(signature.outputs)} outputs but the program has {runner.input_count} and "
            f"{runner.output_count}; the manifest was edited or damaged. Re-pack the model.",
            path=reader.path,
        )
    return runner


def _python_runner(reader: ArchiveReader, state: dict[str, torch.Tensor], device: torch.device) -> Callable[..., Any]:
    from torchferry.runtime.python_program import build_python_model

    program = reader.manifest.program
    extra_member = program.get("tensors")
    extra = reader.read_tensors(extra_member, device) if isinstance(extra_member, str) else {}
    module = build_python_model(program, reader.read_bytes, state, extra)

    def run(*inputs: torch.Tensor) -> Sequence[torch.Tensor]:
        return flatten_outputs(module(*inputs))[2]

    return run


def build_runner(reader: ArchiveReader, state: dict[str, torch.Tensor], device: torch.device) -> Callable[..., Any]:
    """The callable for the archive's program, bound to ``state`` on ``device``."""
    build = _export_runner if reader.manifest.kind == "export" else _python_runner
    return build(reader, state, device)


def load_model(
    path: PathLike | ArchiveReader,
    *,
    trust_code: bool = False,
    device: DeviceLike | None = None,
    check_integrity: bool = True,
) -> Packaged:
    """Open a ``.ferry`` archive as a callable model, on ``device`` (CPU by default).

    Works without the model's source code. Every member's hash is checked first
    (``check_integrity=False`` skips that; ``verify`` checks sha256 and re-runs the
    examples). Archives packed with ``mode="python"`` carry code and open only with
    ``trust_code=True``; exported archives run no Python code from the file.

    >>> import torch, torchferry
    >>> _ = torchferry.pack(torch.nn.Linear(4, 2), "lin.ferry", example_inputs=torch.randn(3, 4))
    >>> model = torchferry.load_model("lin.ferry")
    >>> model(torch.randn(5, 4)).shape
    torch.Size([5, 2])
    """
    target = _device(device)
    reader = open_checked(path, trust_code=trust_code, check_integrity=check_integrity)
    state = reader.read_tensors(WEIGHTS_MEMBER, target)
    return Packaged(reader.manifest, build_runner(reader, state, target), target, reader.path)
