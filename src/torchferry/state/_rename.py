"""Key renaming for ``load_into`` and the wrapper-prefix detective behind its hints."""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import TypeAlias

from torchferry.errors import UsageError

RenameSpec: TypeAlias = Mapping[str, str] | Sequence[tuple[str, str]] | Callable[[str], str | None] | None
"""``{"module.": ""}`` prefix mapping (``""`` as a key prepends), ``[(regex, repl), ...]``
applied in order, or a callable returning the new key (``None`` drops the key)."""

_KNOWN_WRAPPERS = {
    "module.": "the file was saved from a DataParallel/DistributedDataParallel-wrapped model",
    "_orig_mod.": "the file was saved from a torch.compile'd model",
}


def _rename_function(spec: RenameSpec) -> Callable[[str], str | None]:
    if spec is None:
        return lambda key: key
    if isinstance(spec, Mapping):
        prefixes = sorted(spec.items(), key=lambda item: -len(item[0]))

        def by_prefix(key: str) -> str:
            for old, new in prefixes:
                if key.startswith(old):
                    return new + key[len(old) :]
            return key

        return by_prefix
    if callable(spec):
        return spec
    try:
        rules = [(re.compile(pattern), repl) for pattern, repl in spec]
    except (TypeError, ValueError, re.error) as exc:
        raise UsageError(
            f"rename={spec!r:.80} is not understood ({exc}). Pass a prefix dict like "
            "{'module.': ''}, a list of (regex, replacement) pairs, or a function of the key."
        ) from None

    def by_regex(key: str) -> str:
        for pattern, repl in rules:
            key = pattern.sub(repl, key)
        return key

    return by_regex


def apply_rename(keys: Iterable[str], spec: RenameSpec) -> dict[str, str]:
    """Map each source key to its new name (dropped keys are left out)."""
    fn = _rename_function(spec)
    result: dict[str, str] = {}
    seen: dict[str, str] = {}
    for key in keys:
        new = fn(key)
        if new is None:
            continue
        if not isinstance(new, str):
            raise UsageError(f"rename turned {key!r} into {new!r}; it must return a str or None.")
        if new in seen:
            raise UsageError(
                f"rename maps both {seen[new]!r} and {key!r} to {new!r}. "
                "Make the rename one-to-one, or drop one key by returning None from a rename function."
            )
        seen[new] = key
        result[key] = new
    return result


def _common_prefix(pairs: Counter[str], needed: int) -> str | None:
    if not pairs:
        return None
    prefix, count = pairs.most_common(1)[0]
    return prefix if count >= needed else None


def _prefixes(keys: Iterable[str], targets: set[str]) -> Counter[str]:
    """Count prefixes p with key == p + t for some t in targets, split at dots."""
    counter: Counter[str] = Counter()
    for key in keys:
        for i, char in enumerate(key):
            if char == "." and key[i + 1 :] in targets:
                counter[key[: i + 1]] += 1
    return counter


def prefix_hint(missing: Sequence[str], unexpected: Sequence[str]) -> str | None:
    """Explain missing/unexpected keys that differ only by a wrapper prefix, with the fix."""
    if not missing or not unexpected:
        return None
    needed = max(1, min(len(missing), len(unexpected)) // 2)
    strip = _common_prefix(_prefixes(unexpected, set(missing)), needed)
    if strip is not None:
        why = _KNOWN_WRAPPERS.get(strip, "the source keys carry an extra prefix")
        return f"the source keys start with {strip!r} ({why}); pass rename={{{strip!r}: ''}}"
    add = _common_prefix(_prefixes(missing, set(unexpected)), needed)
    if add is not None:
        return f"the model's keys start with {add!r} but the source's do not; pass rename={{'': {add!r}}}"
    return None
