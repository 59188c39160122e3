"""Pack a DCGAN generator whose code spans a package, then generate images where that package is gone.

    python examples/dcgan/pack_and_generate.py --workdir .demo/dcgan

Seed 000 packs pytorch_GAN_zoo's DCGAN with ``torch.package`` and hits two
``PackagingError``s in a row: first ``models.*`` must be interned by hand, then ``numpy``
externed by hand. This script packs the same kind of model (``models/``: the generator in
``models.networks.dcgan_nets``, its sizes in ``models.utils.config``, which imports NumPy)
twice, with no patterns at all:

- ``mode="auto"``: the generator exports cleanly, so the archive holds a ``torch.export``
  graph and opening it runs no Python code from the file;
- ``mode="python"``: the generator's own source is captured; ``models.*`` is interned and
  ``numpy`` externed automatically, and opening it needs ``trust_code=True``.

Then ``generate.py`` runs in a fresh interpreter, in a temporary directory where ``models``
cannot be imported, opens both archives, turns 16 fixed noise vectors into a 4x4 grid PNG
per archive, and checks that both give the original generator's images within 1e-5.
Exits 1 if anything differs. Random (seeded) weights: no dataset, no training.
"""

from __future__ import annotations

import argparse
import io
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import torch
from models import DCGAN, DCGANConfig

import torchferry as ferry

HERE = Path(__file__).resolve().parent
LOADER = "generate.py"
NOISE_FILE = "fixed-noise.safetensors"
"""The 16 noise vectors and the images the original generator made from them."""
EXPORT_ARCHIVE = "dcgan-export.ferry"
PYTHON_ARCHIVE = "dcgan-python.ferry"
GRID_SIZE = 16
INDENT = "    "


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """Read the command line."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", type=Path, required=True, help="where the archives and PNGs go (created)")
    return parser.parse_args(argv)


def describe_python_archive(manifest: ferry.Manifest) -> str:
    """One line: which modules went into the archive, which are expected on the loading machine."""
    interned = ", ".join(manifest.program["interned"])
    externed = ", ".join(
        f"{name} ({name}=={manifest.requirements[name]})" if name in manifest.requirements else name
        for name in manifest.program["externed"]
    )
    return f"interned {interned}; externed {externed or 'nothing'}"


def pack_both(model: DCGAN, examples: torch.Tensor, workdir: Path) -> None:
    """Pack the generator in ``auto`` mode (must export) and ``python`` mode (automatic capture)."""
    exported = ferry.pack(
        model.netG, workdir / EXPORT_ARCHIVE, example_inputs=examples, name="dcgan-generator", mode="auto"
    )
    if exported.kind != "export":
        reason = exported.program.get("fallback_reason")
        raise SystemExit(f"error: mode='auto' fell back to {exported.kind!r} instead of exporting: {reason}")
    signature = f"{exported.signature.inputs[0].describe()} -> {exported.signature.outputs[0].describe()}"
    print(f"packed {EXPORT_ARCHIVE}: mode='auto' chose export ({signature})")
    captured = ferry.pack(
        model.netG, workdir / PYTHON_ARCHIVE, example_inputs=examples, name="dcgan-generator", mode="python"
    )
    print(f"packed {PYTHON_ARCHIVE}: mode='python' {describe_python_archive(captured)}")


def clean_env() -> dict[str, str]:
    """This environment without PYTHONPATH, so that only the installed packages can be imported."""
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    env["PYTHONIOENCODING"] = "utf-8"
    return env


def generate_elsewhere(workdir: Path) -> int:
    """Copy the loader, the archives and the noise to a temporary directory and run the loader
    there in a fresh interpreter; echo its output and return its exit status."""
    with tempfile.TemporaryDirectory(prefix="dcgan-elsewhere-") as tmp:
        elsewhere = Path(tmp)
        for name in (EXPORT_ARCHIVE, PYTHON_ARCHIVE, NOISE_FILE):
            shutil.copy2(workdir / name, elsewhere / name)
        shutil.copy2(HERE / LOADER, elsewhere / LOADER)
        print(f"fresh process in a temporary directory (no models/ package, PYTHONPATH unset): python {LOADER}")
        command = [sys.executable, LOADER, EXPORT_ARCHIVE, PYTHON_ARCHIVE, "--noise", NOISE_FILE]
        result = subprocess.run(
            [*command, "--out", str(workdir.resolve())],
            cwd=elsewhere,
            env=clean_env(),
            capture_output=True,
            encoding="utf-8",
            errors="replace",
            check=False,
        )
    for line in (result.stdout + result.stderr).splitlines():
        print(f"{INDENT}{line}")
    return result.returncode


def main(argv: list[str] | None = None) -> int:
    """Build, pack twice, save the fixed noise and reference images, generate elsewhere."""
    args = parse_args(argv)
    if isinstance(sys.stdout, io.TextIOWrapper):
        sys.stdout.reconfigure(errors="replace", line_buffering=True)
    args.workdir.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(1)
    config = DCGANConfig()
    model = DCGAN(config, seed=0)
    model.settle_batch_norm()
    noise = model.build_noise_data(GRID_SIZE)
    images = model.test(noise)
    print(
        f"built the DCGAN generator from models/ (seed 0): {config.latent_dim} noise values -> "
        f"{config.channels}x{config.image_size}x{config.image_size} images; {GRID_SIZE} fixed noise vectors"
    )
    try:
        pack_both(model, noise[:4], args.workdir)
    except ferry.FerryError as exc:
        print(f"error: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    ferry.save({"noise": noise, "images": images}, args.workdir / NOISE_FILE)
    status = generate_elsewhere(args.workdir)
    if status != 0:
        print(f"error: {LOADER} exited with status {status}", file=sys.stderr)
        return 1
    print(f"both archives generate the original generator's images; grids in {args.workdir}/")
    return 0


if __name__ == "__main__":
    sys.exit(main())
