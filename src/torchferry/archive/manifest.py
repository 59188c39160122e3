"""``ferry.json``: the manifest of a ``.ferry`` archive, and its strict validation.

The manifest is plain JSON so that any language can read it (``docs/format.md`` is its
specification). Reading validates every field's type before anything else uses it: a
malformed manifest raises ``ArchiveError`` naming the field, never a ``KeyError`` later.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from torchferry.archive.integrity import Digest
from torchferry.archive.processing import check_step
from torchferry.errors import ArchiveError, UsageError

FORMAT_ID = "torchferry.archive/1"
FORMAT_PREFIX = "torchferry.archive/"
MANIFEST_NAME = "ferry.json"
WEIGHTS_MEMBER = "weights.safetensors"
MAX_MANIFEST_BYTES = 16 * 1024 * 1024
PROGRAM_KINDS = ("export", "python")
OUTPUT_STRUCTURES = ("tensor", "tuple", "list", "dict")
DTYPES = (
    "float16", "bfloat16", "float32", "float64", "complex64", "complex128",
    "uint8", "int8", "int16", "int32", "int64", "bool",
)  # fmt: skip

__all__ = ["FORMAT_ID", "MANIFEST_NAME", "Manifest", "Signature", "TensorSpec", "parse_manifest"]


@dataclass(frozen=True)
class TensorSpec:
    """One named input or output: dtype name and shape, ``-1`` marking a dynamic dimension."""

    name: str
    dtype: str
    shape: tuple[int, ...]

    def describe(self) -> str:
        dims = ",".join("?" if d < 0 else str(d) for d in self.shape)
        return f"{self.name}: {self.dtype}[{dims}]"

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "dtype": self.dtype, "shape": list(self.shape)}


@dataclass(frozen=True)
class Signature:
    """What the model takes and returns; ``output_structure`` tells how outputs nest."""

    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    output_structure: str = "tensor"

    def to_dict(self) -> dict[str, Any]:
        return {
            "inputs": [s.to_dict() for s in self.inputs],
            "outputs": [s.to_dict() for s in self.outputs],
            "output_structure": self.output_structure,
        }


@dataclass(frozen=True)
class Manifest:
    """Everything ``ferry.json`` says about an archive (see ``docs/format.md``)."""

    name: str
    version: str | None
    created: str
    program: dict[str, Any]
    signature: Signature
    members: dict[str, Digest]
    requirements: dict[str, str]
    labels: tuple[str, ...] | None = None
    description: str | None = None
    preprocess: tuple[dict[str, Any], ...] = ()
    postprocess: tuple[dict[str, Any], ...] = ()
    batching: dict[str, Any] = field(default_factory=dict)
    examples: dict[str, Any] = field(default_factory=dict)
    metadata: dict[str, Any] = field(default_factory=dict)
    torchferry: str = ""
    format: str = FORMAT_ID

    @property
    def kind(self) -> str:
        """``"export"`` (a graph: no Python code runs) or ``"python"`` (captured source code)."""
        return str(self.program["kind"])

    @property
    def carries_code(self) -> bool:
        return self.kind == "python"

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": self.format,
            "name": self.name,
            "version": self.version,
            "created": self.created,
            "description": self.description,
            "torchferry": self.torchferry,
            "program": self.program,
            "signature": self.signature.to_dict(),
            "labels": None if self.labels is None else list(self.labels),
            "preprocess": list(self.preprocess),
            "postprocess": list(self.postprocess),
            "batching": self.batching,
            "examples": self.examples,
            "requirements": self.requirements,
            "members": {
                name: {"size": d.size, "sha256": d.sha256, "xxh3_64": d.xxh3_64}
                for name, d in sorted(self.members.items())
            },
            "metadata": self.metadata,
        }

    def to_json(self) -> bytes:
        return json.dumps(self.to_dict(), indent=2, ensure_ascii=False, allow_nan=False).encode("utf-8") + b"\n"


class _Fields:
    """Typed access to a JSON object; every failure names the field and the file."""

    def __init__(self, path: str, data: Mapping[str, Any], where: str) -> None:
        self.path, self.data, self.where = path, data, where

    def fail(self, key: str, what: str) -> ArchiveError:
        return ArchiveError(
            f"{self.path}: ferry.json field {self.where}{key} {what}. The manifest is damaged or was "
            "written by hand; re-pack the model with torchferry pack.",
            path=self.path,
        )

    def get(self, key: str, kind: type | tuple[type, ...], *, optional: bool = False) -> Any:
        if key not in self.data or self.data[key] is None:
            if optional:
                return None
            raise self.fail(key, "is missing")
        value = self.data[key]
        if not isinstance(value, kind) or (isinstance(value, bool) and bool not in _as_tuple(kind)):
            raise self.fail(key, f"should be {_kind_name(kind)}, not {type(value).__name__}")
        return value

    def sub(self, key: str) -> _Fields:
        return _Fields(self.path, self.get(key, dict), f"{self.where}{key}.")


def _as_tuple(kind: type | tuple[type, ...]) -> tuple[type, ...]:
    return kind if isinstance(kind, tuple) else (kind,)


def _kind_name(kind: type | tuple[type, ...]) -> str:
    names = {
        dict: "an object",
        list: "a list",
        str: "a string",
        int: "an integer",
        bool: "true/false",
        float: "a number",
    }
    return " or ".join(names.get(k, k.__name__) for k in _as_tuple(kind))


def _tensor_specs(fields: _Fields, key: str) -> tuple[TensorSpec, ...]:
    specs = []
    seen = set()
    for index, raw in enumerate(fields.get(key, list)):
        if not isinstance(raw, dict):
            raise fields.fail(f"{key}[{index}]", "should be an object")
        spec = _Fields(fields.path, raw, f"{fields.where}{key}[{index}].")
        name, dtype, shape = spec.get("name", str), spec.get("dtype", str), spec.get("shape", list)
        if dtype not in DTYPES:
            raise spec.fail("dtype", f"is {dtype!r}, not one of {', '.join(DTYPES)}")
        if not all(type(d) is int and d >= -1 for d in shape):
            raise spec.fail("shape", f"should list sizes >= 0 or -1 (dynamic), not {shape!r}")
        if not name or name in seen:
            raise spec.fail("name", f"{name!r} is empty or repeated")
        seen.add(name)
        specs.append(TensorSpec(name, dtype, tuple(shape)))
    return tuple(specs)


def _signature(fields: _Fields) -> Signature:
    sig = fields.sub("signature")
    structure = sig.get("output_structure", str)
    if structure not in OUTPUT_STRUCTURES:
        raise sig.fail("output_structure", f"is {structure!r}, not one of {', '.join(OUTPUT_STRUCTURES)}")
    outputs = _tensor_specs(sig, "outputs")
    if structure == "tensor" and len(outputs) != 1:
        raise sig.fail("outputs", "should hold exactly one output for output_structure 'tensor'")
    return Signature(_tensor_specs(sig, "inputs"), outputs, structure)


def _members(fields: _Fields) -> dict[str, Digest]:
    raw = fields.sub("members")
    members = {}
    for name in raw.data:
        entry = raw.sub(name)
        size = entry.get("size", int)
        sha, xxh = entry.get("sha256", str), entry.get("xxh3_64", str)
        if size < 0 or len(sha) != 64 or len(xxh) != 16:
            raise entry.fail("", "has a negative size or a malformed hash")
        members[name] = Digest(size, sha, xxh)
    return members


def _string_map(fields: _Fields, key: str) -> dict[str, str]:
    value = fields.get(key, dict)
    if not all(isinstance(v, str) for v in value.values()):
        raise fields.fail(key, "should map names to version strings")
    return dict(value)


def _steps(fields: _Fields, key: str) -> tuple[dict[str, Any], ...]:
    steps = fields.get(key, list, optional=True) or []
    for index, step in enumerate(steps):
        if not isinstance(step, dict) or not isinstance(step.get("op"), str):
            raise fields.fail(f"{key}[{index}]", "should be an object with an 'op' string")
    return tuple(steps)


def _examples(fields: _Fields) -> dict[str, Any]:
    if fields.get("examples", dict, optional=True) is None:
        return {}
    examples = fields.sub("examples")
    for key in ("inputs", "outputs"):
        examples.get(key, str, optional=True)
    for key in ("rtol", "atol"):
        value = examples.get(key, (int, float), optional=True)
        if value is not None and not 0 <= value < float("inf"):
            raise examples.fail(key, f"should be a tolerance >= 0, not {value!r}")
    return {key: value for key, value in examples.data.items() if value is not None}  # null means absent


def _check_format(path: str, fields: _Fields) -> None:
    value = fields.get("format", str)
    if value == FORMAT_ID:
        return
    if value.startswith(FORMAT_PREFIX):
        raise ArchiveError(
            f"{path} uses archive format {value!r}, which this torchferry does not read (it reads "
            f"{FORMAT_ID!r}). It was made by a newer torchferry: pip install -U torchferry.",
            path=path,
        )
    raise fields.fail("format", f"is {value!r}, not {FORMAT_ID!r}")


def parse_manifest(path: str, raw: bytes) -> Manifest:
    """Decode and validate ``ferry.json``; raises ``ArchiveError`` naming the bad field."""
    try:
        data = json.loads(raw.decode("utf-8"), parse_constant=_refuse_constant, object_pairs_hook=_refuse_duplicates)
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise ArchiveError(f"{path}: ferry.json is not valid JSON ({exc}); re-pack the model.", path=path) from None
    if not isinstance(data, dict):
        raise ArchiveError(f"{path}: ferry.json is not a JSON object; re-pack the model.", path=path)
    fields = _Fields(path, data, "")
    _check_format(path, fields)
    program = fields.get("program", dict)
    if program.get("kind") not in PROGRAM_KINDS:
        raise fields.fail("program.kind", f"is {program.get('kind')!r}, not one of {', '.join(PROGRAM_KINDS)}")
    labels = fields.get("labels", list, optional=True)
    if labels is not None and not all(isinstance(label, str) for label in labels):
        raise fields.fail("labels", "should be a list of strings")
    version = fields.get("version", (str, int), optional=True)
    manifest = Manifest(
        name=fields.get("name", str),
        version=None if version is None else str(version),
        created=fields.get("created", str),
        description=fields.get("description", str, optional=True),
        torchferry=fields.get("torchferry", str, optional=True) or "",
        program=program,
        signature=_signature(fields),
        labels=None if labels is None else tuple(labels),
        preprocess=_steps(fields, "preprocess"),
        postprocess=_steps(fields, "postprocess"),
        batching=fields.get("batching", dict, optional=True) or {},
        examples=_examples(fields),
        requirements=_string_map(fields, "requirements"),
        members=_members(fields),
        metadata=fields.get("metadata", dict, optional=True) or {},
    )
    _check_processing(path, manifest)
    return manifest


def _check_processing(path: str, manifest: Manifest) -> None:
    """Processing steps are data the runtime acts on: validate them now, not at the first predict."""
    inputs = [spec.name for spec in manifest.signature.inputs]
    steps = [("preprocess", "image", s) for s in manifest.preprocess]
    steps += [("postprocess", "classify", s) for s in manifest.postprocess]
    for field_name, op, step in steps:
        try:
            if step.get("op") != op:
                raise UsageError(f"{field_name} steps must have op {op!r}")
            check_step(step, inputs, manifest.labels)
        except UsageError as exc:
            raise ArchiveError(
                f"{path}: ferry.json {field_name} is invalid ({exc}); re-pack the model.", path=path
            ) from None


def _refuse_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    # a repeated key means different JSON readers see different manifests (most keep the last, some the first)
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise ValueError(f"key {key!r} appears twice in one object")
        result[key] = value
    return result


def _refuse_constant(name: str) -> float:
    # NaN/Infinity are not JSON; refuse them so every reader agrees on the manifest
    raise ValueError(f"{name} is not allowed in ferry.json")
