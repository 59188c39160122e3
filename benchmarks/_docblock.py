"""The generated block of ``docs/benchmarks.md`` that each benchmark script rewrites."""

from __future__ import annotations

from pathlib import Path


def replace_block(doc: Path, start_marker: str, end_marker: str, markdown: str) -> bool:
    """Replace the text between the markers, so the doc's table always matches the plot and JSON;
    ``False`` when the doc or its markers are missing (the caller says so)."""
    if not doc.exists():
        return False
    text = doc.read_text()
    start, end = text.find(start_marker), text.find(end_marker)
    if start < 0 or end < start:
        return False
    doc.write_text(f"{text[: start + len(start_marker)]}\n{markdown}\n{text[end:]}")
    return True
