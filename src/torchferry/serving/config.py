"""Server and per-model settings: defaults, a ``serve.toml`` file, then command-line flags.

One precedence rule everywhere: built-in defaults < the config file's ``[defaults]`` <
the file's ``[[models]]`` entry < flags given on the command line. Every setting is
checked here, before any model loads, so a typo fails in a second with the key's name
rather than at the first request.

::

    [server]
    host = "127.0.0.1"
    port = 8080
    workers = 1
    max_body_mb = 64
    registry = "/srv/registry"      # where references like iris@production resolve

    [defaults]                       # every model, unless its own entry says otherwise
    max_batch_size = 32
    max_delay_ms = 0.0
    queue_size = 256
    timeout_ms = 30000
    torch_threads = 1

    [[models]]
    source = "iris@production"      # a .ferry file or a registry reference
    name = "iris"                   # served as /v2/models/iris (default: the archive's name)
    max_batch_size = 64
"""

from __future__ import annotations

import dataclasses
import os
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torchferry.errors import UsageError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib  # type: ignore[import-not-found,unused-ignore]

__all__ = ["ModelOptions", "ModelSpec", "ServerConfig", "load_config", "merge_options"]


@dataclass(frozen=True)
class ModelOptions:
    """How one model version is batched, bounded and run."""

    max_batch_size: int = 32
    max_delay_ms: float = 0.0
    queue_size: int = 256
    timeout_ms: float | None = 30_000.0
    """Deadline of a request from its arrival; past it the caller gets 504."""
    torch_threads: int | None = None
    """Threads of the model's worker thread (``None``: torch's default)."""
    trust_code: bool = False
    device: str | None = None
    inline_below_ms: float = 0.2
    """A one-row request to an idle model whose forward takes less than this runs on the event loop
    itself, saving two thread hand-offs (0 turns it off)."""

    def __post_init__(self) -> None:
        _at_least("max_batch_size", self.max_batch_size, 1)
        _at_least("queue_size", self.queue_size, 1)
        _at_least("max_delay_ms", self.max_delay_ms, 0)
        _at_least("inline_below_ms", self.inline_below_ms, 0)
        if self.timeout_ms is not None:
            _at_least("timeout_ms", self.timeout_ms, 1)
        if self.torch_threads is not None:
            _at_least("torch_threads", self.torch_threads, 1)


@dataclass(frozen=True)
class ModelSpec:
    """A model to serve: where it comes from, the name it is served under, its options."""

    source: str
    name: str | None = None
    options: ModelOptions = field(default_factory=ModelOptions)


@dataclass(frozen=True)
class ServerConfig:
    """Everything ``torchferry serve`` needs; JSON-able so that worker processes get the same."""

    models: tuple[ModelSpec, ...] = ()
    defaults: ModelOptions = field(default_factory=ModelOptions)
    """Options of models loaded later through the management API."""
    host: str = "127.0.0.1"
    port: int = 8080
    workers: int = 1
    max_body_mb: float = 64.0
    registry: str | None = None
    log_level: str = "info"
    access_log: bool = True

    def __post_init__(self) -> None:
        _at_least("workers", self.workers, 1)
        _at_least("max_body_mb", self.max_body_mb, 0.001)
        if not 0 <= self.port <= 65535:
            raise UsageError(f"port must be 0-65535, got {self.port}.")

    @property
    def max_body_bytes(self) -> int:
        return int(self.max_body_mb * 1024 * 1024)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ServerConfig:
        models = tuple(
            ModelSpec(m["source"], m.get("name"), ModelOptions(**m.get("options", {}))) for m in data.get("models", ())
        )
        defaults = ModelOptions(**data.get("defaults", {}))
        return cls(
            models=models, defaults=defaults, **{k: v for k, v in data.items() if k not in ("models", "defaults")}
        )


_SERVER_KEYS = {f.name for f in dataclasses.fields(ServerConfig)} - {"models", "defaults"}
_OPTION_KEYS = {f.name for f in dataclasses.fields(ModelOptions)}


def _at_least(key: str, value: float, low: float) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < low:
        raise UsageError(f"{key} must be a number >= {low:g}, got {value!r}.")


def _check_keys(where: str, table: Mapping[str, Any], allowed: set[str]) -> None:
    unknown = sorted(set(table) - allowed)
    if unknown:
        raise UsageError(f"{where}: unknown key(s) {unknown}; allowed: {sorted(allowed)}.")


def merge_options(where: str, table: Mapping[str, Any], base: ModelOptions) -> ModelOptions:
    _check_keys(where, table, _OPTION_KEYS)
    try:
        return dataclasses.replace(base, **table)
    except UsageError as exc:
        raise UsageError(f"{where}: {exc}") from None


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as file:
            data: dict[str, Any] = tomllib.load(file)
            return data
    except FileNotFoundError:
        raise UsageError(f"config file {path} does not exist; pass --config with an existing serve.toml.") from None
    except tomllib.TOMLDecodeError as exc:
        raise UsageError(f"config file {path} is not valid TOML: {exc}.") from None


def _file_models(path: Path, entries: Any, defaults: ModelOptions) -> list[ModelSpec]:
    if not isinstance(entries, list):
        raise UsageError(f"{path}: [[models]] must be an array of tables, each with a 'source'.")
    specs = []
    for i, entry in enumerate(entries):
        where = f"{path}: models[{i}]"
        if not isinstance(entry, dict) or not isinstance(entry.get("source"), str):
            raise UsageError(f'{where} needs source = "FILE.ferry" or a registry reference.')
        entry = dict(entry)
        source = entry.pop("source")
        name = entry.pop("name", None)
        if name is not None and not isinstance(name, str):
            raise UsageError(f"{where}: name must be a string.")
        specs.append(ModelSpec(_resolve_file(path, source), name, merge_options(where, entry, defaults)))
    return specs


def _resolve_file(config: Path, source: str) -> str:
    """A relative archive path in a config file is relative to the file, like paths in pyproject."""
    candidate = config.parent / source
    return str(candidate) if not os.path.isabs(source) and candidate.is_file() else source


def load_config(
    path: str | os.PathLike[str] | None = None,
    *,
    sources: Sequence[str] = (),
    server: Mapping[str, Any] | None = None,
    options: Mapping[str, Any] | None = None,
) -> ServerConfig:
    """The merged configuration: file, then ``sources``/``server``/``options`` given as flags.

    ``server`` and ``options`` hold only the flags the user actually gave (``None`` values
    are dropped), so a flag never resets a value from the file to its default.
    """
    data: dict[str, Any] = _read_toml(Path(path)) if path is not None else {}
    where = str(path)
    _check_keys(where, data, {"server", "defaults", "models"})
    server_table = dict(data.get("server", {}))
    _check_keys(f"{where}: [server]", server_table, _SERVER_KEYS)
    defaults = merge_options(f"{where}: [defaults]", data.get("defaults", {}), ModelOptions())
    flags = {k: v for k, v in (options or {}).items() if v is not None}
    specs = _file_models(Path(where), data["models"], defaults) if "models" in data else []
    specs += [ModelSpec(source, None, defaults) for source in sources]
    specs = [dataclasses.replace(s, options=merge_options("flags", flags, s.options)) for s in specs]
    server_table.update({k: v for k, v in (server or {}).items() if v is not None})
    try:
        return ServerConfig(models=tuple(specs), defaults=merge_options("flags", flags, defaults), **server_table)
    except UsageError as exc:
        raise UsageError(f"{where}: [server]: {exc}") from None
