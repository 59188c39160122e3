"""``torchferry registry``: add, list, alias, remove, collect and check stored archives.

Also the one place the other commands turn their argument into an archive: an existing
file, or else a registry reference (``iris``, ``iris:3``, ``iris@production``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from torchferry.archive.reader import ArchiveReader, open_archive
from torchferry.cli._render import PROGRESS_MIN_BYTES, byte_progress, console, err_console, human_bytes
from torchferry.errors import FerryError, FileFormatError, NotFoundError, RegistryError, UsageError
from torchferry.registry.refs import SYNTAX, check_name, parse_ref
from torchferry.registry.registry import GC_GRACE_S, HOME_VARIABLE, Entry, Registry

__all__ = ["FILE_SUFFIXES", "HOME_VARIABLE", "Stored", "app", "file_or_reference"]

FILE_SUFFIXES = (".ferry", ".safetensors", ".pt", ".pth", ".bin", ".tar", ".ckpt", ".zip")
"""An argument ending in one of these names a file, never a registry entry."""

EPILOG = f"""Examples:

  torchferry registry add iris.ferry --alias production

  torchferry registry ls

  torchferry registry show iris@production

  torchferry registry alias iris:4 production      # move the alias

  torchferry registry rm iris:2 && torchferry registry gc

  torchferry registry check

  torchferry registry --root /srv/models ls --json

  The registry lives in ${HOME_VARIABLE}, else the platform's user data directory; --root
  (before the command) chooses another. Elsewhere a reference works where a path does:

  torchferry inspect iris@production

  torchferry verify iris:3
"""

app = typer.Typer(
    name="registry",
    help="Named, versioned archives with aliases: add, ls, show, alias, unalias, rm, gc, check, export.\n\n"
    f"References: {SYNTAX}.",
    epilog=EPILOG,
    no_args_is_help=True,
    add_completion=False,
    rich_markup_mode=None,
    pretty_exceptions_enable=False,
)

_Json = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON.")]
_Ref = Annotated[str, typer.Argument(help=f"A reference: {SYNTAX}.", show_default=False)]


@app.callback()
def _registry(
    ctx: typer.Context,
    root: Annotated[
        Path | None,
        typer.Option(
            "--root",
            help=f"The registry's directory (default: ${HOME_VARIABLE}, else the user data directory).",
            show_default=False,
        ),
    ] = None,
) -> None:
    """Named, versioned archives with aliases."""
    ctx.obj = Registry(root)


def _registry_of(ctx: typer.Context) -> Registry:
    registry = ctx.obj
    return registry if isinstance(registry, Registry) else Registry()


def _exists(registry: Registry) -> bool:
    """Whether anything was ever added under ``registry.root`` (reading must not create a registry)."""
    return (registry.root / "index.sqlite").is_file()


def _plural(count: int, word: str) -> str:
    return f"{count} {word}{'s' * (count != 1)}"


def _require(registry: Registry) -> None:
    if _exists(registry):
        return
    if (registry.root / "blobs").is_dir():
        raise RegistryError(
            f"{registry.root} holds blobs but no index.sqlite (deleted or moved?): restore the index from a "
            "backup; `torchferry registry add` would start an empty index."
        )
    raise NotFoundError(
        f"there is no registry at {registry.root} yet; add an archive with `torchferry registry add PATH`, "
        f"or point --root (or ${HOME_VARIABLE}) at an existing one."
    )


def _print_json(value: Any) -> None:
    console.print_json(json.dumps(value, default=str))


def _signature(entry: Entry) -> str:
    summary = entry.summary
    return f"{', '.join(summary.get('inputs', []))} → {', '.join(summary.get('outputs', []))}"


def _shared_with(entry: Entry, others: list[Entry]) -> dict[str, list[str]]:
    """For each member of ``entry``, the other versions that store the very same blob."""
    shared: dict[str, list[str]] = {}
    for name, (sha, _) in entry.members.items():
        users = [o.ref for o in others if o.ref != entry.ref and any(s == sha for s, _ in o.members.values())]
        if users:
            shared[name] = users
    return shared


# ---------------------------------------------------------------------------------------------- add
def _add_work(path: Path) -> int:
    """The bytes ``add`` reports progress for: every member hashed, then every member stored."""
    if not path.is_file() or path.stat().st_size < PROGRESS_MIN_BYTES // 2:
        return 0  # no bar; a missing or broken file is reported by add
    try:
        reader = open_archive(path)
    except FerryError:
        return 0
    return sum(d.size for d in reader.manifest.members.values()) + sum(m.size for m in reader.members.values())


def add_command(
    ctx: typer.Context,
    path: Annotated[Path, typer.Argument(help="A .ferry archive; it is verified (sha256) before it is stored.")],
    name: Annotated[str | None, typer.Option(help="Model name (default: the name in the archive).")] = None,
    version: Annotated[
        int | None, typer.Option(help="Version number (default: the next one).", min=1, show_default=False)
    ] = None,
    alias: Annotated[str | None, typer.Option(help="Point this alias at the new version, e.g. production.")] = None,
    as_json: _Json = False,
) -> None:
    """Verify an archive and store it as the next version of its model.

    Members identical to those of a stored version (typically the weights) are stored
    once. Nothing is changed when the archive is damaged or the version exists.
    """
    registry = _registry_of(ctx)
    with byte_progress(f"adding {path.name}", _add_work(path)) as progress:
        entry = registry.add(path, name=name, version=version, alias=alias, progress=progress)
    if as_json:
        _print_json(entry.to_dict())
        return
    shared = _shared_with(entry, registry.list(entry.name))
    shared_bytes = sum(entry.members[m][1] for m in shared)
    aliases = f" ({', '.join(entry.name + '@' + a for a in entry.aliases)})" if entry.aliases else ""
    console.print(
        f"[green]✓[/] added {path} as {entry.ref}{aliases}: {human_bytes(entry.size)}, {_signature(entry)}",
        soft_wrap=True,
    )
    if shared:
        console.print(
            f"  {len(shared)} of {len(entry.members)} members ({human_bytes(shared_bytes)}) were already stored "
            f"and are shared: {', '.join(sorted(shared))}",
            soft_wrap=True,
        )


# ----------------------------------------------------------------------------------------------- ls
def ls_command(
    ctx: typer.Context,
    name: Annotated[str | None, typer.Argument(help="Only the versions of this model.", show_default=False)] = None,
    as_json: _Json = False,
) -> None:
    """List stored versions: reference, aliases, program kind, signature, size, creation time."""
    registry = _registry_of(ctx)
    if name is not None:
        check_name("name", name)
    entries = registry.list(name) if _exists(registry) else []
    if name is not None and not entries:
        _require(registry)
        registry.get(name)  # raises NotFoundError naming the models there are
    if as_json:
        _print_json([e.to_dict() for e in entries])
        return
    if not entries:
        console.print(f"no models in {registry.root} yet; add one with `torchferry registry add PATH`.", soft_wrap=True)
        return
    table = Table(title=str(registry.root), title_justify="left")
    for column in ("ref", "aliases", "kind", "inputs → outputs", "size", "created"):
        table.add_column(column, justify="right" if column == "size" else "left")
    for entry in entries:
        table.add_row(
            entry.ref,
            ", ".join(entry.aliases),
            str(entry.summary.get("kind", "")),
            _signature(entry),
            human_bytes(entry.size),
            entry.created,
        )
    blobs = {sha: size for e in entries for sha, size in e.members.values()}
    models = len({e.name for e in entries})
    console.print(table)
    console.print(
        f"{_plural(len(entries), 'version')} of {_plural(models, 'model')}: "
        f"{human_bytes(sum(e.size for e in entries))} of archives in {human_bytes(sum(blobs.values()))} of blobs",
        soft_wrap=True,
    )


# --------------------------------------------------------------------------------------------- show
def show_command(ctx: typer.Context, ref: _Ref, as_json: _Json = False) -> None:
    """Details of one version: its summary, aliases, hash and members (with the versions sharing each)."""
    registry = _registry_of(ctx)
    _require(registry)
    entry = registry.get(ref)
    shared = _shared_with(entry, registry.list(entry.name))
    if as_json:
        listed = {
            name: {"sha256": sha, "size": size, "shared_with": shared.get(name, [])}
            for name, (sha, size) in sorted(entry.members.items())
        }
        _print_json({**entry.to_dict(), "members": listed})
        return
    summary = entry.summary
    facts = Table(show_header=False, box=None, padding=(0, 2))
    manifest_version = summary.get("manifest_version")
    rows = [
        ("ref", entry.ref + (f"  (requested as {ref})" if ref != entry.ref else "")),
        ("aliases", ", ".join(f"{entry.name}@{a}" for a in entry.aliases) or "none"),
        ("program", str(summary.get("kind", ""))),
        ("inputs", ", ".join(summary.get("inputs", []))),
        ("outputs", ", ".join(summary.get("outputs", []))),
        ("labels", str(summary.get("labels", 0))),
        ("archive", f"{summary.get('manifest_name')}" + (f" version {manifest_version}" if manifest_version else "")),
        ("size", human_bytes(entry.size)),
        ("created", entry.created),
        ("sha256", f"{entry.sha256} (of ferry.json)"),
        ("registry", str(registry.root)),
    ]
    if summary.get("description"):
        rows.append(("description", str(summary["description"])))
    for key, value in rows:
        facts.add_row(key, value)
    members = Table(title="members", title_justify="left")
    for column in ("member", "size", "blob sha256", "shared with"):
        members.add_column(column, justify="right" if column == "size" else "left")
    for name, (sha, size) in sorted(entry.members.items()):
        members.add_row(name, human_bytes(size), sha[:16] + "…", ", ".join(shared.get(name, [])))
    console.print(facts)
    console.print(members)


# ------------------------------------------------------------------------------------ alias, unalias
def alias_command(
    ctx: typer.Context,
    ref: _Ref,
    alias: Annotated[str, typer.Argument(help="The alias to set or move, e.g. production.", show_default=False)],
) -> None:
    """Point NAME@ALIAS at the version REF names (moving it if it exists)."""
    registry = _registry_of(ctx)
    _require(registry)
    entry = registry.get(ref)
    try:
        before: str | None = registry.get(f"{entry.name}@{alias}").ref
    except (NotFoundError, UsageError):
        before = None
    entry = registry.alias(entry.ref, alias)
    moved = "" if before is None else (" (unchanged)" if before == entry.ref else f" (was {before})")
    console.print(f"[green]✓[/] {entry.name}@{alias} → {entry.ref}{moved}", soft_wrap=True)


def unalias_command(
    ctx: typer.Context,
    ref: Annotated[str, typer.Argument(help="The alias to remove, as NAME@ALIAS.", show_default=False)],
) -> None:
    """Remove an alias (the version it points to stays)."""
    registry = _registry_of(ctx)
    _require(registry)
    parsed = parse_ref(ref)
    if parsed.alias is None:
        raise UsageError(f"unalias takes NAME@ALIAS (e.g. iris@production), not {ref!r}.")
    target = registry.get(parsed).ref
    registry.unalias(parsed)
    console.print(f"[green]✓[/] removed {parsed} (it pointed to {target}, which stays)", soft_wrap=True)


# ----------------------------------------------------------------------------------------------- rm
def rm_command(
    ctx: typer.Context,
    ref: Annotated[str, typer.Argument(help="NAME:VERSION or NAME@ALIAS of the version to remove.")],
    force: Annotated[bool, typer.Option("--force", "-f", help="Also remove the aliases pointing to it.")] = False,
) -> None:
    """Remove one version. Refused while an alias points to it, unless --force (which removes
    those aliases too). Its blobs are deleted by `torchferry registry gc`."""
    registry = _registry_of(ctx)
    _require(registry)
    parsed = parse_ref(ref)
    if parsed.version is None and parsed.alias is None:
        latest = registry.get(parsed).ref
        raise UsageError(
            f"rm removes one version: write {latest} (the latest version of {parsed.name}) or NAME@ALIAS, "
            f"not the bare name {ref!r}."
        )
    entry = registry.remove(parsed, force=force)
    gone = f" and {', '.join(entry.name + '@' + a for a in entry.aliases)}" if entry.aliases else ""
    console.print(
        f"[green]✓[/] removed {entry.ref}{gone}; `torchferry registry gc` deletes the blobs no version uses "
        f"(those older than {GC_GRACE_S:g} s by default)",
        soft_wrap=True,
    )


# ----------------------------------------------------------------------------------------------- gc
def gc_command(
    ctx: typer.Context,
    grace: Annotated[
        float,
        typer.Option(
            "--grace",
            help="Keep unreferenced blobs younger than this many seconds: an add in progress may be writing them.",
            min=0,
        ),
    ] = GC_GRACE_S,
    as_json: _Json = False,
) -> None:
    """Delete blobs that no version uses (older than --grace), temporaries of writers that died,
    and cached archives of removed versions. Safe to run while others read or add."""
    registry = _registry_of(ctx)
    if not _exists(registry):
        report_dict = {"blobs_removed": 0, "bytes_freed": 0, "cached_archives_removed": 0}
    else:
        report = registry.gc(grace_s=grace)
        report_dict = {
            "blobs_removed": report.blobs_removed,
            "bytes_freed": report.bytes_freed,
            "cached_archives_removed": report.cached_archives_removed,
        }
    if as_json:
        _print_json(report_dict)
        return
    cached = report_dict["cached_archives_removed"]
    console.print(
        f"removed {_plural(report_dict['blobs_removed'], 'blob')}"
        + (f" and {_plural(cached, 'cached archive')}" if cached else "")
        + f", freed {human_bytes(report_dict['bytes_freed'])} (grace period {grace:g} s)",
        soft_wrap=True,
    )


# -------------------------------------------------------------------------------------------- check
def check_command(ctx: typer.Context, as_json: _Json = False) -> None:
    """Check the index and the sha256 of every blob a version uses. Exits with 1 and lists
    every problem (unreadable index, missing or damaged blob) when there is one."""
    registry = _registry_of(ctx)
    _require(registry)
    try:
        blobs = {sha: size for e in registry.list() for sha, size in e.members.values()}
    except FerryError:  # check itself reports a damaged index
        blobs = {}
    with byte_progress("checking blobs", sum(blobs.values())) as progress:
        report = registry.check(progress=progress)
    if as_json:
        _print_json(
            {
                "ok": report.ok,
                "root": str(registry.root),
                "versions": report.versions,
                "blobs_checked": report.blobs_checked,
                "problems": report.problems,
            }
        )
    elif report.ok:
        console.print(
            f"[green]✓[/] {registry.root}: index ok, {_plural(report.versions, 'version')}, "
            f"sha256 of {_plural(report.blobs_checked, 'blob')} ok",
            soft_wrap=True,
        )
    else:
        err_console.print(
            f"{registry.root}: {_plural(len(report.problems), 'problem')} "
            f"({_plural(report.versions, 'version')}, {_plural(report.blobs_checked, 'blob')} checked)",
            highlight=False,
            markup=False,
            soft_wrap=True,
        )
        for problem in report.problems:
            err_console.print(f"  problem: {problem}", highlight=False, markup=False, soft_wrap=True)
    if not report.ok:
        raise typer.Exit(1)


# ------------------------------------------------------------------------------------------- export
def export_command(
    ctx: typer.Context,
    ref: _Ref,
    output: Annotated[Path, typer.Option("--output", "-o", help="Where to write the .ferry archive.")],
    force: Annotated[bool, typer.Option("--force", "-f", help="Overwrite OUTPUT if it exists.")] = False,
) -> None:
    """Write a stored version out as a .ferry file (byte-identical members, atomically)."""
    registry = _registry_of(ctx)
    _require(registry)
    if output.exists() and not force:
        raise UsageError(f"{output} exists. Pass --force to overwrite it, or choose another --output.")
    entry = registry.get(ref)
    registry.export(entry.ref, output)
    console.print(f"[green]✓[/] wrote {output} ({human_bytes(output.stat().st_size)}) from {entry.ref}", soft_wrap=True)


_EXAMPLES = {
    "add": "torchferry registry add iris.ferry\n\n  torchferry registry add iris.ferry --name iris --alias production",
    "ls": "torchferry registry ls\n\n  torchferry registry ls iris --json | jq '.[].ref'",
    "show": "torchferry registry show iris@production\n\n  torchferry registry show iris:3 --json",
    "alias": "torchferry registry alias iris:3 production\n\n  torchferry registry alias iris staging   # the latest",
    "unalias": "torchferry registry unalias iris@staging",
    "rm": "torchferry registry rm iris:2\n\n  torchferry registry rm iris@old --force   # the version and the alias",
    "gc": "torchferry registry gc\n\n  torchferry registry gc --grace 0   # nothing else is adding right now",
    "check": "torchferry registry check || echo 'damaged'",
    "export": "torchferry registry export iris@production -o iris.ferry",
}
for _name, _command in (
    ("add", add_command),
    ("ls", ls_command),
    ("show", show_command),
    ("alias", alias_command),
    ("unalias", unalias_command),
    ("rm", rm_command),
    ("gc", gc_command),
    ("check", check_command),
    ("export", export_command),
):
    app.command(_name, epilog=f"Examples:\n\n  {_EXAMPLES[_name]}\n")(_command)


# ------------------------------------------------------------------ a path or a reference, for the others
@dataclass(frozen=True)
class Stored:
    """A registry entry opened for reading, in place of an archive file."""

    entry: Entry
    reader: ArchiveReader
    root: Path


def _looks_like_path(text: str) -> bool:
    return "/" in text or "\\" in text or text.lower().endswith(FILE_SUFFIXES) or text in (".", "..")


def file_or_reference(text: str, root: Path | None = None) -> Path | Stored:
    """``text`` as a file when it is one (or is spelled like one), else the registry entry it names."""
    path = Path(text)
    if path.is_file() or _looks_like_path(text):
        return path
    registry = Registry(root)
    try:
        parse_ref(text)
    except UsageError:
        raise FileFormatError(f"{text}: no such file, and not a registry reference ({SYNTAX}).", path=text) from None
    if not _exists(registry):
        raise NotFoundError(
            f"{text}: no such file, and there is no registry at {registry.root} to look it up in "
            f"(set ${HOME_VARIABLE} or pass --registry)."
        )
    try:
        entry = registry.get(text)
    except NotFoundError as exc:
        raise NotFoundError(f"{text}: no such file, and {exc}") from None
    return Stored(entry, registry.reader(entry.ref), registry.root)
