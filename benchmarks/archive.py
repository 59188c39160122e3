"""Archive benchmark: ``torchferry.pack``/``load_model`` against loading weights into a hand-built model.

A ``.ferry`` archive replaces "have the model's source, build the module, load a state_dict".
That is only worth it if opening the archive costs about what doing it by hand costs, so
one run measures, each variant in its own fresh Python process:

* **first prediction** of the Iris classifier (an MLP 4 -> 8 -> 3, packed with
  ``mode="export"``): the time from starting the process to having the first prediction,
  against the floor: a process that imports torch and safetensors, defines the same
  ``nn.Module``, loads its state_dict from a safetensors file and predicts once. The
  parent timestamps the spawn and the child its milestones on the same monotonic clock,
  so start-up, imports, load and first call are each known; whole-process wall time
  (exit included) is reported as well. ``import torch`` alone and an empty interpreter
  are timed too, to show what dominates.
* **load + forward of a 512 MiB model** (8 ``nn.Linear(4096, 4096)`` with ReLU, so one
  forward reads every weight): from just before the load call to after the forward, for
  ``load_model`` with and without integrity checking, against safetensors ``load_file``
  into the same module built on the meta device (``load_state_dict(assign=True)``) and
  the same forward. Mapped readers return before reading anything and pay at first use,
  which is why the forward is inside the timed window.
* **size** of each archive against the bare safetensors file of the same weights.

For contrast, ``torch.export.load`` of a ``torch.export.save`` file and ``torch.load`` of a
pickled whole module run on the same models. The page cache is warm: every input is read
once and every variant runs once, untimed, before the timed rounds. Rounds run every
variant once in an order rotated each round; medians are reported, and ratios are ratios
of medians measured in the same run. The numbers are reported, never judged pass/fail:
this is not a test.

    python benchmarks/archive.py --out docs      # what `make bench` runs (about 4 minutes)
    python benchmarks/archive.py --quick         # smoke test; writes under benchmarks/.work/quick-archive
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import io
import json
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import safetensors
import safetensors.torch as st
import torch
import xxhash
from _report import meminfo_gib, replace_block

import torchferry

ROOT = Path(__file__).resolve().parent.parent
WORK_DIR = ROOT / "benchmarks" / ".work"
RESULTS_JSON = ROOT / "benchmarks" / "results" / "archive.json"
DOC_NAME = "benchmarks.md"
PLOT_NAME = Path("img") / "archive.png"
DOC_START = "<!-- archive-results:start -->"
DOC_END = "<!-- archive-results:end -->"

LAYERS, WIDTH = 8, 4096
"""The large model: 8 x (4096 x 4096 + 4096) float32 = 512 MiB of weights."""
BATCH = 2
QUICK_LAYERS, QUICK_WIDTH, QUICK_REPEATS = 2, 1024, 2
"""--quick: 8 MiB, 2 rounds."""
REPEATS = 5
CONTRAST_REPEATS = 3
"""torch.export.load and torch.load of a pickle are context, and slow: fewer rounds."""
TORCH_THREADS = 1
"""The large model's children compute on one thread: on a small shared machine a parallel
matmul waits on busy cores for whole scheduler ticks, noise that would swamp the loaders."""
IRIS_SAMPLE = [[5.1, 3.5, 1.4, 0.2]]
MODELS_MODULE = "ferry_bench_models"

# ----------------------------------------------------------------------------- models

MULTICLASS_SOURCE = '''
class Multiclass(nn.Module):
    """The Iris classifier of examples/iris: 4 measurements -> 8 hidden -> 3 log-probabilities."""

    def __init__(self) -> None:
        super().__init__()
        self.hidden = nn.Linear(4, 8)
        self.act = nn.ReLU()
        self.output = nn.Linear(8, 3)
        self.logsoftmax = nn.LogSoftmax(dim=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.logsoftmax(self.output(self.act(self.hidden(x))))
'''

STACK_SOURCE = '''
class Stack(nn.Module):
    """``layers`` square Linear layers with ReLU: one forward reads every weight."""

    def __init__(self, layers: int, width: int) -> None:
        super().__init__()
        self.layers = nn.ModuleList(nn.Linear(width, width) for _ in range(layers))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            x = torch.relu(layer(x))
        return x
'''

MODELS_FILE = f'''"""Models of benchmarks/archive.py, written by it; pickles of whole modules refer to this module."""

import torch
from torch import nn

{MULTICLASS_SOURCE}

{STACK_SOURCE}'''


def import_models(work: Path) -> ModuleType:
    """Write the models' module into ``work`` and import it from there, as the children will."""
    (work / f"{MODELS_MODULE}.py").write_text(MODELS_FILE)
    if str(work) not in sys.path:
        sys.path.insert(0, str(work))
    importlib.invalidate_caches()
    return importlib.import_module(MODELS_MODULE)


# ----------------------------------------------------------------------------- children

CHILD_HEAD = """import time

_START = time.monotonic()
import json
"""
CHILD_TAIL = """def _peak_rss_kib():
    # VmHWM starts afresh at exec; ru_maxrss would carry over the parent's peak
    with open("/proc/self/status") as handle:
        return next((int(line.split()[1]) for line in handle if line.startswith("VmHWM:")), None)


_PREDICTED = time.monotonic()
print(json.dumps({
    "start": _START, "imported": _IMPORTED, "load_start": _LOAD_START, "loaded": _LOADED,
    "predicted": _PREDICTED, "checksum": None if out is None else float(out.sum()),
    "peak_rss_kib": _peak_rss_kib(),
}))
"""
IRIS_INPUT = f"torch.tensor({IRIS_SAMPLE!r})"
LARGE_INPUT = "torch.linspace(-1, 1, @BATCH@ * @WIDTH@).reshape(@BATCH@, @WIDTH@)"
"""Children mark ``_IMPORTED`` after imports (and class definitions), ``_LOAD_START`` just
before the load call, ``_LOADED`` after it, and leave the prediction in ``out``."""


@dataclass(frozen=True)
class Variant:
    """One way of getting from a file to a prediction, run as a child script."""

    label: str
    role: str
    """"baseline", "ours", "context", or "contrast" (context that gets fewer rounds)."""
    file: str
    """Which input file it reads: a key of the section's files, or "" for none."""
    body: str

    def source(self, path: Path | None, substitutions: dict[str, str]) -> str:
        body = self.body.replace("@PATH@", repr(str(path)) if path else "None")
        for key, value in substitutions.items():
            body = body.replace(f"@{key}@", value)
        return CHILD_HEAD + body + CHILD_TAIL


def _marks(setup: str = "") -> str:
    """Imports done; ``setup`` runs untimed between the imports and the load."""
    return f"_IMPORTED = time.monotonic()\n{setup}_LOAD_START = time.monotonic()\n"


IRIS_VARIANTS: dict[str, Variant] = {
    "import torch": Variant(
        "import torch, nothing else",
        "contrast",
        "",
        "import torch\n\n" + _marks() + "_LOADED = time.monotonic()\nout = None\n",
    ),
    "floor": Variant(
        "floor: import torch + safetensors, define the nn.Module, load_file + load_state_dict, call",
        "baseline",
        "safetensors",
        "import torch\nfrom safetensors.torch import load_file\nfrom torch import nn\n"
        + MULTICLASS_SOURCE
        + _marks()
        + "model = Multiclass()\nmodel.load_state_dict(load_file(@PATH@))\nmodel.eval()\n"
        + f"_LOADED = time.monotonic()\nwith torch.inference_mode():\n    out = model({IRIS_INPUT})\n",
    ),
    "ferry": Variant(
        "torchferry.load_model, call",
        "ours",
        "ferry",
        "import torch\n\nimport torchferry\n\n"
        + _marks()
        + f"model = torchferry.load_model(@PATH@)\n_LOADED = time.monotonic()\nout = model({IRIS_INPUT})\n",
    ),
    "ferry predict": Variant(
        "torchferry.load_model, predict(list)",
        "context",
        "ferry",
        "import torchferry\n\n"
        + _marks()
        + "model = torchferry.load_model(@PATH@)\n_LOADED = time.monotonic()\n"
        + f"out = next(iter(model.predict({IRIS_SAMPLE!r}).values()))\n",
    ),
    "export.load": Variant(
        "torch.export.load, .module(), call",
        "contrast",
        "pt2",
        "import torch\n\n"
        + _marks()
        + "module = torch.export.load(@PATH@).module()\n_LOADED = time.monotonic()\n"
        + f"with torch.inference_mode():\n    out = module({IRIS_INPUT})\n",
    ),
    "torch.load": Variant(
        "torch.load of the pickled module (weights_only=False), call",
        "contrast",
        "pickle",
        "import torch\n\n"
        + _marks()
        + "model = torch.load(@PATH@, weights_only=False)\nmodel.eval()\n_LOADED = time.monotonic()\n"
        + f"with torch.inference_mode():\n    out = model({IRIS_INPUT})\n",
    ),
}

_LARGE_SETUP = f"torch.set_num_threads({TORCH_THREADS})\nx = {LARGE_INPUT}\n"
LARGE_VARIANTS: dict[str, Variant] = {
    "floor": Variant(
        "safetensors load_file + load_state_dict(assign=True) into the module built on meta, forward",
        "baseline",
        "safetensors",
        "import torch\nfrom safetensors.torch import load_file\nfrom torch import nn\n"
        + STACK_SOURCE
        + _marks(_LARGE_SETUP + "with torch.device('meta'):\n    model = Stack(@LAYERS@, @WIDTH@)\nmodel.eval()\n")
        + "model.load_state_dict(load_file(@PATH@), assign=True)\n_LOADED = time.monotonic()\n"
        + "with torch.inference_mode():\n    out = model(x)\n",
    ),
    "ferry": Variant(
        "torchferry.load_model (integrity check on, the default), forward",
        "ours",
        "ferry",
        "import torch\n\nimport torchferry\n\n"
        + _marks(_LARGE_SETUP)
        + "model = torchferry.load_model(@PATH@)\n_LOADED = time.monotonic()\nout = model(x)\n",
    ),
    "ferry unchecked": Variant(
        "torchferry.load_model(check_integrity=False), forward",
        "ours",
        "ferry",
        "import torch\n\nimport torchferry\n\n"
        + _marks(_LARGE_SETUP)
        + "model = torchferry.load_model(@PATH@, check_integrity=False)\n_LOADED = time.monotonic()\nout = model(x)\n",
    ),
    "export.load": Variant(
        "torch.export.load, .module(), forward",
        "contrast",
        "pt2",
        "import torch\n\n"
        + _marks(_LARGE_SETUP)
        + "module = torch.export.load(@PATH@).module()\n_LOADED = time.monotonic()\n"
        + "with torch.inference_mode():\n    out = module(x)\n",
    ),
    "torch.load": Variant(
        "torch.load of the pickled module (weights_only=False), forward",
        "contrast",
        "pickle",
        "import torch\n\n"
        + _marks(_LARGE_SETUP)
        + "model = torch.load(@PATH@, weights_only=False)\nmodel.eval()\n_LOADED = time.monotonic()\n"
        + "with torch.inference_mode():\n    out = model(x)\n",
    ),
}
SECTIONS = {"first_prediction": IRIS_VARIANTS, "large_load": LARGE_VARIANTS}


@dataclass(frozen=True)
class Shape:
    """The large model's shape."""

    layers: int = LAYERS
    width: int = WIDTH


def write_children(
    section: str, variants: dict[str, Variant], files: dict[str, Path], work: Path, shape: Shape
) -> dict[str, Path]:
    """One script per variant, in ``work`` so that the pickles' module imports from beside them."""
    substitutions = {"LAYERS": str(shape.layers), "WIDTH": str(shape.width), "BATCH": str(BATCH)}
    scripts = {}
    for index, (name, variant) in enumerate(variants.items()):
        script = work / f"child_{section}_{index}.py"
        script.write_text(variant.source(files.get(variant.file), substitutions))
        scripts[name] = script
    return scripts


def run_child(script: Path) -> dict[str, Any]:
    """Run one child; every time is relative to just before the spawn (the clocks are the same).

    ``cpu_s`` is the whole process's user + system CPU time: unlike wall time it does not grow
    while the child waits for a core, so it is the steadier figure on a busy machine.
    """
    cpu_before = resource.getrusage(resource.RUSAGE_CHILDREN)
    spawn = time.monotonic()
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, check=False)
    end = time.monotonic()
    cpu_after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode:
        raise RuntimeError(f"{script.name} failed ({done.returncode}):\n{done.stderr[-4000:]}")
    marks = json.loads(done.stdout.strip().splitlines()[-1])
    if not spawn <= marks["start"] <= marks["predicted"] <= end:
        raise RuntimeError("the child's time.monotonic() is not the parent's clock; cannot time from the spawn")
    return {
        "startup_s": marks["start"] - spawn,
        "imports_s": marks["imported"] - marks["start"],
        "setup_s": marks["load_start"] - marks["imported"],
        "load_s": marks["loaded"] - marks["load_start"],
        "call_s": marks["predicted"] - marks["loaded"],
        "load_call_s": marks["predicted"] - marks["load_start"],
        "first_prediction_s": marks["predicted"] - spawn,
        "exit_s": end - marks["predicted"],
        "wall_s": end - spawn,
        "cpu_s": (cpu_after.ru_utime + cpu_after.ru_stime) - (cpu_before.ru_utime + cpu_before.ru_stime),
        "peak_rss_mib": marks["peak_rss_kib"] / 1024 if marks["peak_rss_kib"] else float("nan"),
        "checksum": marks["checksum"],
    }


def rotated(names: Sequence[str], round_no: int) -> list[str]:
    """The order for one round, shifted by one each round, so no variant always runs first or last."""
    shift = round_no % len(names) if names else 0
    return [*names[shift:], *names[:shift]]


def run_section(
    variants: dict[str, Variant], scripts: dict[str, Path], repeats: int, contrast_repeats: int
) -> dict[str, list[dict[str, Any]]]:
    """An untimed warm-up of every variant, then rounds of fresh processes; contrasts get fewer rounds."""
    for name in variants:
        run_child(scripts[name])
    samples: dict[str, list[dict[str, Any]]] = {name: [] for name in variants}
    for round_no in range(repeats):
        wanted = [n for n, v in variants.items() if round_no < (contrast_repeats if v.role == "contrast" else repeats)]
        for name in rotated(wanted, round_no):
            samples[name].append(run_child(scripts[name]))
    return samples


def check_outputs(samples: dict[str, list[dict[str, Any]]], variants: dict[str, Variant]) -> None:
    """Every variant must have predicted the same thing, or the timings compare different work."""
    sums = {name: runs[0]["checksum"] for name, runs in samples.items() if variants[name].file}
    reference = sums.get("floor", 0.0)
    for name, value in sums.items():
        if abs(value - reference) > 1e-4 * max(1.0, abs(reference)):
            raise RuntimeError(f"{name} predicted {value}, the floor {reference}: the variants do not agree")


# ----------------------------------------------------------------------------- inputs


def write_inputs(model: torch.nn.Module, example: torch.Tensor, work: Path, stem: str) -> dict[str, Path]:
    """The same weights four ways: .ferry (export mode), bare safetensors, torch.export .pt2, pickled module."""
    files = {
        "ferry": work / f"{stem}.ferry",
        "safetensors": work / f"{stem}.safetensors",
        "pt2": work / f"{stem}.pt2",
        "pickle": work / f"{stem}.pt",
    }
    model.eval()
    torchferry.pack(model, files["ferry"], example_inputs=example, name=stem, mode="export", fsync=False)
    st.save_file(model.state_dict(), files["safetensors"])
    torch.export.save(torch.export.export(model, (example,)), files["pt2"])
    torch.save(model, files["pickle"])
    return files


def warm_page_cache(paths: Sequence[Path]) -> None:
    """Read every file once so loads are timed from the page cache, not the disk."""
    chunk = bytearray(64 * 2**20)
    for path in paths:
        with io.FileIO(path, "r") as handle:
            while handle.readinto(chunk):
                pass


def archive_sizes(files: dict[str, Path]) -> dict[str, Any]:
    """File sizes, the archive's members, and the size the target allows: weights + 1% + program."""
    sizes = {key: path.stat().st_size for key, path in files.items()}
    with zipfile.ZipFile(files["ferry"]) as archive:
        members = {info.filename: info.file_size for info in archive.infolist()}
    program = sum(size for name, size in members.items() if name.startswith("program/"))
    allowed = sizes["safetensors"] * 1.01 + program
    return {
        "files": sizes,
        "members": members,
        "program_bytes": program,
        "allowed_bytes": allowed,
        "zip_structure_bytes": sizes["ferry"] - sum(members.values()),
        "weights_header_extra_bytes": members["weights.safetensors"] - sizes["safetensors"],
        "manifest_bytes": members["ferry.json"],
        "examples_bytes": sum(size for name, size in members.items() if name.startswith("examples/")),
        "ferry_over_safetensors_bytes": sizes["ferry"] - sizes["safetensors"],
    }


# ----------------------------------------------------------------------------- statistics

STAGES = (
    "startup_s",
    "imports_s",
    "setup_s",
    "load_s",
    "call_s",
    "load_call_s",
    "first_prediction_s",
    "exit_s",
    "wall_s",
    "cpu_s",
    "peak_rss_mib",
)


def medians(runs: list[dict[str, Any]]) -> dict[str, float]:
    """The median of each stage separately (so stages need not add up to the totals exactly)."""
    return {stage: statistics.median(run[stage] for run in runs) for stage in STAGES}


def summarize(samples: dict[str, list[dict[str, Any]]], variants: dict[str, Variant]) -> dict[str, Any]:
    return {
        name: {"label": variants[name].label, "role": variants[name].role, "median": medians(runs), "samples": runs}
        for name, runs in samples.items()
    }


RATIOS: dict[str, tuple[str, str, str, str]] = {
    # key: (section, variant, stage, label); each over the section's floor, same stage
    "first_prediction": ("first_prediction", "ferry", "first_prediction_s", "Iris: process start to first prediction"),
    "first_prediction_wall": ("first_prediction", "ferry", "wall_s", "Iris: whole process, exit included"),
    "first_prediction_cpu": ("first_prediction", "ferry", "cpu_s", "Iris: CPU time of the whole process"),
    "first_prediction_predict": (
        "first_prediction",
        "ferry predict",
        "first_prediction_s",
        "Iris: start to first prediction, predict(list)",
    ),
    "first_prediction_after_imports": ("first_prediction", "ferry", "load_call_s", "Iris: after imports (load + call)"),
    "first_prediction_imports": ("first_prediction", "ferry", "imports_s", "Iris: imports alone"),
    "first_prediction_export_load": (
        "first_prediction",
        "export.load",
        "first_prediction_s",
        "Iris: torch.export.load, start to first prediction",
    ),
    "first_prediction_torch_load": (
        "first_prediction",
        "torch.load",
        "first_prediction_s",
        "Iris: torch.load pickle, start to first prediction",
    ),
    "large_checked": ("large_load", "ferry", "load_call_s", "{large}: load_model + forward, integrity on"),
    "large_unchecked": ("large_load", "ferry unchecked", "load_call_s", "{large}: load_model + forward, integrity off"),
    "large_checked_load": ("large_load", "ferry", "load_s", "{large}: load call alone, integrity on"),
    "large_unchecked_load": ("large_load", "ferry unchecked", "load_s", "{large}: load call alone, integrity off"),
    "large_checked_wall": ("large_load", "ferry", "wall_s", "{large}: whole process, integrity on"),
    "large_checked_cpu": ("large_load", "ferry", "cpu_s", "{large}: CPU time of the whole process, integrity on"),
    "large_export_load": ("large_load", "export.load", "load_call_s", "{large}: torch.export.load + forward"),
    "large_torch_load": ("large_load", "torch.load", "load_call_s", "{large}: torch.load pickle + forward"),
}
TARGETS = {
    "first_prediction": 1.5,
    "large_checked": 1.5,
    "large_unchecked": 1.1,
    "size_large": 1.0,
    "size_iris": 1.0,
}


def compute_ratios(results: dict[str, Any]) -> dict[str, float]:
    """Ratios of medians over the floor of the same run (lower is better), and sizes over what is allowed."""
    ratios = {}
    for key, (section, variant, stage, _) in RATIOS.items():
        timings = results[section]
        ratios[key] = timings[variant]["median"][stage] / timings["floor"]["median"][stage]
    for model in ("iris", "large"):
        size = results["sizes"][model]
        ratios[f"size_{model}"] = size["files"]["ferry"] / size["allowed_bytes"]
        ratios[f"size_{model}_vs_safetensors"] = size["files"]["ferry"] / size["files"]["safetensors"]
    return ratios


# ----------------------------------------------------------------------------- report


def machine_info() -> dict[str, Any]:
    """What a reader needs to compare these numbers with their own."""
    cpu = "unknown"
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as handle:
        cpu = next((line.split(":", 1)[1].strip() for line in handle if line.startswith("model name")), cpu)
    return {
        "nproc": os.cpu_count(),
        "cpu": cpu,
        "memory_gib": meminfo_gib(),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "safetensors": safetensors.__version__,
        "xxhash": xxhash.VERSION,
        "torchferry": torchferry.__version__,
    }


def _first_prediction_table(timings: dict[str, Any]) -> list[str]:
    lines = [
        "| Iris, fresh process | runs | start to first prediction s | whole process s | interpreter start s "
        "| imports s | load s | first call s | CPU s (whole process) | peak RSS MiB |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for entry in timings.values():
        m = entry["median"]
        lines.append(
            f"| {entry['label']} | {len(entry['samples'])} | {m['first_prediction_s']:.3f} | {m['wall_s']:.3f} "
            f"| {m['startup_s']:.3f} | {m['imports_s']:.3f} | {m['load_s'] * 1e3:.1f} ms | {m['call_s'] * 1e3:.1f} ms "
            f"| {m['cpu_s']:.3f} | {m['peak_rss_mib']:.0f} |"
        )
    return lines


def _large_table(timings: dict[str, Any], large: str) -> list[str]:
    lines = [
        f"| {large} model, fresh process | runs | load + forward s | load s | forward s | whole process s "
        "| imports s | CPU s (whole process) | peak RSS MiB |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for entry in timings.values():
        m = entry["median"]
        lines.append(
            f"| {entry['label']} | {len(entry['samples'])} | {m['load_call_s']:.3f} | {m['load_s']:.3f} "
            f"| {m['call_s']:.3f} | {m['wall_s']:.3f} | {m['imports_s']:.3f} | {m['cpu_s']:.3f} "
            f"| {m['peak_rss_mib']:.0f} |"
        )
    return lines


def _size_table(sizes: dict[str, Any], large: str) -> list[str]:
    lines = [
        "| bytes | bare safetensors | .ferry | allowed: weights + 1% + program | .ferry - safetensors | of which: "
        "program | weights header | manifest | examples | zip headers, padding | .pt2 | pickled module |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for model, label in (("iris", "Iris"), ("large", large)):
        s, f = sizes[model], sizes[model]["files"]
        lines.append(
            f"| {label} | {f['safetensors']:,} | {f['ferry']:,} | {s['allowed_bytes']:,.0f} "
            f"| {s['ferry_over_safetensors_bytes']:,} | {s['program_bytes']:,} | {s['weights_header_extra_bytes']:,} "
            f"| {s['manifest_bytes']:,} | {s['examples_bytes']:,} | {s['zip_structure_bytes']:,} "
            f"| {f['pt2']:,} | {f['pickle']:,} |"
        )
    return lines


def _target_table(ratios: dict[str, float], large: str) -> list[str]:
    labels = {key: label for key, (_, _, _, label) in RATIOS.items()}
    labels["size_large"] = "{large}: .ferry size / (weights + 1% + program)"
    labels = {key: label.format(large=large) for key, label in labels.items()}
    labels["size_iris"] = "Iris: .ferry size / (weights + 1% + program)"
    lines = ["| ratio (over the floor of this run) | value | target | met |", "|---|---:|---:|---|"]
    for key, target in TARGETS.items():
        met = "yes" if ratios[key] <= target else "**no**"
        lines.append(f"| {labels[key]} | {ratios[key]:.2f}x | <= {target}x | {met} |")
    for key, label in labels.items():
        if key not in TARGETS:
            lines.append(f"| {label} | {ratios[key]:.2f}x | (context) | |")
    lines += [
        f"| {name}: .ferry size / bare safetensors | {ratios[f'size_{key}_vs_safetensors']:.4f}x | (context) | |"
        for key, name in (("iris", "Iris"), ("large", large))
    ]
    return lines


def render_markdown(results: dict[str, Any]) -> str:
    """The results as Markdown: printed to stdout and kept in docs/benchmarks.md in sync."""
    cfg, machine = results["config"], results["machine"]
    large = f"{cfg['weight_bytes'] / 2**20:.0f} MiB"
    head = (
        f"Run {cfg['date']}: medians of {cfg['repeats']} fresh processes per variant ({cfg['contrast_repeats']} "
        f"for import torch alone, torch.export.load and torch.load), after one untimed warm-up of each; page cache "
        f"warm. Large model: "
        f"{cfg['layers']} x Linear({cfg['width']}, {cfg['width']}), {cfg['weight_bytes'] / 2**20:.0f} MiB float32, "
        f"batch {cfg['batch']}, {cfg['torch_threads']} torch thread. Machine: {machine['nproc']} CPUs "
        f"({machine['cpu']}), {machine['memory_gib']} GiB RAM, Linux {machine['kernel']}, Python {machine['python']}, "
        f"torch {machine['torch']}, safetensors {machine['safetensors']}, xxhash {machine['xxhash']}, torchferry "
        f"{machine['torchferry']}. Load average before/after: {cfg['loadavg_before'][0]:.2f}/"
        f"{cfg['loadavg_after'][0]:.2f}."
    )
    parts = [
        head,
        "",
        *_first_prediction_table(results["first_prediction"]),
        "",
        *_large_table(results["large_load"], large),
        "",
        *_size_table(results["sizes"], large),
        "",
        *_target_table(results["ratios"], large),
    ]
    return "\n".join(parts)


FIRST_STAGES: tuple[tuple[str, str], ...] = (
    ("startup_s", "interpreter start"),
    ("imports_s", "imports"),
    ("setup_s", "setup"),
    ("load_s", "load"),
    ("call_s", "first call"),
    ("exit_s", "exit"),
)


STAGE_COLORS = {
    "startup_s": "tab:gray",
    "imports_s": "tab:blue",
    "setup_s": "tab:olive",
    "load_s": "tab:orange",
    "call_s": "tab:green",
    "exit_s": "tab:purple",
}
SIZE_PARTS = (
    ("program_bytes", "program"),
    ("weights_header_extra_bytes", "weights header"),
    ("manifest_bytes", "manifest"),
    ("examples_bytes", "examples"),
    ("zip_structure_bytes", "zip headers, padding"),
)


def write_plot(results: dict[str, Any], path: Path) -> None:
    """Iris stages to first prediction; large-model load + forward; bytes over the bare safetensors file."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig = plt.figure(figsize=(13, 14), constrained_layout=True)
    grid = fig.add_gridspec(3, 2, height_ratios=[1.1, 1.0, 0.8])
    first, large_axis = fig.add_subplot(grid[0, :]), fig.add_subplot(grid[1, :])
    _stacked(first, results["first_prediction"], FIRST_STAGES, "wall_s")
    first.set(title="Iris: fresh process, median seconds per stage; whole process at the end", xlabel="seconds")
    large = results["large_load"]
    _stacked(large_axis, large, (("load_s", "load"), ("call_s", "forward")), "load_call_s", ("export.load",))
    floor = large["floor"]["median"]["load_call_s"]
    for factor, style in ((1.1, ":"), (1.5, "--")):
        large_axis.axvline(floor * factor, color="tab:red", linestyle=style, linewidth=1, label=f"{factor}x floor")
    large_axis.legend(loc="upper center", bbox_to_anchor=(0.5, -0.12), ncol=4, frameon=False)
    mib = results["config"]["weight_bytes"] / 2**20
    large_axis.set(title=f"{mib:.0f} MiB model: load + forward, median seconds (lower is better)", xlabel="seconds")
    for column, (model, label, unit) in enumerate((("iris", "Iris", 1), ("large", f"{mib:.0f} MiB", 1024))):
        _size_bars(fig.add_subplot(grid[2, column]), results["sizes"][model], label, unit)
    fig.suptitle("torchferry archives: first prediction, load of a large model, size")
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=80)
    plt.close(fig)


def _stacked(
    axis: Any,
    timings: dict[str, Any],
    stages: Sequence[tuple[str, str]],
    total: str,
    clip_above: Sequence[str] = (),
) -> None:
    """Stacked stage medians per variant, labelled with the median ``total`` (not the sum of the
    stage medians, which differs slightly); variants in ``clip_above`` run off a scale set by the others."""
    names = list(timings)
    left = [0.0] * len(names)
    for stage, label in stages:
        widths = [timings[n]["median"][stage] for n in names]
        axis.barh(names, widths, left=left, label=label, color=STAGE_COLORS[stage])
        left = [a + b for a, b in zip(left, widths)]
    limit = max((t for n, t in zip(names, left) if n not in clip_above), default=0.0) * 1.25
    if clip_above and limit > 0:
        axis.set_xlim(0, limit)
    for index, (name, end) in enumerate(zip(names, left)):
        value = timings[name]["median"][total]
        if clip_above and end > limit:
            axis.annotate(f"{value:.3f} (off scale)", (limit, index), xytext=(-3, 0), ha="right", va="center",
                          textcoords="offset points", color="white")  # fmt: skip
        else:
            axis.annotate(f"{value:.3f}", (end, index), xytext=(3, 0), textcoords="offset points", va="center")
    axis.invert_yaxis()
    axis.legend(loc="upper center", bbox_to_anchor=(0.5, -0.12), ncol=len(stages), frameon=False)


def _size_bars(axis: Any, size: dict[str, Any], label: str, unit: int) -> None:
    """Bytes over the bare safetensors file: the .ferry by part, .pt2 and pickle whole; red: what is allowed."""
    files, name = size["files"], "bytes" if unit == 1 else "KiB"
    left = 0.0
    for (key, part), color in zip(SIZE_PARTS, ("tab:blue", "tab:cyan", "tab:olive", "tab:orange", "tab:gray")):
        axis.barh(0, size[key] / unit, left=left, color=color, label=part)
        left += size[key] / unit
    for row, key in ((1, "pt2"), (2, "pickle")):
        axis.barh(row, (files[key] - files["safetensors"]) / unit, color="tab:purple")
    allowed = (size["allowed_bytes"] - files["safetensors"]) / unit
    axis.plot([allowed, allowed], [-0.45, 0.45], color="tab:red", linewidth=2, label="allowed (1% + program)")
    axis.set_yticks([0, 1, 2], [".ferry", ".pt2", "pickled module"])
    axis.invert_yaxis()
    axis.legend(loc="upper center", bbox_to_anchor=(0.5, -0.18), ncol=3, fontsize=8, frameon=False)
    axis.set(title=f"{label}: {name} over the bare safetensors file", xlabel=name)


def update_doc(doc: Path, markdown: str) -> bool:
    return replace_block(doc, DOC_START, DOC_END, markdown)


# ----------------------------------------------------------------------------- main


def prepare(work: Path, shape: Shape) -> tuple[dict[str, dict[str, Path]], int]:
    """Write every input file; returns them per model, and the large model's weight bytes."""
    models = import_models(work)
    torch.manual_seed(0)
    iris = models.Multiclass()
    large = models.Stack(shape.layers, shape.width)
    weight_bytes = sum(t.numel() * t.element_size() for t in large.state_dict().values())
    files = {
        "iris": write_inputs(iris, torch.tensor(IRIS_SAMPLE), work, "iris"),
        "large": write_inputs(large, torch.randn(BATCH, shape.width), work, "large"),
    }
    return files, weight_bytes


def run(repeats: int, contrast_repeats: int, work_root: Path, shape: Shape) -> dict[str, Any]:
    """Every measurement of one run, as a JSON-ready dict; scratch files live in a new directory of ``work_root``."""
    load_before = os.getloadavg()
    work_root.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="archive-", dir=work_root))
    try:
        files, weight_bytes = prepare(work, shape)
        warm_page_cache([path for per_model in files.values() for path in per_model.values()])
        results: dict[str, Any] = {}
        for (section, variants), model in zip(SECTIONS.items(), ("iris", "large")):
            scripts = write_children(section, variants, files[model], work, shape)
            samples = run_section(variants, scripts, repeats, contrast_repeats)
            check_outputs(samples, variants)
            results[section] = summarize(samples, variants)
        sizes = {model: archive_sizes(per_model) for model, per_model in files.items()}
    finally:
        shutil.rmtree(work, ignore_errors=True)
    results = {
        "config": {
            "date": time.strftime("%Y-%m-%d"),
            "layers": shape.layers,
            "width": shape.width,
            "batch": BATCH,
            "weight_bytes": weight_bytes,
            "torch_threads": TORCH_THREADS,
            "repeats": repeats,
            "contrast_repeats": contrast_repeats,
            "loadavg_before": load_before,
            "loadavg_after": os.getloadavg(),
        },
        "machine": machine_info(),
        **results,
        "sizes": sizes,
    }
    results["ratios"] = compute_ratios(results)
    return results


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--repeats", type=int, default=REPEATS, help=f"fresh processes per variant ({REPEATS})")
    parser.add_argument(
        "--contrast-repeats", type=int, default=CONTRAST_REPEATS, help=f"same, for the contrasts ({CONTRAST_REPEATS})"
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help=f"smoke test: {QUICK_LAYERS} x Linear({QUICK_WIDTH}), {QUICK_REPEATS} rounds, outputs in --work",
    )
    parser.add_argument("--out", type=Path, default=ROOT / "docs", help="plot goes to OUT/img/archive.png")
    parser.add_argument(
        "--work", type=Path, default=WORK_DIR, help="scratch files go to a new dir in it, deleted at the end"
    )
    parser.add_argument("--from-json", type=Path, help="only re-render plot, table and doc from saved results")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    repeats, contrast_repeats = args.repeats, min(args.contrast_repeats, args.repeats)
    shape, out, json_path = Shape(), args.out, RESULTS_JSON
    if args.quick:  # never overwrite published results with smoke-test numbers
        shape = Shape(QUICK_LAYERS, QUICK_WIDTH)
        repeats = contrast_repeats = QUICK_REPEATS
        out = args.work / "quick-archive"
        json_path = out / "archive.json"
    if args.from_json:
        results = json.loads(args.from_json.read_text())
    else:
        results = run(repeats, contrast_repeats, args.work, shape)
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
