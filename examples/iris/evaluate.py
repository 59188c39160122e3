"""Reload the trained Iris weights in a fresh process and check they score the same.

    python examples/iris/evaluate.py --workdir .demo

Nothing is shared with the training process but the files in the work directory: the
model is rebuilt from its class, ``torchferry.load_into`` fills it (strictly: every key
must match, or nothing is loaded) and prints what it did, and the test accuracy must
equal the one ``train.py`` measured before saving. Exits 1 otherwise.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from model import ACCURACY, WEIGHTS, Multiclass, accuracy, format_accuracy, load_data, read_accuracy, setup_torch

import torchferry as ferry


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """Read the command line."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", type=Path, required=True, help="the directory train.py wrote to")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Rebuild, load, score, compare; exit 0 only when the accuracy is exactly the same."""
    args = parse_args(argv)
    expected = read_accuracy(args.workdir / ACCURACY)
    setup_torch()
    model = Multiclass()
    try:
        report = ferry.load_into(model, args.workdir / WEIGHTS)
    except ferry.FerryError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(report)
    data = load_data()
    correct, total = accuracy(model, data.x_test, data.y_test)
    print(format_accuracy(correct, total))
    if correct / total != expected:
        print(f"error: accuracy {correct / total:.4f}, but training measured {expected:.4f}", file=sys.stderr)
        return 1
    print(f"same as measured at training time ({expected:.4f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
