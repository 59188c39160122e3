"""Classify Iris flowers with ``iris.ferry`` alone: no ``Multiclass``, no ``model.py``, no pickle.

    python predict.py iris.ferry iris-test.json

The "other program" of seed 001, the one where ``torch.load`` of a pickled model fails
with ``Can't get attribute 'Multiclass'``. ``pack.py`` runs it from a temporary directory
holding only this file, the archive and the test rows as JSON, so that the class cannot be
imported; it imports nothing but torchferry and the standard library. It opens the archive
with ``torchferry.load_model``, labels a few flowers one at a time (one unbatched sample,
as plain lists), then the 45 test flowers in one batch, and prints the test accuracy in
the format ``train.py`` uses.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
from pathlib import Path

import torchferry as ferry

SHOWN = 5


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """Read the command line."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("archive", type=Path, help="the packed classifier (iris.ferry)")
    parser.add_argument("rows", type=Path, help='JSON {"features": [[4 numbers], ...], "species": [names]}')
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Open the archive, label a few flowers, score all of them."""
    args = parse_args(argv)
    importable = importlib.util.find_spec("model") is not None
    print(f"module 'model' (where Multiclass is defined) importable here: {'yes' if importable else 'no'}")
    rows = json.loads(args.rows.read_text(encoding="utf-8"))
    features: list[list[float]] = rows["features"]
    species: list[str] = rows["species"]
    try:
        model = ferry.load_model(args.archive)
    except ferry.FerryError as exc:
        print(f"error: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    labels = ", ".join(model.labels or ())
    print(f"opened {args.archive.name}: {model.kind} program, {model.signature.inputs[0].describe()}, labels {labels}")
    for index in range(SHOWN):
        (best,) = model.predict(features[index])["output"]  # one flower, no batch dimension: top-1 only
        mark = "ok" if best["label"] == species[index] else "WRONG"
        measured = " ".join(f"{value:.1f}" for value in features[index])
        guess = f"{best['label']:<10} p={best['score']:.2f}"
        print(f"flower {index + 1} [{measured}] -> {guess}  true {species[index]:<10} {mark}")
    ranked = model.predict(features)["output"]  # all 45 in one batch: a top-1 list per flower
    correct = sum(top[0]["label"] == truth for top, truth in zip(ranked, species))
    print(f"test accuracy {correct / len(species):.4f} ({correct}/{len(species)})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
