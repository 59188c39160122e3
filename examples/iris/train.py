"""Train the Iris classifier and save it with torchferry.

    python examples/iris/train.py --workdir .demo                      # 100 epochs from scratch
    python examples/iris/train.py --workdir .demo --resume --epochs 10  # 10 more from the checkpoint

Every run, fresh or resumed, leaves three files in the work directory that agree with
each other: ``iris.safetensors`` (the weights, for inference), ``iris-ckpt.safetensors``
(weights + Adam state + epoch + last loss, to continue training) and ``accuracy.txt``
(the test accuracy those weights reach, for ``evaluate.py`` to check against).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from model import ACCURACY, CHECKPOINT, WEIGHTS, IrisData, Multiclass, accuracy, format_accuracy, load_data, setup_torch
from torch import nn, optim

import torchferry as ferry

LEARNING_RATE = 0.001
BATCH_SIZE = 5
PRINT_EVERY = 25


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """Read the command line; ``--epochs`` counts the epochs run now, fresh or resumed."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", type=Path, required=True, help="where the weights and checkpoint go")
    parser.add_argument("--epochs", type=int, default=100, help="epochs to run in this invocation (default 100)")
    parser.add_argument("--resume", action="store_true", help=f"continue from WORKDIR/{CHECKPOINT}")
    args = parser.parse_args(argv)
    if args.epochs < 1:
        parser.error("--epochs must be at least 1")
    return args


def train_epoch(model: nn.Module, optimizer: optim.Optimizer, data: IrisData) -> float:
    """One pass over the training rows in fixed order, as in the article; returns the mean batch loss."""
    model.train()
    loss_fn = nn.NLLLoss()
    losses = []
    for start in range(0, len(data.x_train), BATCH_SIZE):
        x_batch = data.x_train[start : start + BATCH_SIZE]
        y_batch = data.y_train[start : start + BATCH_SIZE]
        loss = loss_fn(model(x_batch), y_batch)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return sum(losses) / len(losses)


def restore(path: Path, model: nn.Module, optimizer: optim.Optimizer) -> int:
    """Put the checkpoint's weights and Adam moments back; return the epoch it was saved at.

    Restoring the optimizer too is what makes resuming equal to never having stopped:
    a fresh Adam would restart its moment estimates and take different steps.
    """
    ckpt = ferry.resume(path, model=model, optimizer=optimizer)
    loss = ckpt.extra.get("loss")
    print(f"resumed {path} at epoch {ckpt.epoch} (last loss {loss:.4f})")
    print(f"restored {', '.join(ckpt.restored)}")
    return int(ckpt.epoch or 0)


def fit(model: nn.Module, optimizer: optim.Optimizer, data: IrisData, first: int, last: int) -> float:
    """Train epochs ``first..last`` (inclusive), printing a few losses; return the last one."""
    loss = float("nan")
    for epoch in range(first, last + 1):
        loss = train_epoch(model, optimizer, data)
        if epoch in (first, last) or epoch % PRINT_EVERY == 0:
            print(f"epoch {epoch:4d}  loss {loss:.4f}")
    return loss


def save_all(
    workdir: Path, model: nn.Module, optimizer: optim.Optimizer, data: IrisData, epoch: int, loss: float
) -> None:
    """Write the checkpoint before evaluating (so it records train mode), then the weights and accuracy."""
    ferry.save_checkpoint(workdir / CHECKPOINT, model=model, optimizer=optimizer, epoch=epoch, loss=loss)
    correct, total = accuracy(model, data.x_test, data.y_test)
    print(format_accuracy(correct, total))
    ferry.save(model.state_dict(), workdir / WEIGHTS)
    (workdir / ACCURACY).write_text(f"{correct / total!r}\n", encoding="utf-8")
    print(f"saved {workdir / WEIGHTS} (weights), {workdir / CHECKPOINT} (checkpoint, epoch {epoch}), {ACCURACY}")


def main(argv: list[str] | None = None) -> int:
    """Train (or resume), evaluate and save; a torchferry error exits 1 with its message."""
    args = parse_args(argv)
    setup_torch()
    data = load_data()
    model = Multiclass()
    optimizer = optim.Adam(model.parameters(), lr=LEARNING_RATE)
    args.workdir.mkdir(parents=True, exist_ok=True)
    try:
        done = restore(args.workdir / CHECKPOINT, model, optimizer) if args.resume else 0
        loss = fit(model, optimizer, data, done + 1, done + args.epochs)
        save_all(args.workdir, model, optimizer, data, done + args.epochs, loss)
    except ferry.FerryError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
