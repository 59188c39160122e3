"""From a training checkpoint to an archive that runs without the model's class.

    python examples/lenet/checkpoint_to_archive.py --workdir .demo/lenet

Seed 003 walks through PyTorch's save/load recipes for ``TheModelClass``: a state_dict,
the whole pickled model, a checkpoint dict with the optimizer, epoch and loss. Each one
needs ``TheModelClass`` wherever it is loaded. This script goes from the checkpoint to a
deployable archive:

1. train a few SGD steps (lr 0.001 as in the seed, momentum 0.9) on synthetic CIFAR-shaped
   images, then ``torchferry.save_checkpoint(path, model=..., optimizer=..., epoch=...,
   loss=...)``;
2. in a fresh model and optimizer, ``torchferry.resume(...)``: weights, momentum buffers,
   epoch and loss come back (checked equal to the trained model);
3. ``torchferry.pack`` the resumed model into ``lenet.ferry``, with CIFAR-10's class names;
4. the same weights from an old-style file: ``torch.save`` of the seed's checkpoint dict
   taken from an ``nn.DataParallel`` model, whose keys start with ``module.``;
   ``torchferry.load_into`` refuses it as is (and says which ``rename`` fixes it), then
   loads it with ``rename={"module.": ""}``;
5. ``use_archive.py`` runs in a fresh interpreter in a temporary directory where
   ``lenet.py`` cannot be imported, opens the archive and must reproduce the trained
   model's logits within 1e-5. Exits 1 otherwise.
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
from lenet import CLASSES, TheModelClass, synthetic_cifar
from torch import nn, optim

import torchferry as ferry

HERE = Path(__file__).resolve().parent
CHECKPOINT = "lenet-ckpt.safetensors"
LEGACY = "lenet-legacy.tar"
ARCHIVE = "lenet.ferry"
REFERENCE = "reference.safetensors"
"""Test images and the logits the trained model gives them, for the fresh process to compare."""
CLIENT = "use_archive.py"
EPOCHS, BATCH_SIZE, TRAIN_IMAGES, TEST_IMAGES = 3, 32, 256, 8
INDENT = "    "


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """Read the command line."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", type=Path, required=True, help="where checkpoints and the archive go (created)")
    return parser.parse_args(argv)


def make_optimizer(model: nn.Module) -> optim.Optimizer:
    """The seed's optimizer: SGD, lr 0.001, momentum 0.9."""
    return optim.SGD(model.parameters(), lr=0.001, momentum=0.9)


def train(model: nn.Module, optimizer: optim.Optimizer) -> float:
    """A few epochs of cross-entropy on synthetic images; returns the last epoch's mean loss."""
    images, labels = synthetic_cifar(TRAIN_IMAGES, seed=0)
    loss_fn = nn.CrossEntropyLoss()
    model.train()
    losses: list[float] = []
    for epoch in range(1, EPOCHS + 1):
        losses = []
        for start in range(0, TRAIN_IMAGES, BATCH_SIZE):
            loss = loss_fn(model(images[start : start + BATCH_SIZE]), labels[start : start + BATCH_SIZE])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
        print(f"epoch {epoch}  loss {sum(losses) / len(losses):.4f}")
    return sum(losses) / len(losses)


def save_legacy(path: Path, model: nn.Module, optimizer: optim.Optimizer, loss: float) -> None:
    """The seed's checkpoint dict, written with ``torch.save`` from a model wrapped in
    ``nn.DataParallel``: every weight's key starts with ``module.``."""
    wrapped = nn.DataParallel(model)
    torch.save(
        {
            "epoch": EPOCHS,
            "model_state_dict": wrapped.state_dict(),
            "optimizer_state_dict": optimizer.state_dict(),
            "loss": loss,
        },
        path,
    )


def same_weights(a: nn.Module, b: nn.Module) -> bool:
    """Bit-for-bit equal state_dicts."""
    theirs = b.state_dict()
    return all(torch.equal(tensor, theirs[key]) for key, tensor in a.state_dict().items())


def resume_and_pack(workdir: Path, trained: nn.Module) -> None:
    """Steps 2 and 3: a fresh model resumes from the checkpoint, and is packed."""
    model = TheModelClass()
    ckpt = ferry.resume(workdir / CHECKPOINT, model=model, optimizer=make_optimizer(model))
    print(
        f"resumed {CHECKPOINT} into a fresh TheModelClass: epoch {ckpt.epoch}, loss {ckpt.extra['loss']:.4f}, "
        f"restored {', '.join(ckpt.restored)}"
    )
    if not same_weights(model, trained):
        raise SystemExit("error: the resumed weights differ from the trained ones")
    model.eval()
    examples, _ = synthetic_cifar(4, seed=1)
    manifest = ferry.pack(
        model,
        workdir / ARCHIVE,
        example_inputs=examples,
        name="lenet",
        version=f"epoch-{ckpt.epoch}",
        labels=list(CLASSES),
        postprocess=ferry.Classify(top_k=3),
        metadata={"trained_epochs": ckpt.epoch, "loss": ckpt.extra["loss"]},
    )
    signature = f"{manifest.signature.inputs[0].describe()} -> {manifest.signature.outputs[0].describe()}"
    print(f"packed {ARCHIVE}: {manifest.kind} program ({signature}), {len(CLASSES)} labels")


def load_legacy(workdir: Path, trained: nn.Module) -> None:
    """Step 4: the DataParallel checkpoint into a plain model, first as is, then renamed."""
    model = TheModelClass()
    try:
        ferry.load_into(model, workdir / LEGACY)
    except ferry.FerryError as exc:
        hint = next((line.strip() for line in str(exc).splitlines() if "rename" in line), str(exc).splitlines()[0])
        print(f"load_into({LEGACY}) as is: {type(exc).__name__}; {hint}")
    report = ferry.load_into(model, workdir / LEGACY, rename={"module.": ""})
    print(f"load_into({LEGACY}, rename={{'module.': ''}}): {str(report).splitlines()[0]}")
    print(f"same weights as the checkpoint: {'yes' if same_weights(model, trained) else 'NO'}")
    if not same_weights(model, trained):
        raise SystemExit("error: the legacy file's weights differ from the trained ones")


def use_elsewhere(workdir: Path) -> int:
    """Step 5: run the client on copies of the archive and reference, where lenet.py is absent."""
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    env["PYTHONIOENCODING"] = "utf-8"
    with tempfile.TemporaryDirectory(prefix="lenet-elsewhere-") as tmp:
        for source in (workdir / ARCHIVE, workdir / REFERENCE, HERE / CLIENT):
            shutil.copy2(source, Path(tmp) / source.name)
        print(f"fresh process in a temporary directory (no lenet.py, PYTHONPATH unset): python {CLIENT}")
        result = subprocess.run(
            [sys.executable, CLIENT, ARCHIVE, REFERENCE],
            cwd=tmp,
            env=env,
            capture_output=True,
            encoding="utf-8",
            errors="replace",
            check=False,
        )
    for line in (result.stdout + result.stderr).splitlines():
        print(f"{INDENT}{line}")
    return result.returncode


def main(argv: list[str] | None = None) -> int:
    """Train, checkpoint, resume, pack, load the legacy file, and check the archive elsewhere."""
    args = parse_args(argv)
    if isinstance(sys.stdout, io.TextIOWrapper):
        sys.stdout.reconfigure(errors="replace", line_buffering=True)
    args.workdir.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    torch.set_num_threads(1)
    model = TheModelClass()
    optimizer = make_optimizer(model)
    try:
        loss = train(model, optimizer)
        ferry.save_checkpoint(args.workdir / CHECKPOINT, model=model, optimizer=optimizer, epoch=EPOCHS, loss=loss)
        save_legacy(args.workdir / LEGACY, model, optimizer, loss)
        print(f"saved {CHECKPOINT} (torchferry checkpoint) and {LEGACY} (torch.save, DataParallel keys)")
        resume_and_pack(args.workdir, model)
        load_legacy(args.workdir, model)
    except ferry.FerryError as exc:
        print(f"error: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    model.eval()
    images, _ = synthetic_cifar(TEST_IMAGES, seed=2)
    with torch.no_grad():
        ferry.save({"images": images, "logits": model(images)}, args.workdir / REFERENCE)
    status = use_elsewhere(args.workdir)
    if status != 0:
        print(f"error: {CLIENT} exited with status {status}", file=sys.stderr)
        return 1
    print("the archive reproduces the trained model without TheModelClass")
    return 0


if __name__ == "__main__":
    sys.exit(main())
