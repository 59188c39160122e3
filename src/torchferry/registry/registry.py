"""``Registry``: named, versioned archives with aliases, in a directory that needs no server.

Layout of the root (``$TORCHFERRY_HOME``, else the platform's user data directory)::

    index.sqlite            versions and aliases (WAL mode)
    blobs/ab/ab12...        every archive member, stored once by its sha256
    archives/<sha>.ferry    archives rebuilt on demand by path(); a cache that gc() clears

An archive is verified (sha256 of every member) and split into its members, each stored
as a blob named by its hash. Two versions whose weights are identical share the weights
blob, so re-adding an archive, or one whose metadata alone changed, stores almost
nothing. Blobs are written before the index entry that refers to them, and the entry in
one transaction, so a crash leaves at worst unreferenced blobs, which ``gc`` deletes.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import os
import shutil
import sqlite3
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torchferry._types import PathLike
from torchferry.archive.container import Member, write_archive
from torchferry.archive.manifest import MANIFEST_NAME, Manifest
from torchferry.archive.reader import ArchiveReader, open_archive, reader_from_members
from torchferry.errors import FerryError, NotFoundError, RegistryError, UsageError
from torchferry.registry.blobs import BlobStore
from torchferry.registry.index import Index
from torchferry.registry.refs import Ref, check_name, parse_ref
from torchferry.runtime.load import load_model
from torchferry.runtime.packaged import Packaged

HOME_VARIABLE = "TORCHFERRY_HOME"
GC_GRACE_S = 3600.0
"""gc keeps unreferenced blobs younger than this: they may belong to an add still in progress."""

__all__ = ["CheckReport", "Entry", "GcReport", "Registry", "default_root"]


def _last_version(db: sqlite3.Connection, name: str) -> int:
    """The highest version ``name`` ever had (removed ones included)."""
    (stored,) = db.execute("SELECT MAX(version) FROM versions WHERE name = ?", (name,)).fetchone()
    counter = db.execute("SELECT last_version FROM counters WHERE name = ?", (name,)).fetchone()
    return max(stored or 0, counter[0] if counter else 0)


def default_root() -> Path:
    """``$TORCHFERRY_HOME``, else the platform's user data directory for torchferry."""
    configured = os.environ.get(HOME_VARIABLE)
    if configured:
        return Path(configured).expanduser()
    import platformdirs

    return Path(platformdirs.user_data_dir("torchferry"))


@dataclass(frozen=True)
class Entry:
    """One stored version."""

    name: str
    version: int
    aliases: tuple[str, ...]
    sha256: str
    """sha256 of the archive's ``ferry.json``, which lists the sha256 of every other member."""
    size: int
    created: str
    summary: dict[str, Any]
    members: dict[str, tuple[str, int]] = field(repr=False)

    @property
    def ref(self) -> str:
        return f"{self.name}:{self.version}"

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "version": self.version,
            "ref": self.ref,
            "aliases": list(self.aliases),
            "sha256": self.sha256,
            "size": self.size,
            "created": self.created,
            "summary": self.summary,
        }


@dataclass
class GcReport:
    blobs_removed: int = 0
    bytes_freed: int = 0
    cached_archives_removed: int = 0


@dataclass
class CheckReport:
    """What ``check`` found; ``ok`` when there is nothing to report."""

    versions: int = 0
    blobs_checked: int = 0
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


def _summary(manifest: Manifest) -> dict[str, Any]:
    return {
        "kind": manifest.kind,
        "manifest_name": manifest.name,
        "manifest_version": manifest.version,
        "inputs": [s.describe() for s in manifest.signature.inputs],
        "outputs": [s.describe() for s in manifest.signature.outputs],
        "labels": len(manifest.labels or ()),
        "description": manifest.description,
    }


class Registry:
    """Named, versioned ``.ferry`` archives with aliases (``iris``, ``iris:3``, ``iris@production``).

    >>> import torch, torchferry
    >>> _ = torchferry.pack(torch.nn.Linear(4, 2), "lin.ferry", example_inputs=torch.randn(3, 4), name="lin")
    >>> registry = torchferry.Registry("registry")
    >>> registry.add("lin.ferry", alias="production").ref
    'lin:1'
    >>> registry.load("lin@production")(torch.randn(2, 4)).shape
    torch.Size([2, 2])
    """

    def __init__(self, root: PathLike | None = None) -> None:
        self.root = Path(root).expanduser() if root is not None else default_root()
        self.blobs = BlobStore(self.root / "blobs")
        self._index: Index | None = None

    def __repr__(self) -> str:
        return f"Registry({str(self.root)!r})"

    @property
    def index(self) -> Index:
        if self._index is None:
            self.root.mkdir(parents=True, exist_ok=True)
            self._index = Index(self.root / "index.sqlite")
        return self._index

    # ------------------------------------------------------------------ adding
    def add(
        self,
        path: PathLike,
        *,
        name: str | None = None,
        version: int | None = None,
        alias: str | None = None,
        progress: Callable[[int], None] | None = None,
    ) -> Entry:
        """Verify the archive at ``path`` and store it as ``name:version`` (next version by default).

        Raises (leaving the registry unchanged) for anything that is not an intact archive.
        """
        reader = open_archive(path)
        reader.check_integrity(algorithm="sha256", progress=progress)
        manifest = reader.manifest
        model_name = check_name("name", name if name is not None else manifest.name)
        if alias is not None:
            check_name("alias", alias)
        if version is not None and (not isinstance(version, int) or version < 1):
            raise UsageError(f"version must be a positive integer, not {version!r}.")
        members = self._store_members(reader, progress)
        size = sum(size for _, size in members.values())
        created = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        with self.index.write() as db:
            if version is None:
                version = _last_version(db, model_name) + 1
            elif db.execute("SELECT 1 FROM versions WHERE name = ? AND version = ?", (model_name, version)).fetchone():
                raise RegistryError(f"{model_name}:{version} already exists; omit version= to add the next one.")
            db.execute(
                "INSERT INTO versions VALUES (?, ?, ?, ?, ?, ?, ?)",
                (
                    model_name,
                    version,
                    created,
                    size,
                    members[MANIFEST_NAME][0],
                    json.dumps(members),
                    json.dumps(_summary(manifest)),
                ),
            )
            if alias is not None:
                db.execute("INSERT OR REPLACE INTO aliases VALUES (?, ?, ?)", (model_name, alias, version))
            db.execute(
                "INSERT OR REPLACE INTO counters VALUES (?, ?)",
                (model_name, max(version, _last_version(db, model_name))),
            )
        return self.get(Ref(model_name, version))

    def _store_members(self, reader: ArchiveReader, progress: Callable[[int], None] | None) -> dict[str, list[Any]]:
        stored: dict[str, list[Any]] = {}
        for name, member in reader.members.items():
            if name == MANIFEST_NAME:
                sha = hashlib.sha256(reader.read_bytes(MANIFEST_NAME)).hexdigest()
            else:
                sha = reader.manifest.members[name].sha256
            self.blobs.put(sha, reader.path, member.offset, member.size, progress=progress)
            stored[name] = [sha, member.size]
        return stored

    # ------------------------------------------------------------------ reading
    def _entries(self, where: str = "", params: Sequence[Any] = ()) -> list[Entry]:
        if not (self.root / "index.sqlite").exists():
            return []  # reading never creates a registry (a mistyped reference must not make one)
        with self.index.read() as db:
            rows = db.execute(
                f"SELECT name, version, created, size, archive_sha256, members, summary FROM versions {where} "  # noqa: S608 - fixed clauses
                "ORDER BY name, version",
                tuple(params),
            ).fetchall()
            aliases: dict[tuple[str, int], list[str]] = {}
            for name, alias, version in db.execute("SELECT name, alias, version FROM aliases ORDER BY alias"):
                aliases.setdefault((name, version), []).append(alias)
        entries = []
        for name, version, created, size, sha, members, summary in rows:
            try:
                decoded = {k: (str(v[0]), int(v[1])) for k, v in json.loads(members).items()}
                info = json.loads(summary)
            except (ValueError, TypeError, IndexError, AttributeError) as exc:
                raise RegistryError(
                    f"{self.root}: the index entry of {name}:{version} is damaged ({exc}); run "
                    "`torchferry registry check`, then remove or re-add that version."
                ) from None
            entries.append(
                Entry(
                    name,
                    version,
                    tuple(aliases.get((name, version), ())),
                    sha,
                    size,
                    created,
                    info,
                    decoded,
                )
            )
        return entries

    def list(self, name: str | None = None) -> list[Entry]:
        """Every stored version, by name then version (of ``name`` only, if given)."""
        return self._entries("WHERE name = ?", (name,)) if name else self._entries()

    def _not_found(self, ref: Ref) -> NotFoundError:
        names = sorted({e.name for e in self._entries()})
        if ref.name not in names:
            close = difflib.get_close_matches(ref.name, names, n=5, cutoff=0.3)
            others = close + [n for n in names if n not in close]
            known = ", ".join(others[:10]) or "none yet (add one with torchferry registry add)"
            return NotFoundError(f"no model named {ref.name!r} in {self.root}; models: {known}.")
        entries = self.list(ref.name)
        if ref.alias is not None:
            aliases = sorted({a for e in entries for a in e.aliases})
            return NotFoundError(
                f"{ref.name} has no alias {ref.alias!r}; aliases: {', '.join(aliases) or 'none'} "
                f"(set one with torchferry registry alias {ref.name}:VERSION {ref.alias})."
            )
        versions = ", ".join(str(e.version) for e in entries)
        return NotFoundError(f"{ref.name} has no version {ref.version}; versions: {versions}.")

    def get(self, ref: str | Ref) -> Entry:
        """The entry ``ref`` names (``name``: the latest version)."""
        parsed = parse_ref(ref) if isinstance(ref, str) else ref
        params: tuple[Any, ...]
        if parsed.alias is not None:
            where, params = (
                "WHERE (name, version) = (SELECT name, version FROM aliases WHERE name = ? AND alias = ?)",
                (parsed.name, parsed.alias),
            )
        elif parsed.version is not None:
            where, params = "WHERE name = ? AND version = ?", (parsed.name, parsed.version)
        else:
            where, params = (
                "WHERE name = ? AND version = (SELECT MAX(version) FROM versions WHERE name = ?)",
                (parsed.name, parsed.name),
            )
        found = self._entries(where, params)
        if not found:
            raise self._not_found(parsed)
        return found[0]

    def reader(self, ref: str | Ref) -> ArchiveReader:
        """The stored archive, read straight from its blobs (no copy is assembled)."""
        entry = self.get(ref)
        members = {}
        for name, (sha, size) in entry.members.items():
            blob = self.blobs.path(sha)
            if not self.blobs.has(sha, size):
                raise RegistryError(
                    f"{entry.ref}: blob {sha[:16]}… of member {name!r} is missing or truncated in "
                    f"{self.root}; run `torchferry registry check`."
                )
            members[name] = Member(name, 0, size, file=str(blob))
        return reader_from_members(entry.ref, members)

    def load(self, ref: str | Ref, **kwargs: Any) -> Packaged:
        """``load_model`` on the stored archive (same keyword arguments)."""
        return load_model(self.reader(ref), **kwargs)

    def export(self, ref: str | Ref, path: PathLike) -> Path:
        """Write the stored archive out as a ``.ferry`` file at ``path`` (atomically)."""
        reader = self.reader(ref)
        names = [n for n in reader.members if n != MANIFEST_NAME] + [MANIFEST_NAME]
        with write_archive(path) as writer:
            for name in names:
                member = reader.members[name]
                with writer.member(name, member.size) as stream, open(str(member.file), "rb") as source:
                    shutil.copyfileobj(source, stream, 8 * 1024 * 1024)
        return Path(path)

    def path(self, ref: str | Ref) -> Path:
        """A ``.ferry`` file of the stored archive, assembled once into ``archives/`` (a cache ``gc`` clears)."""
        entry = self.get(ref)
        target = self.root / "archives" / f"{entry.sha256}.ferry"
        if not target.exists():
            target.parent.mkdir(parents=True, exist_ok=True)
            self.export(entry.ref, target)
        return target

    # ------------------------------------------------------------------ changing
    def alias(self, ref: str | Ref, alias: str) -> Entry:
        """Point ``alias`` at the version ``ref`` names (moving it atomically if it exists)."""
        check_name("alias", alias)
        entry = self.get(ref)
        with self.index.write() as db:
            if not db.execute(
                "SELECT 1 FROM versions WHERE name = ? AND version = ?", (entry.name, entry.version)
            ).fetchone():
                raise NotFoundError(f"{entry.ref} was removed meanwhile; nothing was aliased.")
            db.execute("INSERT OR REPLACE INTO aliases VALUES (?, ?, ?)", (entry.name, alias, entry.version))
        return self.get(Ref(entry.name, entry.version))

    def unalias(self, ref: str | Ref) -> None:
        """Remove the alias ``name@alias``."""
        parsed = parse_ref(ref) if isinstance(ref, str) else ref
        if parsed.alias is None:
            raise UsageError(f"unalias takes NAME@ALIAS, not {str(parsed)!r}.")
        self.get(parsed)
        with self.index.write() as db:
            db.execute("DELETE FROM aliases WHERE name = ? AND alias = ?", (parsed.name, parsed.alias))

    def remove(self, ref: str | Ref, *, force: bool = False) -> Entry:
        """Remove the version ``ref`` names; refuses one an alias points to unless ``force``.

        Its blobs stay until ``gc`` (other versions may share them).
        """
        entry = self.get(ref)
        with self.index.write() as db:  # the alias check runs inside the transaction: no alias slips in between
            aliases = [
                row[0]
                for row in db.execute(
                    "SELECT alias FROM aliases WHERE name = ? AND version = ? ORDER BY alias",
                    (entry.name, entry.version),
                )
            ]
            if aliases and not force:
                raise RegistryError(
                    f"{entry.ref} is what {', '.join(entry.name + '@' + a for a in aliases)} points to; move the "
                    "alias first (torchferry registry alias) or pass force=True (--force) to remove both."
                )
            db.execute("DELETE FROM aliases WHERE name = ? AND version = ?", (entry.name, entry.version))
            db.execute("DELETE FROM versions WHERE name = ? AND version = ?", (entry.name, entry.version))
        return entry

    def gc(self, *, grace_s: float = GC_GRACE_S) -> GcReport:
        """Delete blobs no version refers to (older than ``grace_s``), dead writers' temporaries and
        cached archives of removed versions; report what was freed."""
        report = GcReport()
        entries = self.list()  # one snapshot for both sets
        live = {sha for entry in entries for sha, _ in entry.members.values()}
        live_archives = {entry.sha256 for entry in entries}
        report.blobs_removed += len(self.blobs.remove_temporaries())
        now = time.time()
        for sha, blob in self.blobs.all():
            try:
                stat = blob.stat()
            except OSError:
                continue
            if sha not in live and now - stat.st_mtime >= grace_s:
                blob.unlink(missing_ok=True)
                report.blobs_removed += 1
                report.bytes_freed += stat.st_size
        cache = self.root / "archives"
        for archive in cache.glob("*.ferry") if cache.is_dir() else ():
            if archive.stem not in live_archives:
                report.bytes_freed += archive.stat().st_size
                archive.unlink(missing_ok=True)
                report.cached_archives_removed += 1
        return report

    def check(self, *, progress: Callable[[int], None] | None = None) -> CheckReport:
        """Check the index and the sha256 of every blob; report every problem (never raises for damage)."""
        report = CheckReport()
        try:
            entries = self.list()
        except FerryError as exc:
            report.problems.append(str(exc))
            return report
        report.versions = len(entries)
        referenced: dict[str, list[str]] = {}
        for entry in entries:
            for name, (sha, _) in entry.members.items():
                referenced.setdefault(sha, []).append(f"{entry.ref} {name}")
        for sha, users in sorted(referenced.items()):
            problem = self._check_blob(sha, progress)
            report.blobs_checked += 1
            if problem:
                report.problems.append(f"blob {sha[:16]}… ({', '.join(users)}): {problem}")
        return report

    def _check_blob(self, sha: str, progress: Callable[[int], None] | None) -> str | None:
        blob = self.blobs.path(sha)
        hasher = hashlib.sha256()
        try:
            with open(blob, "rb") as handle:
                while chunk := handle.read(8 * 1024 * 1024):
                    hasher.update(chunk)
                    if progress is not None:
                        progress(len(chunk))
        except FileNotFoundError:
            return "missing"
        except OSError as exc:
            return f"unreadable ({exc.strerror or exc})"
        return None if hasher.hexdigest() == sha else "its bytes do not match its sha256 (damaged on disk)"
