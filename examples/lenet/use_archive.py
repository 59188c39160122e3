"""Run ``lenet.ferry`` where ``TheModelClass`` does not exist, and compare with the trained model.

    python use_archive.py lenet.ferry reference.safetensors

``checkpoint_to_archive.py`` copies this script, the archive and the reference (test images
and the logits the trained model gave them) to a temporary directory and runs it there in
a fresh interpreter, so ``lenet.py`` cannot be imported. It imports only torchferry, torch
and NumPy. It checks the archive's sha256 and stored examples (``torchferry.verify``),
calls the opened model like the original module on a batch of a size it was not packed
with, and asks ``predict`` for the top 3 classes of one image given as a NumPy array
without its batch dimension. Exits 1 if the logits differ from the reference by more than 1e-5.
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
from pathlib import Path

import torch

import torchferry as ferry

TOLERANCE = 1e-5


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """Read the command line."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("archive", type=Path, help="the packed network (lenet.ferry)")
    parser.add_argument("reference", type=Path, help="safetensors file with 'images' and 'logits'")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Verify, open, run, compare."""
    args = parse_args(argv)
    torch.set_num_threads(1)
    importable = importlib.util.find_spec("lenet") is not None
    print(f"module 'lenet' (where TheModelClass is defined) importable here: {'yes' if importable else 'no'}")
    report = ferry.verify(args.archive)
    print(f"verify: {'ok' if report.ok else 'FAILED'} ({report.members_checked} members, stored examples re-run)")
    if not report.ok:
        print(report, file=sys.stderr)
        return 1
    model = ferry.load_model(args.archive)
    trained = model.manifest.metadata.get("trained_epochs")
    print(f"opened {args.archive.name}: {model.kind} program, version {model.manifest.version}, {trained} epochs")
    reference = ferry.load(args.reference)
    logits = model(reference["images"])
    difference = float((logits - reference["logits"]).abs().max())
    print(
        f"{len(logits)} images: logits {list(logits.shape)}, max abs difference {difference:.3g} from the trained model"
    )
    top3 = model.predict(reference["images"][0].numpy())["output"]
    print("image 1 without batch dim, top 3: " + ", ".join(f"{c['label']} {c['score']:.2f}" for c in top3))
    if difference > TOLERANCE:
        print(f"error: the archive's logits differ by {difference:.3g} (> {TOLERANCE:g})", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
