"""Report helpers the benchmark scripts share: the generated doc block, machine memory."""

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


def meminfo_gib() -> float:
    """Total memory of the machine, for the reader comparing these numbers with their own."""
    try:
        with open("/proc/meminfo") as handle:
            kib = next(int(line.split()[1]) for line in handle if line.startswith("MemTotal:"))
    except (OSError, StopIteration):
        return float("nan")
    return round(kib / 2**20, 1)
