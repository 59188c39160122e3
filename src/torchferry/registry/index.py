"""The SQLite index of a registry: versions and aliases, one transaction per change.

WAL mode lets readers run while a writer commits, and every change happens inside one
``BEGIN IMMEDIATE`` transaction, so concurrent ``add``s of the same name serialize on the
write lock and get consecutive versions, and a reader never sees half an entry.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from torchferry.errors import FerryError, FileFormatError, RegistryError

SCHEMA = """
CREATE TABLE IF NOT EXISTS versions (
    name TEXT NOT NULL,
    version INTEGER NOT NULL,
    created TEXT NOT NULL,
    size INTEGER NOT NULL,
    archive_sha256 TEXT NOT NULL,
    members TEXT NOT NULL,      -- JSON: member name -> [blob sha256, size]; ferry.json included
    summary TEXT NOT NULL,      -- JSON: kind, signature, labels, manifest name/version
    PRIMARY KEY (name, version)
);
CREATE TABLE IF NOT EXISTS counters (
    name TEXT PRIMARY KEY,
    last_version INTEGER NOT NULL  -- never decreases: a removed version's number is not reused
);
CREATE TABLE IF NOT EXISTS aliases (
    name TEXT NOT NULL,
    alias TEXT NOT NULL,
    version INTEGER NOT NULL,
    PRIMARY KEY (name, alias),
    FOREIGN KEY (name, version) REFERENCES versions (name, version)
);
"""
BUSY_TIMEOUT_S = 60.0

__all__ = ["Index"]


class Index:
    """Connections to ``index.sqlite``; a short-lived connection per operation (process- and fork-safe)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def _connect(self) -> sqlite3.Connection:
        try:
            connection = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_S, isolation_level=None)
            connection.execute("PRAGMA journal_mode=WAL")
            connection.execute("PRAGMA synchronous=FULL")
            connection.execute("PRAGMA foreign_keys=ON")
            connection.executescript(SCHEMA)
        except sqlite3.DatabaseError as exc:
            raise FileFormatError(
                f"{self.path}: the registry index cannot be opened ({exc}). Run `torchferry registry check`; "
                "restore the file from a backup or move it away to start a new index.",
                path=self.path,
            ) from None
        return connection

    def _damaged(self, exc: BaseException) -> FerryError:
        text = str(exc).lower()
        if isinstance(exc, sqlite3.OperationalError) and ("locked" in text or "busy" in text):
            return RegistryError(
                f"{self.path}: the registry index stayed locked by another process for "
                f"{BUSY_TIMEOUT_S:.0f} s ({exc}); try again when that process is done."
            )
        if isinstance(exc, sqlite3.OperationalError) and ("readonly" in text or "read-only" in text):
            return RegistryError(
                f"{self.path}: the registry index is read-only here ({exc}); use a registry you "
                "can write (--root / TORCHFERRY_HOME) or fix its permissions."
            )
        return FileFormatError(
            f"{self.path}: the registry index is damaged ({exc}). Run `torchferry registry check`; restore the "
            "file from a backup or move it away to start a new index.",
            path=self.path,
        )

    @contextmanager
    def write(self) -> Iterator[sqlite3.Connection]:
        """A connection inside ``BEGIN IMMEDIATE``: committed on success, rolled back on any error."""
        connection = self._connect()
        try:
            connection.execute("BEGIN IMMEDIATE")
            try:
                yield connection
            except BaseException:
                connection.execute("ROLLBACK")
                raise
            connection.execute("COMMIT")
        except sqlite3.DatabaseError as exc:
            raise self._damaged(exc) from None
        finally:
            connection.close()

    @contextmanager
    def read(self) -> Iterator[sqlite3.Connection]:
        connection = self._connect()
        try:
            yield connection
        except sqlite3.DatabaseError as exc:
            raise self._damaged(exc) from None
        finally:
            connection.close()
