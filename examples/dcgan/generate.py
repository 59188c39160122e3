"""Open DCGAN archives without the model's code, generate a 4x4 grid of images, compare.

    python generate.py dcgan-export.ferry dcgan-python.ferry --noise fixed-noise.safetensors --out DIR

``pack_and_generate.py`` copies this script next to the archives in a temporary directory
and runs it there in a fresh interpreter, so the ``models`` package the generator was
written in cannot be imported: whatever runs comes from the archives. It imports only
torchferry, torch, NumPy and Pillow (no torchvision). For each archive it prints the max
abs difference from the images the original generator made from the same noise, and saves
``<archive name>.png``; it exits 1 if ``models`` is importable or a difference exceeds 1e-5.
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image

import torchferry as ferry

TOLERANCE = 1e-5
PER_ROW = 4
PADDING = 2


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """Read the command line."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("archives", type=Path, nargs="+", help=".ferry archives of the generator")
    parser.add_argument("--noise", type=Path, required=True, help="safetensors file with 'noise' and 'images'")
    parser.add_argument("--out", type=Path, required=True, help="directory for the PNG grids")
    return parser.parse_args(argv)


def image_grid(images: torch.Tensor, per_row: int = PER_ROW, padding: int = PADDING) -> Image.Image:
    """``(N, C, H, W)`` images as one RGB picture, ``per_row`` per row with ``padding`` black pixels
    around each, scaled from the batch's own min..max to 0..255 (like torchvision's
    ``make_grid(normalize=True)``: an untrained generator's pixels span much less than [-1, 1])."""
    count, channels, height, width = images.shape
    low, high = images.min(), images.max()
    scaled = ((images - low) / (high - low).clamp(min=1e-12) * 255).round().to(torch.uint8)
    rows = -(-count // per_row)
    grid = np.zeros(
        (rows * (height + padding) + padding, per_row * (width + padding) + padding, channels), dtype=np.uint8
    )
    for index, image in enumerate(scaled.permute(0, 2, 3, 1).numpy()):
        top = padding + (index // per_row) * (height + padding)
        left = padding + (index % per_row) * (width + padding)
        grid[top : top + height, left : left + width] = image
    return Image.fromarray(grid.squeeze(-1) if channels == 1 else grid)


def open_archive(path: Path) -> ferry.Packaged:
    """Open ``path``; an archive that carries Python code is first opened without trust, to show
    the refusal, then with ``trust_code=True`` (we packed it ourselves a moment ago)."""
    if ferry.inspect(path).kind == "export":
        return ferry.load_model(path)
    try:
        ferry.load_model(path)
    except ferry.FerryError as refused:
        print(f"{path.name}: without trust_code: {type(refused).__name__}: {str(refused).split('. ')[0]}.")
    return ferry.load_model(path, trust_code=True)


def main(argv: list[str] | None = None) -> int:
    """Generate from every archive, save the grids, and compare with the original images."""
    args = parse_args(argv)
    torch.set_num_threads(1)
    importable = importlib.util.find_spec("models") is not None
    print(f"package 'models' importable here: {'yes' if importable else 'no'}")
    if importable:
        print("error: run this where the generator's code cannot be imported", file=sys.stderr)
        return 1
    reference = ferry.load(args.noise)
    noise, expected = reference["noise"], reference["images"]
    worst = 0.0
    for path in args.archives:
        model = open_archive(path)
        images = model(noise)
        difference = float((images - expected).abs().max())
        worst = max(worst, difference)
        png = args.out / f"{path.stem}.png"
        grid = image_grid(images)
        grid.save(png)
        print(
            f"{path.name}: {model.kind} program, {len(images)} images {list(images.shape[1:])}, "
            f"max abs difference {difference:.3g} from the original generator; saved {png.name} "
            f"({grid.width}x{grid.height})"
        )
    if worst > TOLERANCE:
        print(f"error: the archives differ from the original generator by up to {worst:.3g}", file=sys.stderr)
        return 1
    print(f"all {len(args.archives)} archives match the original generator within {TOLERANCE:g}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
