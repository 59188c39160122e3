"""The one exception hierarchy of torchferry.

Every error torchferry raises on purpose derives from :class:`FerryError`, so callers
can catch one class, and the server (later) can map every error to an HTTP status in one
handler through ``http_status``. Messages follow one template: what happened, with the
actual value; why, when it is not obvious; the exact call, flag or command that fixes it.

::

    FerryError                      base class; never raised itself
    ├── FileFormatError             a file is not in a format torchferry reads (empty, wrong kind)
    │   ├── CorruptFileError        a file of a known format is truncated or damaged
    │   └── ArchiveError            a .ferry archive is malformed, unsafe or of an unknown format version
    │       └── IntegrityError      an archive member's size or hash differs from the manifest (.member)
    ├── UntrustedCodeError          an archive carries Python code and trust_code=True was not given
    ├── PackagingError              pack() cannot build a self-contained program (.unresolved modules)
    ├── UnsafePickleError           a legacy pickle holds Python objects; loading it could run code
    ├── UnsupportedObjectError      save() met a value it cannot store safely (key path in .key_path)
    ├── DeviceError                 a tensor's device is unavailable or map_location is invalid
    ├── UsageError                  an argument is invalid (e.g. a rename that maps two keys to one)
    │   ├── InputError              predict() inputs do not match the model's signature
    │   └── PayloadTooLargeError    a request body is over the server's limit, compressed or not (413)
    ├── StateDictMismatchError      load_into(strict=True) found missing/unexpected/mismatched keys
    ├── NotFoundError               a registry reference names no stored model, version or alias
    ├── OverloadedError             a model's request queue is full; retry after .retry_after_s (429)
    ├── DeadlineExceededError       a request waited or ran past its deadline (504)
    ├── ModelFailedError            the model raised while running a request (.error_id; 500)
    ├── NotReadyError               the server is still loading or is draining for shutdown (503)
    ├── UnauthorizedError           a management request lacks the server's API token (401)
    ├── RegistryError               a registry change conflicts (an aliased version) or its store is damaged
    └── CheckpointError             a checkpoint lacks what resume() was asked to restore
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from torchferry.state.report import LoadReport

__all__ = [
    "ArchiveError",
    "CheckpointError",
    "CorruptFileError",
    "DeviceError",
    "FerryError",
    "FileFormatError",
    "InputError",
    "DeadlineExceededError",
    "ModelFailedError",
    "NotFoundError",
    "NotReadyError",
    "OverloadedError",
    "IntegrityError",
    "PackagingError",
    "PayloadTooLargeError",
    "RegistryError",
    "StateDictMismatchError",
    "UntrustedCodeError",
    "UnsafePickleError",
    "UnsupportedObjectError",
    "UnauthorizedError",
    "UsageError",
]


class FerryError(Exception):
    """Base class of every error torchferry raises on purpose."""

    http_status: int = 500

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class FileFormatError(FerryError):
    """Raised when a file is empty, missing, or not in any format torchferry reads."""

    http_status = 400

    def __init__(self, message: str, *, path: str | Path | None = None) -> None:
        super().__init__(message)
        self.path = None if path is None else str(path)


class CorruptFileError(FileFormatError):
    """Raised when a file of a known format is truncated or its contents are inconsistent."""


class ArchiveError(FileFormatError):
    """Raised when a ``.ferry`` archive is malformed (bad zip, bad manifest, unsafe member
    names, compressed or overlapping members) or uses a format version this release does not read."""


class IntegrityError(ArchiveError):
    """Raised when an archive member's size or hash differs from the manifest; ``.member`` names it."""

    def __init__(self, message: str, *, path: str | Path | None = None, member: str) -> None:
        super().__init__(message, path=path)
        self.member = member


class UntrustedCodeError(FerryError):
    """Raised when opening an archive that carries Python code without ``trust_code=True``."""

    http_status = 403


class PackagingError(FerryError):
    """Raised by ``pack`` when it cannot build a self-contained program.

    ``.unresolved`` lists every module that could not be classified (all at once, never
    one per attempt); the message gives the pattern that fixes each.
    """

    http_status = 400

    def __init__(self, message: str, *, unresolved: list[str] | None = None) -> None:
        super().__init__(message)
        self.unresolved = list(unresolved or [])


class UnsafePickleError(FerryError):
    """Raised when a legacy ``.pt``/``.pth`` file holds pickled Python objects.

    Such objects can only be rebuilt by running code named inside the file, so they are
    refused unless the caller passes ``trust_pickle=True``. ``.globals`` lists what the
    pickle would import.
    """

    http_status = 400

    def __init__(self, message: str, *, path: str | Path, globals_: list[str]) -> None:
        super().__init__(message)
        self.path = str(path)
        self.globals = list(globals_)


class UnsupportedObjectError(FerryError):
    """Raised by ``save`` for a value it cannot store without pickle; names the key path."""

    http_status = 400

    def __init__(self, message: str, *, key_path: str) -> None:
        super().__init__(message)
        self.key_path = key_path


class DeviceError(FerryError):
    """Raised when tensors cannot be placed: the device is unavailable or map_location is bad."""

    http_status = 400


class UsageError(FerryError):
    """Raised when the caller passes an argument torchferry cannot act on."""

    http_status = 400


class InputError(UsageError):
    """Raised when inputs given to ``predict`` do not match the model's signature
    (missing or extra names, dtype, rank, fixed dimensions); the message shows expected vs got."""


class PayloadTooLargeError(UsageError):
    """Raised when a request body (after decompression) is over the server's ``--max-body-mb``."""

    http_status = 413


class StateDictMismatchError(FerryError):
    """Raised by ``load_into(strict=True)``; ``.report`` holds the full :class:`LoadReport`."""

    http_status = 400

    def __init__(self, message: str, *, report: LoadReport) -> None:
        super().__init__(message)
        self.report = report


class CheckpointError(FerryError):
    """Raised when a checkpoint does not hold what ``resume`` was asked to restore."""

    http_status = 400


class NotFoundError(FerryError):
    """Raised when a registry reference names no stored model, version or alias; the message lists
    what exists, closest names first."""

    http_status = 404


class RegistryError(FerryError):
    """Raised when a registry change conflicts with its state (removing a version an alias points to,
    adding a version that exists) or the registry's files are damaged."""

    http_status = 409


class OverloadedError(FerryError):
    """Raised when a model's request queue is full: the server answers 429 with ``Retry-After``
    instead of building an unbounded backlog."""

    http_status = 429

    def __init__(self, message: str, *, retry_after_s: float = 1.0) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class NotReadyError(FerryError):
    """Raised for requests that arrive before the models have loaded or while the server drains
    for shutdown; the only case the server answers 503 (a full queue is 429)."""

    http_status = 503


class UnauthorizedError(FerryError):
    """Raised when a management request (load, unload, set default) lacks the server's API token."""

    http_status = 401


class DeadlineExceededError(FerryError):
    """Raised when a request is still queued (or running) when its deadline passes."""

    http_status = 504


class ModelFailedError(FerryError):
    """Raised when the model itself raised while running a request; ``.error_id`` is also logged,
    so the caller's report can be matched with the server's log. Other requests are unaffected."""

    http_status = 500

    def __init__(self, message: str, *, error_id: str) -> None:
        super().__init__(message)
        self.error_id = error_id
