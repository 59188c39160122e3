"""The model manager: which model versions are loaded, which is the default, hot swap.

Loading happens fully (integrity checked, examples run) before a version becomes
visible, so a request never meets a half-loaded model. Replacing a version or the
default is one dict assignment on the event loop; the old version then drains its
queue in the background, so a hot swap fails no request.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path

from torchferry.archive.reader import ArchiveReader
from torchferry.errors import NotFoundError, NotReadyError, UsageError
from torchferry.registry.api import resolve
from torchferry.registry.registry import Registry
from torchferry.runtime.load import load_model
from torchferry.serving.config import ModelSpec
from torchferry.serving.hosted import HostedModel
from torchferry.serving.metrics import ServingMetrics

log = logging.getLogger("torchferry.serving")

__all__ = ["ModelManager"]


class ModelManager:
    """Loaded model versions by name; the last loaded version of a name is its default."""

    def __init__(self, metrics: ServingMetrics, *, registry: str | os.PathLike[str] | None = None) -> None:
        self.metrics = metrics
        self._registry_root = registry
        self._registry: Registry | None = None
        self._models: dict[str, dict[str, HostedModel]] = {}
        self._default: dict[str, str] = {}
        self._lock = threading.Lock()
        self.draining = False

    # ------------------------------------------------------------------ lookup
    def get(self, name: str, version: str | None = None) -> HostedModel:
        """The version asked for, else the default one; ``NotFoundError`` lists what is loaded."""
        versions = self._models.get(name)
        if versions:
            hosted = versions.get(version if version is not None else self._default[name])
            if hosted is not None:
                return hosted
            raise NotFoundError(
                f"model {name!r} has no version {version!r} loaded; loaded versions: {sorted(versions)}. "
                f"Leave the version out to use the default ({self._default[name]})."
            )
        raise NotFoundError(f"no model named {name!r} is loaded; loaded: {self.describe() or 'none'}.")

    def for_inference(self, name: str, version: str | None = None) -> HostedModel:
        """``get``, refusing new work with 503 once the server drains for shutdown."""
        hosted = self.get(name, version)
        if self.draining:
            raise NotReadyError(f"the server is draining for shutdown; retry {name} on another replica.")
        return hosted

    def describe(self) -> str:
        return ", ".join(f"{n} (versions {', '.join(sorted(v))})" for n, v in sorted(self._models.items()))

    def __iter__(self) -> Iterator[HostedModel]:
        return iter([h for versions in list(self._models.values()) for h in list(versions.values())])

    def names(self) -> list[str]:
        return sorted(self._models)

    def versions(self, name: str) -> list[str]:
        return sorted(self._models.get(name, {}), key=_version_key)

    def default_version(self, name: str) -> str:
        self.get(name)
        return self._default[name]

    @property
    def ready(self) -> bool:
        return bool(self._models) and not self.draining

    # ------------------------------------------------------------------ load / unload
    def load(self, spec: ModelSpec) -> HostedModel:
        """Load ``spec`` (blocking: call it from a thread on a running server) and make it live."""
        start = time.monotonic()
        source, registry_version = self._resolve(spec.source)
        packaged = load_model(source, trust_code=spec.options.trust_code, device=spec.options.device)
        name = spec.name or packaged.manifest.name
        version = registry_version or packaged.manifest.version or "1"
        _check_name(name, spec.source)
        hosted = HostedModel(
            name,
            version,
            packaged,
            spec.options,
            source=spec.source,
            load_seconds=time.monotonic() - start,
            metrics=self.metrics,
        )
        with self._lock:
            old = self._models.setdefault(name, {}).get(version)
            self._models[name][version] = hosted
            self._default[name] = version
        log.info("loaded %s:%s from %s in %.2f s", name, version, spec.source, hosted.load_seconds)
        if old is not None:  # hot swap of the same version: the old one finishes what it has queued
            old.replaced_by = hosted
            threading.Thread(target=old.close, name=f"torchferry-drain-{name}", daemon=True).start()
        return hosted

    async def load_async(self, spec: ModelSpec) -> HostedModel:
        return await asyncio.to_thread(self.load, spec)

    def set_default(self, name: str, version: str) -> None:
        self.get(name, version)
        self._default[name] = version

    def unload(self, name: str, version: str | None = None) -> list[HostedModel]:
        """Stop answering for ``name`` (one version, or all); queued requests still get answers."""
        self.get(name, version)
        with self._lock:
            versions = self._models[name]
            gone = [versions.pop(version)] if version is not None else list(versions.values())
            if version is None or not versions:
                versions.clear()
                del self._models[name]
                del self._default[name]
            elif self._default[name] == version:
                self._default[name] = max(versions, key=_version_key)
        for hosted in gone:
            threading.Thread(target=hosted.close, name=f"torchferry-drain-{name}", daemon=True).start()
        return gone

    def close(self, *, timeout_s: float = 30.0) -> None:
        """Drain every model (answer what is queued), then stop their threads."""
        self.draining = True
        for hosted in self:
            hosted.close(timeout_s=timeout_s)

    def _resolve(self, source: str) -> tuple[Path | ArchiveReader, str | None]:
        resolved = resolve(source, self._registry_handle(source))
        if isinstance(resolved, ArchiveReader):
            return resolved, resolved.path.rsplit(":", 1)[-1]  # the registry's "name:version"
        return resolved, None

    def _registry_handle(self, source: str) -> Registry | None:
        if os.path.isfile(source) or source.endswith(".ferry"):
            return None
        if self._registry is None:
            self._registry = Registry(self._registry_root)
        return self._registry


def _version_key(version: str) -> tuple[int, str]:
    return (int(version), "") if version.isdigit() else (1 << 62, version)


def _check_name(name: str, source: str) -> None:
    if not name or "/" in name or name.startswith(".") or any(c.isspace() for c in name):
        raise UsageError(
            f"{source}: {name!r} cannot be a model name in URLs; serve it under another name "
            '(name = "..." in serve.toml).'
        )
