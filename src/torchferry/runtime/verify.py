"""``verify``: check every member's sha256, then re-run the stored examples."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from torchferry._types import PathLike
from torchferry.archive.manifest import WEIGHTS_MEMBER, Manifest
from torchferry.archive.reader import ArchiveReader
from torchferry.errors import ArchiveError, FerryError
from torchferry.runtime.load import build_runner, open_checked
from torchferry.runtime.outputs import all_close, max_errors
from torchferry.runtime.packaged import Packaged

__all__ = ["OutputCheck", "VerifyReport", "verify"]


@dataclass(frozen=True)
class OutputCheck:
    """How far one re-computed output is from the one stored at pack time."""

    name: str
    max_abs_error: float
    max_rel_error: float
    ok: bool


@dataclass
class VerifyReport:
    """The outcome of :func:`verify`; ``ok`` is true only when every check ran and passed."""

    path: str
    manifest: Manifest | None = None
    hashes_ok: bool = False
    members_checked: int = 0
    outputs: list[OutputCheck] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    rtol: float = 0.0
    atol: float = 0.0

    @property
    def ok(self) -> bool:
        return self.hashes_ok and bool(self.outputs) and all(o.ok for o in self.outputs) and not self.problems

    def __str__(self) -> str:
        lines = [f"{self.path}: {'OK' if self.ok else 'FAILED'}"]
        if self.hashes_ok:
            lines.append(f"  sha256 of {self.members_checked} members: ok")
        for check in self.outputs:
            mark = "ok" if check.ok else "MISMATCH"
            lines.append(
                f"  output {check.name}: max abs error {check.max_abs_error:.3g}, "
                f"max rel error {check.max_rel_error:.3g} ({mark}; rtol={self.rtol:g}, atol={self.atol:g})"
            )
        lines.extend(f"  problem: {p}" for p in self.problems)
        return "\n".join(lines)


def _rerun(report: VerifyReport, reader: ArchiveReader, model: Packaged) -> None:
    manifest = model.manifest
    examples = manifest.examples
    reader_inputs = examples.get("inputs")
    reader_outputs = examples.get("outputs")
    if not isinstance(reader_inputs, str) or not isinstance(reader_outputs, str):
        report.problems.append("the archive stores no examples, so nothing could be re-run")
        return
    inputs = reader.read_tensors(reader_inputs)
    expected = reader.read_tensors(reader_outputs)
    report.rtol, report.atol = float(examples.get("rtol", 1e-4)), float(examples.get("atol", 1e-5))
    ordered = [inputs[spec.name] for spec in manifest.signature.inputs if spec.name in inputs]
    if len(ordered) != len(manifest.signature.inputs):
        report.problems.append("the stored example inputs do not match the signature")
        return
    try:
        got = model.run(ordered)
    except Exception as exc:  # the program itself failed: that is what verify exists to report
        report.problems.append(f"re-running the examples failed: {type(exc).__name__}: {exc}")
        return
    for spec, value in zip(manifest.signature.outputs, got):
        want = expected.get(spec.name)
        if want is None:
            report.problems.append(f"no stored example output {spec.name!r}")
            continue
        abs_err, rel_err = max_errors(want, value.cpu()) if want.shape == value.shape else (float("inf"),) * 2
        report.outputs.append(
            OutputCheck(spec.name, abs_err, rel_err, all_close(want, value.cpu(), rtol=report.rtol, atol=report.atol))
        )


def verify(
    path: PathLike | ArchiveReader, *, trust_code: bool = False, progress: Callable[[int], None] | None = None
) -> VerifyReport:
    """Check an archive completely: container, manifest, sha256 of every member, and the
    stored examples re-run against the outputs recorded at pack time.

    Never raises for a bad archive: the problems are in the report (``report.ok``). An
    archive with Python code re-runs its examples only with ``trust_code=True``.
    """
    report = VerifyReport(path.path if isinstance(path, ArchiveReader) else str(path))
    try:
        reader = open_checked(path, trust_code=True, check_integrity=False)
        report.manifest = reader.manifest
        reader.check_integrity(algorithm="sha256", progress=progress)
        report.hashes_ok, report.members_checked = True, len(reader.manifest.members)
        if reader.manifest.carries_code and not trust_code:
            report.problems.append(
                "examples not re-run: the archive carries Python code; pass trust_code=True "
                "(CLI: --trust-code) if you trust it"
            )
            return report
        cpu = torch.device("cpu")
        model = Packaged(
            reader.manifest, build_runner(reader, reader.read_tensors(WEIGHTS_MEMBER), cpu), cpu, reader.path
        )
        _rerun(report, reader, model)
    except ArchiveError as exc:
        report.problems.append(str(exc))
    except FerryError as exc:
        report.problems.append(f"{type(exc).__name__}: {exc}")
    return report
