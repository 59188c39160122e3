"""Pack the trained Iris classifier into one archive, then use it where ``Multiclass`` does not exist.

    python examples/iris/pack.py --workdir .demo      # after train.py

Seed 001 ends on the catch of ``torch.save(model)``: the file holds a reference to the
class, not the class, so another program that loads it fails with ``AttributeError: Can't
get attribute 'Multiclass' on <module '__main__'>``, and a state_dict needs the class too.
``torchferry.pack`` stores the network as a ``torch.export`` graph with its weights, the
species names and a ``Classify`` step, so the archive is all the other program needs.

This script loads ``iris.safetensors`` into ``Multiclass``, packs it as ``iris.ferry``,
writes the 45 test flowers as plain JSON (``iris-test.json``), then copies ``predict.py``,
the archive and the JSON to a temporary directory and runs ``predict.py`` there in a fresh
interpreter with ``PYTHONPATH`` unset: ``model.py`` cannot be imported, and the archive
must score exactly the accuracy ``train.py`` measured. Exits 1 otherwise.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from model import ACCURACY, SPECIES, WEIGHTS, Multiclass, load_data, read_accuracy, setup_torch

import torchferry as ferry

HERE = Path(__file__).resolve().parent
ARCHIVE = "iris.ferry"
TEST_DATA = "iris-test.json"
CLIENT = "predict.py"
ACCURACY_LINE = re.compile(r"^test accuracy \d\.\d+ \((?P<correct>\d+)/(?P<total>\d+)\)$", re.MULTILINE)
INDENT = "    "


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """Read the command line."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", type=Path, required=True, help="the directory train.py wrote to")
    return parser.parse_args(argv)


def pack(workdir: Path) -> None:
    """Rebuild the classifier from its weights and pack it with its labels; write the test rows as JSON."""
    setup_torch()
    model = Multiclass()
    ferry.load_into(model, workdir / WEIGHTS)
    data = load_data()
    manifest = ferry.pack(
        model,
        workdir / ARCHIVE,
        example_inputs=data.x_test[:5],
        name="iris",
        version="1",
        labels=list(SPECIES),
        postprocess=ferry.Classify(top_k=1),
    )
    inputs = ", ".join(spec.describe() for spec in manifest.signature.inputs)
    outputs = ", ".join(spec.describe() for spec in manifest.signature.outputs)
    size = (workdir / ARCHIVE).stat().st_size
    print(f"packed {workdir / ARCHIVE}: {manifest.kind} program ({inputs} -> {outputs}), labels, {size / 1024:.1f} KiB")
    rows = {"features": data.x_test.tolist(), "species": [SPECIES[i] for i in data.y_test.tolist()]}
    (workdir / TEST_DATA).write_text(json.dumps(rows), encoding="utf-8")


def predict_elsewhere(workdir: Path) -> str:
    """Run ``predict.py`` on copies of the archive and the test rows, in a temporary directory
    where ``model.py`` cannot be imported; echo its output and return it."""
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    env["PYTHONIOENCODING"] = "utf-8"
    with tempfile.TemporaryDirectory(prefix="iris-elsewhere-") as tmp:
        for source in (workdir / ARCHIVE, workdir / TEST_DATA, HERE / CLIENT):
            shutil.copy2(source, Path(tmp) / source.name)
        print(f"fresh process in a temporary directory (no model.py, PYTHONPATH unset): python {CLIENT}")
        result = subprocess.run(
            [sys.executable, CLIENT, ARCHIVE, TEST_DATA],
            cwd=tmp,
            env=env,
            capture_output=True,
            encoding="utf-8",
            errors="replace",
            check=False,
        )
    output = result.stdout + result.stderr
    for line in output.splitlines():
        print(f"{INDENT}{line}")
    if result.returncode != 0:
        raise SystemExit(f"error: {CLIENT} exited with status {result.returncode}")
    return output


def main(argv: list[str] | None = None) -> int:
    """Pack, predict elsewhere, and compare the accuracy with the one measured at training time."""
    args = parse_args(argv)
    expected = read_accuracy(args.workdir / ACCURACY)
    try:
        pack(args.workdir)
    except ferry.FerryError as exc:
        print(f"error: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    output = predict_elsewhere(args.workdir)
    if "importable here: no" not in output:
        print(f"error: {CLIENT} could import model.py, so the check would prove nothing", file=sys.stderr)
        return 1
    match = ACCURACY_LINE.search(output)
    if match is None:
        print(f"error: {CLIENT} printed no test accuracy", file=sys.stderr)
        return 1
    measured = int(match["correct"]) / int(match["total"])
    if measured != expected:
        print(f"error: the archive scores {measured:.4f}, but training measured {expected:.4f}", file=sys.stderr)
        return 1
    print(f"the archive scores what training measured ({expected:.4f}), without Multiclass")
    return 0


if __name__ == "__main__":
    sys.exit(main())
