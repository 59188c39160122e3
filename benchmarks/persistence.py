"""Persistence benchmark: ``torchferry.save``/``load`` against safetensors and ``torch.save``/``load``.

One run measures, on one state_dict of float32 tensors (512 MiB by default):

* save time for every writer, each into a file that does not exist yet, after ``os.sync()``
  so that no writer pays for write-back of the previous one's dirty pages (see
  :func:`time_saves` for why the previous file is deleted only then);
* load time for every reader from a warm page cache, both the call alone and the call
  followed by a reduction over every byte ("touch"), because mmap-backed readers return
  before reading anything and pay later, at first use;
* every reader again, once per fresh subprocess: its time (the first load of a process
  pays for faulting in new memory, which repeats in one process may skip by getting the
  previous round's freed memory back) and its peak RSS growth over the RSS after imports,
  as a multiple of the tensors' size.

Saves and fresh-process loads run in rounds, one of each method per round in an order
rotated every round, so neither machine drift nor "what ran just before" favours one
method. Medians of the rounds are reported (with the fastest save, as writes on a shared
disk have a slow mode). The numbers are reported, never judged pass/fail: this is not a test.

    python benchmarks/persistence.py --out docs          # what `make bench` runs
    python benchmarks/persistence.py --quick             # smoke test; writes under benchmarks/.work
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import io
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import safetensors
import safetensors.torch as st
import torch
from _report import replace_block

import torchferry

ROOT = Path(__file__).resolve().parent.parent
WORK_DIR = ROOT / "benchmarks" / ".work"
RESULTS_JSON = ROOT / "benchmarks" / "results" / "persistence.json"
DOC_NAME = "benchmarks.md"
PLOT_NAME = Path("img") / "persistence.png"
DOC_START = "<!-- persistence-results:start -->"
DOC_END = "<!-- persistence-results:end -->"

TENSOR_COUNT = 32
COLUMNS = 1024
MB = 1e6
"""Throughputs are in MB/s with MB = 10**6 bytes; sizes given on the command line are MiB."""
QUICK_MIB = 8
QUICK_REPEATS = 2
TORCH_THREADS = 1
"""The touch reduction runs single-threaded: on a small shared machine a parallel sum waits on
busy cores for whole scheduler ticks, noise that would swamp the readers being compared."""

State = dict[str, torch.Tensor]
Touch = Callable[[Any], float]


# ----------------------------------------------------------------------------- writers


def _fsync_path(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _save_torchferry(state: State, path: Path) -> None:
    torchferry.save(state, path)


def _save_torchferry_no_fsync(state: State, path: Path) -> None:
    torchferry.save(state, path, fsync=False)


def _save_safetensors(state: State, path: Path) -> None:
    st.save_file(state, path)


def _save_safetensors_fsync(state: State, path: Path) -> None:
    """What torchferry's durable save does, done by hand: fsync the file, then its directory."""
    st.save_file(state, path)
    _fsync_path(path)
    _fsync_path(path.parent)


def _save_torch(state: State, path: Path) -> None:
    torch.save(state, path)


SAVERS: dict[str, Callable[[State, Path], None]] = {
    "torchferry.save (fsync)": _save_torchferry,
    "torchferry.save (fsync=False)": _save_torchferry_no_fsync,
    "safetensors save_file": _save_safetensors,
    "safetensors save_file + fsync": _save_safetensors_fsync,
    "torch.save": _save_torch,
}


# ----------------------------------------------------------------------------- readers


def _touch_state(state: State) -> float:
    """Reduce over every element, forcing mmap-backed tensors to actually be read."""
    return sum(float(t.sum()) for t in state.values())


@dataclass
class RawBuffer:
    """The bytes of a safetensors file in memory; the data section holds float32 only here."""

    data: torch.Tensor
    data_start: int


def _touch_raw(raw: RawBuffer) -> float:
    """Same reduction as :func:`_touch_state`, over the data section of the raw bytes."""
    return float(raw.data[raw.data_start :].view(torch.float32).sum())


def _data_start(path: Path) -> int:
    with open(path, "rb") as handle:
        return 8 + int.from_bytes(handle.read(8), "little")


def _readinto(path: Path, buffer: torch.Tensor) -> RawBuffer:
    view = buffer.numpy().data
    filled = 0
    with io.FileIO(path, "r") as handle:
        while filled < len(view):
            count = handle.readinto(view[filled:])
            if not count:
                raise EOFError(f"{path} is shorter than expected")
            filled += count
    return RawBuffer(buffer, _data_start(path))


def _byte_buffer(path: Path, *, fill: bool) -> torch.Tensor:
    """File-sized memory from torch's allocator, the one torchferry's tensors come from
    (numpy's would be madvised for huge pages, a different and here slower fault path)."""
    size = path.stat().st_size
    return torch.zeros(size, dtype=torch.uint8) if fill else torch.empty(size, dtype=torch.uint8)


class PreallocatedRead:
    """The limit: the file's bytes copied from the page cache into memory that is already
    allocated and faulted in (by :meth:`prepare`, untimed), so nothing but the copy is timed."""

    def __init__(self) -> None:
        self.buffer: torch.Tensor | None = None

    def prepare(self, path: Path) -> None:
        if self.buffer is None or self.buffer.numel() != path.stat().st_size:
            self.buffer = _byte_buffer(path, fill=True)  # zeros are written: pages faulted in now

    def __call__(self, path: Path) -> RawBuffer:
        self.prepare(path)
        assert self.buffer is not None
        return _readinto(path, self.buffer)


def _read_fresh(path: Path) -> RawBuffer:
    """Like the limit, but into new memory: what any reader returning fresh tensors must pay."""
    return _readinto(path, _byte_buffer(path, fill=False))


def _no_prepare(path: Path) -> None:
    """Most readers need nothing set up before the timer starts."""


def _load_torchferry(path: Path) -> Any:
    return torchferry.load(path)


def _load_torchferry_eager(path: Path) -> Any:
    return torchferry.load(path, mmap=False)


def _load_safetensors(path: Path) -> Any:
    return st.load_file(path)


def _load_safetensors_pread(path: Path) -> Any:
    return st.load_file(path, backend="pread")


def _load_torch(path: Path) -> Any:
    return torch.load(path, weights_only=True)


def _load_torch_mmap(path: Path) -> Any:
    return torch.load(path, weights_only=True, mmap=True)


@dataclass(frozen=True)
class Loader:
    """A reader, the file format it reads, and how to touch every byte it returned."""

    load: Callable[[Path], Any]
    fmt: str
    touch: Touch = _touch_state
    prepare: Callable[[Path], None] = _no_prepare


_PREALLOCATED = PreallocatedRead()
LOADERS: dict[str, Loader] = {
    "torchferry.load": Loader(_load_torchferry, "safetensors"),
    "safetensors load_file": Loader(_load_safetensors, "safetensors"),
    "torchferry.load (mmap=False)": Loader(_load_torchferry_eager, "safetensors"),
    "safetensors load_file (pread)": Loader(_load_safetensors_pread, "safetensors"),
    "torch.load (weights_only)": Loader(_load_torch, "torch"),
    "torch.load (weights_only, mmap)": Loader(_load_torch_mmap, "torch"),
    "limit: readinto, preallocated": Loader(_PREALLOCATED, "safetensors", _touch_raw, _PREALLOCATED.prepare),
    "limit: readinto, fresh buffer": Loader(_read_fresh, "safetensors", _touch_raw),
}


# ----------------------------------------------------------------------------- timing


def make_state(mib: float) -> State:
    """``TENSOR_COUNT`` float32 tensors of ``COLUMNS`` columns totalling about ``mib`` MiB."""
    rows = max(1, round(mib * 2**20 / (TENSOR_COUNT * COLUMNS * 4)))
    generator = torch.Generator().manual_seed(0)
    return {f"layers.{i}.weight": torch.randn(rows, COLUMNS, generator=generator) for i in range(TENSOR_COUNT)}


def _settle() -> None:
    """Collect garbage and flush dirty pages, so no writer pays for another's write-back."""
    gc.collect()
    os.sync()


def rotated(names: Sequence[str], round_no: int) -> list[str]:
    """The method order for one round, shifted by one each round.

    What ran just before a method can change its cost (the memory and page cache it left
    behind; on a VM, how much freed memory has already gone back to the host), so no
    method should always run first or last in a round.
    """
    shift = round_no % len(names)
    return [*names[shift:], *names[:shift]]


def time_saves(state: State, work: Path, repeats: int) -> dict[str, list[float]]:
    """Seconds per save, per writer; round 0 is an untimed warm-up.

    Every save starts in the same state: dirty pages flushed, then the previous save's file
    deleted just before the timer starts, so its page-cache memory has just been freed.
    The order matters on VMs that hand freed memory back to their host after a second or
    two (free page reporting, as on the reference machine): a write drawing on memory
    freed seconds earlier ran 2-5x slower than one drawing on memory freed just now,
    whichever library wrote. Deleting right before each save gives every writer the fast
    case, which is also what a machine without that feature always sees.
    """
    times: dict[str, list[float]] = {name: [] for name in SAVERS}
    previous: Path | None = None
    for round_no in range(repeats + 1):
        for index, name in enumerate(rotated(list(SAVERS), round_no)):
            target = work / f"save-{round_no}-{index}.bin"
            _settle()
            if previous is not None:
                previous.unlink()
            start = time.perf_counter()
            SAVERS[name](state, target)
            elapsed = time.perf_counter() - start
            previous = target
            if round_no:
                times[name].append(elapsed)
    if previous is not None:
        previous.unlink()
    return times


def warm_page_cache(paths: Sequence[Path]) -> None:
    """Read every file once so loads are timed from the page cache, not the disk."""
    chunk = bytearray(64 * 2**20)
    for path in paths:
        with io.FileIO(path, "r") as handle:
            while handle.readinto(chunk):
                pass


def time_loads(files: dict[str, Path], repeats: int) -> dict[str, dict[str, list[float]]]:
    """Seconds for the load alone and for load + touch (same call), per reader, in one process.

    Each reader's rounds run back to back (after one untimed warm-up), not round-robin, so
    a reader's repeats see the heap its own previous round left, not another reader's.
    Whether a repeat then gets the freed memory back without page faults is up to glibc's
    heap trimming, not to the reader; fresh-process runs (:func:`run_fresh_processes`) are
    the figure that does not depend on it.
    """
    times: dict[str, dict[str, list[float]]] = {}
    for name, loader in LOADERS.items():
        path = files[loader.fmt]
        loader.prepare(path)
        times[name] = {"load": [], "load_touch": []}
        for round_no in range(repeats + 1):
            gc.collect()
            start = time.perf_counter()
            loaded = loader.load(path)
            loaded_at = time.perf_counter()
            loader.touch(loaded)
            touched_at = time.perf_counter()
            del loaded
            if round_no:
                times[name]["load"].append(loaded_at - start)
                times[name]["load_touch"].append(touched_at - start)
    return times


# ----------------------------------------------------------------------------- peak memory


def _status_kib(field_name: str) -> int:
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith(field_name + ":"):
                return int(line.split()[1])
    raise KeyError(field_name)


def _reset_peak_rss() -> bool:
    """Reset the kernel's RSS high-water mark (Linux clear_refs "5"), so imports do not count."""
    try:
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")
    except OSError:
        return False
    return True


def _peak_rss_kib() -> int:
    """VmHWM (reset by :func:`_reset_peak_rss`); ru_maxrss (KiB on Linux) where there is no /proc."""
    try:
        return _status_kib("VmHWM")
    except OSError:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def child_main(name: str, path: Path) -> None:
    """Run in a fresh interpreter: load once and touch, timing both and recording peak RSS.

    A fresh process is what a server or a resumed job is: its allocator has no freed memory
    to hand back, so every page of the new tensors is faulted in. In-process repeats reuse
    the pages freed by the previous round and hide that cost.
    """
    loader = LOADERS[name]
    torch.set_num_threads(TORCH_THREADS)
    gc.collect()
    baseline = _status_kib("VmRSS")
    reset = _reset_peak_rss()
    loader.prepare(path)
    start = time.perf_counter()
    loaded = loader.load(path)
    load_s = time.perf_counter() - start
    after_load = _peak_rss_kib()
    start = time.perf_counter()
    loader.touch(loaded)
    touch_s = time.perf_counter() - start
    after_touch = _peak_rss_kib()
    print(
        json.dumps(
            {
                "baseline_kib": baseline,
                "load_kib": after_load,
                "touch_kib": after_touch,
                "reset": reset,
                "load_s": load_s,
                "load_touch_s": load_s + touch_s,
            }
        )
    )


def _run_child(name: str, path: Path) -> dict[str, Any]:
    command = [sys.executable, str(Path(__file__).resolve()), "--child", name, "--file", str(path)]
    done = subprocess.run(command, capture_output=True, text=True, check=True)
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def run_fresh_processes(files: dict[str, Path], runs: int) -> dict[str, list[dict[str, Any]]]:
    """One load per fresh process, ``runs`` processes per reader, in rotated rounds."""
    raw: dict[str, list[dict[str, Any]]] = {name: [] for name in LOADERS}
    for round_no in range(runs):
        for name in rotated(list(LOADERS), round_no):
            raw[name].append(_run_child(name, files[LOADERS[name].fmt]))
    return raw


def peak_ratios(runs: list[dict[str, Any]], tensor_bytes: int) -> dict[str, float]:
    """Median peak RSS growth over the post-import baseline, as a multiple of the tensor bytes."""
    ratios = {
        key: statistics.median((r[f"{key}_kib"] - r["baseline_kib"]) * 1024 / tensor_bytes for r in runs)
        for key in ("load", "touch")
    }
    ratios["hwm_reset"] = float(all(r["reset"] for r in runs))
    return ratios


# ----------------------------------------------------------------------------- report


def machine_info() -> dict[str, Any]:
    """What a reader needs to compare these numbers with their own."""
    cpu = "unknown"
    try:
        with open("/proc/cpuinfo") as handle:
            cpu = next((line.split(":", 1)[1].strip() for line in handle if line.startswith("model name")), cpu)
        mem_gib = round(_meminfo_kib("MemTotal") / 2**20, 1)
    except OSError:
        mem_gib = float("nan")
    return {
        "nproc": os.cpu_count(),
        "cpu": cpu,
        "memory_gib": mem_gib,
        "kernel": platform.release(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "safetensors": safetensors.__version__,
        "numpy": np.__version__,
        "torchferry": torchferry.__version__,
    }


def _meminfo_kib(field_name: str) -> int:
    with open("/proc/meminfo") as handle:
        for line in handle:
            if line.startswith(field_name + ":"):
                return int(line.split()[1])
    raise KeyError(field_name)


def summarize(samples: list[float], nbytes: int) -> dict[str, Any]:
    median = statistics.median(samples)
    return {"median_s": median, "mb_per_s": nbytes / median / MB, "samples_s": samples}


OURS_MMAP = "torchferry.load"
OURS_EAGER = "torchferry.load (mmap=False)"
COMPARISONS: dict[str, tuple[str, str]] = {
    "mmap_vs_load_file": (OURS_MMAP, "safetensors load_file"),
    "mmap_vs_torch_mmap": (OURS_MMAP, "torch.load (weights_only, mmap)"),
    "eager_vs_pread": (OURS_EAGER, "safetensors load_file (pread)"),
    "eager_vs_torch_load": (OURS_EAGER, "torch.load (weights_only)"),
    "eager_vs_fresh_readinto": (OURS_EAGER, "limit: readinto, fresh buffer"),
    "eager_vs_prealloc_readinto": (OURS_EAGER, "limit: readinto, preallocated"),
}
"""Load ratios by short key: (torchferry reader, reader it is compared with). The default,
memory-mapped ``torchferry.load`` is compared with mmap readers, ``mmap=False`` with copying ones."""
SECTIONS = {"fresh_process": "fresh process", "in_process": "in-process repeat"}
KINDS = {"load": "call alone", "load_touch": "load + touch"}


def _save_ratios(
    save_samples: dict[str, list[float]], suffix: str, statistic: Callable[[list[float]], float]
) -> dict[str, float]:
    save = {name: statistic(samples) for name, samples in save_samples.items()}
    return {
        f"save_no_fsync_vs_save_file{suffix}": save["torchferry.save (fsync=False)"] / save["safetensors save_file"],
        f"save_fsync_vs_save_file_fsync{suffix}": save["torchferry.save (fsync)"]
        / save["safetensors save_file + fsync"],
    }


def compute_ratios(results: dict[str, Any]) -> dict[str, float]:
    """Ratios of medians, torchferry over a reference (lower is better for all of them)."""
    memory = results["memory"]
    ratios = {
        "load_peak_rss_after_touch_vs_tensor_bytes": memory[OURS_MMAP]["touch"],
        "load_peak_rss_after_load_vs_tensor_bytes": memory[OURS_MMAP]["load"],
        "eager_load_peak_rss_after_load_vs_tensor_bytes": memory[OURS_EAGER]["load"],
    }
    save_samples = {name: entry["samples_s"] for name, entry in results["save"].items()}
    ratios.update(_save_ratios(save_samples, "", statistics.median))
    ratios.update(_save_ratios(save_samples, "_fastest", min))
    for section in SECTIONS:
        for kind in KINDS:
            median = {name: entry[kind]["median_s"] for name, entry in results[section].items()}
            for key, (ours, reference) in COMPARISONS.items():
                ratios[f"{section}_{kind}_{key}"] = median[ours] / median[reference]
    return ratios


TARGET = 1.1
TARGETS = {
    "fresh_process_load_mmap_vs_load_file": "load / safetensors load_file, fresh process, call alone",
    "fresh_process_load_touch_mmap_vs_load_file": "load / safetensors load_file, fresh process, load + touch",
    "in_process_load_mmap_vs_load_file": "load / safetensors load_file, in-process, call alone",
    "in_process_load_touch_mmap_vs_load_file": "load / safetensors load_file, in-process, load + touch",
    "fresh_process_load_touch_eager_vs_pread": "load(mmap=False) / load_file (pread), fresh process, load + touch",
    "save_no_fsync_vs_save_file": "save(fsync=False) / safetensors save_file",
    "save_fsync_vs_save_file_fsync": "save (fsync) / safetensors save_file + fsync",
    "load_peak_rss_after_touch_vs_tensor_bytes": "load peak RSS growth after touch / tensor bytes",
}
CONTEXT = {
    "save_no_fsync_vs_save_file_fastest": "save(fsync=False) / save_file, fastest run of each",
    "save_fsync_vs_save_file_fsync_fastest": "save (fsync) / save_file + fsync, fastest run of each",
    "fresh_process_load_touch_mmap_vs_torch_mmap": "load / torch.load (mmap), fresh process, load + touch",
    "in_process_load_touch_eager_vs_pread": "load(mmap=False) / load_file (pread), in-process, load + touch",
    "fresh_process_load_touch_eager_vs_torch_load": "load(mmap=False) / torch.load, fresh process, load + touch",
    "fresh_process_load_touch_eager_vs_fresh_readinto": (
        "load(mmap=False) / readinto fresh buffer, fresh process, load + touch"
    ),
    "in_process_load_touch_eager_vs_prealloc_readinto": (
        "load(mmap=False) / readinto preallocated, in-process, load + touch"
    ),
    "load_peak_rss_after_load_vs_tensor_bytes": "load peak RSS growth after the call / tensor bytes",
    "eager_load_peak_rss_after_load_vs_tensor_bytes": "load(mmap=False) peak RSS growth after the call / tensor bytes",
}


def _save_table(results: dict[str, Any]) -> list[str]:
    lines = ["| save | median s | min s | MB/s (median) |", "|---|---:|---:|---:|"]
    for name, entry in results["save"].items():
        fastest = min(entry["samples_s"])
        lines.append(f"| {name} | {entry['median_s']:.3f} | {fastest:.3f} | {entry['mb_per_s']:.0f} |")
    return lines


def _load_table(results: dict[str, Any]) -> list[str]:
    lines = [
        "| load | fresh process: load s | load + touch s | MB/s (load + touch) "
        "| in-process: load s | load + touch s | peak RSS / size: load | after touch |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name in LOADERS:
        fresh, warm, mem = results["fresh_process"][name], results["in_process"][name], results["memory"][name]
        lines.append(
            f"| {name} | {fresh['load']['median_s']:.3f} | {fresh['load_touch']['median_s']:.3f} "
            f"| {fresh['load_touch']['mb_per_s']:.0f} | {warm['load']['median_s']:.3f} "
            f"| {warm['load_touch']['median_s']:.3f} | {mem['load']:.2f} | {mem['touch']:.2f} |"
        )
    return lines


def _target_table(ratios: dict[str, float]) -> list[str]:
    lines = ["| torchferry ratio | value | target | met |", "|---|---:|---:|---|"]
    for key, label in TARGETS.items():
        met = "yes" if ratios[key] <= TARGET else "**no**"
        lines.append(f"| {label} | {ratios[key]:.2f}x | <= {TARGET}x | {met} |")
    lines += [f"| {label} | {ratios[key]:.2f}x | (context) | |" for key, label in CONTEXT.items()]
    return lines


def render_markdown(results: dict[str, Any]) -> str:
    """The results as Markdown: printed to stdout and kept in docs/benchmarks.md in sync."""
    cfg, machine = results["config"], results["machine"]
    head = (
        f"Run {cfg['date']}: {cfg['tensor_count']} float32 tensors, {cfg['tensor_bytes'] / 2**20:.0f} MiB in all, "
        f"median of {cfg['repeats']} rounds; MB = 10^6 bytes. Machine: {machine['nproc']} CPUs ({machine['cpu']}), "
        f"{machine['memory_gib']} GiB RAM, Linux {machine['kernel']}, Python {machine['python']}, "
        f"torch {machine['torch']} ({machine['torch_threads']} thread), safetensors {machine['safetensors']}, "
        f"numpy {machine['numpy']}, torchferry {machine['torchferry']}. Load average before/after: "
        f"{cfg['loadavg_before'][0]:.2f}/{cfg['loadavg_after'][0]:.2f}."
    )
    parts = [head, "", *_save_table(results), "", *_load_table(results), "", *_target_table(results["ratios"])]
    return "\n".join(parts)


def write_plot(results: dict[str, Any], path: Path) -> None:
    """Four panels: save medians, load medians (fresh process, in-process), peak RSS / size."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 2, figsize=(16, 10), constrained_layout=True)
    save_names = list(results["save"])
    axes[0, 0].barh(save_names, [results["save"][n]["median_s"] for n in save_names], color="tab:blue")
    axes[0, 0].invert_yaxis()
    axes[0, 0].set(title="Save: median seconds (lower is better)", xlabel="seconds")
    names = list(LOADERS)
    for axis, section in ((axes[0, 1], "fresh_process"), (axes[1, 0], "in_process")):
        timings = results[section]
        _paired_bars(
            axis,
            names,
            [timings[n]["load"]["median_s"] for n in names],
            [timings[n]["load_touch"]["median_s"] for n in names],
            ("load", "load + touch"),
        )
        axis.set(title=f"Load, {SECTIONS[section]}: median seconds (lower is better)", xlabel="seconds")
    memory = results["memory"]
    _paired_bars(
        axes[1, 1],
        names,
        [memory[n]["load"] for n in names],
        [memory[n]["touch"] for n in names],
        ("after load", "after touch"),
    )
    axes[1, 1].axvline(1.0, color="black", linewidth=0.8)
    axes[1, 1].axvline(TARGET, color="tab:red", linestyle="--", linewidth=0.8)
    axes[1, 1].set_xlim(0, max(1.3, *(m["touch"] for m in memory.values())) * 1.05)
    axes[1, 1].set(title="Load: peak RSS growth / tensor bytes (fresh process)", xlabel="ratio")
    fig.suptitle(f"torchferry persistence, {results['config']['tensor_bytes'] / 2**20:.0f} MiB float32 state_dict")
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=80)
    plt.close(fig)


def _paired_bars(axis: Any, names: list[str], first: list[float], second: list[float], labels: tuple[str, str]) -> None:
    positions = np.arange(len(names))
    axis.barh(positions - 0.2, first, height=0.4, label=labels[0], color="tab:orange")
    axis.barh(positions + 0.2, second, height=0.4, label=labels[1], color="tab:green")
    axis.set_yticks(positions, names)
    axis.invert_yaxis()
    axis.legend(loc="upper center", bbox_to_anchor=(0.5, -0.12), ncol=2, frameon=False)


def update_doc(doc: Path, markdown: str) -> bool:
    return replace_block(doc, DOC_START, DOC_END, markdown)


# ----------------------------------------------------------------------------- main


def write_inputs(state: State, work: Path) -> dict[str, Path]:
    """The files the readers load: one safetensors file (written by torchferry) and one torch.save file."""
    files = {"safetensors": work / "state.safetensors", "torch": work / "state.pt"}
    torchferry.save(state, files["safetensors"], fsync=False)
    torch.save(state, files["torch"])
    return files


def run(mib: float, repeats: int, work: Path) -> dict[str, Any]:
    """Every measurement of one run, as a JSON-ready dict."""
    torch.set_num_threads(TORCH_THREADS)
    load_before = os.getloadavg()
    state = make_state(mib)
    tensor_bytes = sum(t.numel() * t.element_size() for t in state.values())
    work.mkdir(parents=True, exist_ok=True)
    files = write_inputs(state, work)
    try:
        save_times = time_saves(state, work, repeats)
        del state
        warm_page_cache(list(files.values()))
        load_times = time_loads(files, repeats)
        fresh = run_fresh_processes(files, repeats)
        file_sizes = {fmt: path.stat().st_size for fmt, path in files.items()}
    finally:
        for path in [*files.values(), *work.glob("save-*.bin")]:
            path.unlink(missing_ok=True)
        with contextlib.suppress(OSError):  # left in place when it holds anything else
            work.rmdir()
    results: dict[str, Any] = {
        "config": {
            "date": time.strftime("%Y-%m-%d"),
            "tensor_count": TENSOR_COUNT,
            "tensor_bytes": tensor_bytes,
            "file_bytes": file_sizes,
            "repeats": repeats,
            "loadavg_before": load_before,
            "loadavg_after": os.getloadavg(),
        },
        "machine": machine_info(),
        "save": {name: summarize(samples, tensor_bytes) for name, samples in save_times.items()},
        "in_process": {
            name: {kind: summarize(samples, tensor_bytes) for kind, samples in per_kind.items()}
            for name, per_kind in load_times.items()
        },
        "fresh_process": {
            name: {kind: summarize([r[f"{kind}_s"] for r in runs], tensor_bytes) for kind in ("load", "load_touch")}
            for name, runs in fresh.items()
        },
        "memory": {name: peak_ratios(runs, tensor_bytes) for name, runs in fresh.items()},
    }
    results["ratios"] = compute_ratios(results)
    return results


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--mib", type=float, default=512, help="total tensor size in MiB (default 512)")
    parser.add_argument("--repeats", type=int, default=5, help="timed rounds per method (default 5)")
    parser.add_argument("--quick", action="store_true", help=f"smoke test: {QUICK_MIB} MiB, outputs in --work")
    parser.add_argument("--out", type=Path, default=ROOT / "docs", help="plot goes to OUT/img/persistence.png")
    parser.add_argument("--work", type=Path, default=WORK_DIR, help="scratch dir on the disk to measure")
    parser.add_argument("--from-json", type=Path, help="only re-render plot, table and doc from saved results")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--file", type=Path, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    if args.child:
        child_main(args.child, args.file)
        return
    mib, repeats, out, json_path = args.mib, args.repeats, args.out, RESULTS_JSON
    if args.quick:  # never overwrite published results with smoke-test numbers
        mib, repeats, out = QUICK_MIB, QUICK_REPEATS, args.work / "quick"
        json_path = out / "persistence.json"
    if args.from_json:
        results = json.loads(args.from_json.read_text())
    else:
        results = run(mib, repeats, args.work)
        json_path.parent.mkdir(parents=True, exist_ok=True)
        json_path.write_text(json.dumps(results, indent=2) + "\n")
    markdown = render_markdown(results)
    print(markdown)
    write_plot(results, out / PLOT_NAME)
    synced = update_doc(out / DOC_NAME, markdown)
    written = (
        [str(out / PLOT_NAME)]
        + ([] if args.from_json else [str(json_path)])
        + ([str(out / DOC_NAME)] if synced else [])
    )
    print(f"\nwrote {', '.join(written)}")


if __name__ == "__main__":
    main()
