"""The torchferry tour on the Iris classifier: what ``make demo`` runs.

    python examples/iris/demo.py --workdir .demo

Each step is a separate Python process, because the point is that nothing but the files
carries over: train and save, reload elsewhere and get the same accuracy, resume
training from the checkpoint, pack the classifier into one archive and use it in a
process where its class does not exist, keep the archive in a registry under the work
directory (``registry/``, never the user's home) as ``iris@production`` and load it by that
name, serve it over HTTP and query it (``torchferry predict``, plain JSON, a burst that
batches, the metrics), shut the server down with SIGTERM, and (when the ``torchferry``
command is installed) look inside the checkpoint from the shell. Exits 1 as soon as a
step fails.
"""

from __future__ import annotations

import argparse
import io
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ACCURACY_LINE = re.compile(r"^test accuracy (?P<value>\d\.\d+) \((?P<correct>\d+)/(?P<total>\d+)\)$", re.MULTILINE)
ARCHIVE_LINE = re.compile(r"^the archive scores what training measured \((?P<value>\d\.\d+)\)", re.MULTILINE)
LABEL_LINE = re.compile(r"^\s*flower \d+ \[.*\] -> (?P<label>\w+) ", re.MULTILINE)
RESUMED_LINE = re.compile(r"^resumed .* at epoch (?P<epoch>\d+) ", re.MULTILINE)
ADDED_LINE = re.compile(r"added .* as (?P<ref>iris:\d+) \(iris@production\)")
PRODUCTION_LINE = re.compile(
    r"^load_model\('iris@production'\) is (?P<ref>iris:\d+): .* -> (?P<label>\w+) p=", re.MULTILINE
)
INDENT = "    "
STEPS = 6
REGISTRY = "registry"
"""The demo's registry: a folder of the work directory, so the demo never writes to the user's home."""
FROM_REGISTRY = """\
import torchferry as ferry
for e in ferry.Registry().list("iris")[-5:]:  # TORCHFERRY_HOME is the default registry
    signature = ", ".join(e.summary["inputs"]) + " -> " + ", ".join(e.summary["outputs"])
    print(f"{e.ref:8} {','.join(e.aliases):11} {e.summary['kind']:7} {signature}  {e.size / 1024:.1f} KiB  {e.created}")
(best,) = ferry.load_model("iris@production").predict([5.1, 3.5, 1.4, 0.2])["output"]
print(f"load_model('iris@production') is {ferry.Registry().get('iris@production').ref}: "
      f"[5.1, 3.5, 1.4, 0.2] -> {best['label']} p={best['score']:.2f}")
"""
"""Lists the registry the way ``torchferry registry ls`` does, then loads and predicts by alias."""


class DemoError(Exception):
    """A step failed or printed something unexpected; ``main`` reports it and exits 1."""


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """Read the command line; the epoch counts are there to make quick runs possible."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", type=Path, required=True, help="where the saved files go (created if needed)")
    parser.add_argument("--epochs", type=int, default=100, help="epochs of the first training run (default 100)")
    parser.add_argument("--more-epochs", type=int, default=10, help="epochs run after resuming (default 10)")
    return parser.parse_args(argv)


def shown(path: Path) -> str:
    """A path as the reader would type it: relative to the current directory when inside it."""
    try:
        return str(path.resolve().relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def run(command: list[str], display: str, env_extra: dict[str, str] | None = None) -> str:
    """Run a command, echoing its output indented as it comes; return that output.

    stderr is merged into stdout so warnings and errors appear where they happened.
    """
    print(f"{INDENT}$ {display}")
    env = {**os.environ, "PYTHONIOENCODING": "utf-8", **(env_extra or {})}
    lines = []
    with subprocess.Popen(
        command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, encoding="utf-8", errors="replace"
    ) as process:
        assert process.stdout is not None
        for line in process.stdout:
            print(f"{INDENT}{line.rstrip()}")
            lines.append(line)
    if process.returncode != 0:
        raise DemoError(f"`{display}` exited with status {process.returncode}")
    return "".join(lines)


def run_script(script: str, *args: str) -> str:
    """Run one of the example scripts in a fresh interpreter (the one running this demo)."""
    return run([sys.executable, str(HERE / script), *args], " ".join(["python", shown(HERE / script), *args]))


def find(pattern: re.Pattern[str], output: str, what: str) -> re.Match[str]:
    """The first line matching ``pattern``; its absence means a script changed what it prints."""
    match = pattern.search(output)
    if match is None:
        raise DemoError(f"expected {what} in the output above, found none")
    return match


def step_train(workdir: str, epochs: int) -> re.Match[str]:
    """Step 1: train from scratch and save weights, checkpoint and accuracy."""
    print(f"1/{STEPS} train: {epochs} epochs of Adam (lr 0.001, batch 5) on 105 Iris flowers, then save")
    output = run_script("train.py", "--workdir", workdir, "--epochs", str(epochs))
    accuracy = find(ACCURACY_LINE, output, "the test accuracy")
    print(f"{INDENT}-> test accuracy {accuracy['value']} on 45 held-out flowers; saved with torchferry\n")
    return accuracy


def step_evaluate(workdir: str, trained: re.Match[str]) -> None:
    """Step 2: a fresh process rebuilds the model, loads the weights, and must score the same."""
    print(f"2/{STEPS} reload in a fresh process: rebuild Multiclass, torchferry.load_into, score the same 45 flowers")
    output = run_script("evaluate.py", "--workdir", workdir)
    reloaded = find(ACCURACY_LINE, output, "the test accuracy")
    if reloaded.group(0) != trained.group(0):
        raise DemoError(f"reloaded model: {reloaded.group(0)}, but training measured {trained.group(0)}")
    print(f"{INDENT}-> same accuracy {reloaded['value']} \u2713\n")


def step_resume(workdir: str, epochs: int, more: int) -> None:
    """Step 3: continue training from the checkpoint, with the optimizer state it saved."""
    print(f"3/{STEPS} resume the checkpoint (weights + Adam state + epoch) for {more} more epochs")
    output = run_script("train.py", "--workdir", workdir, "--resume", "--epochs", str(more))
    resumed_at = int(find(RESUMED_LINE, output, "a 'resumed ... at epoch N' line")["epoch"])
    if resumed_at != epochs:
        raise DemoError(f"resumed at epoch {resumed_at}, but the checkpoint was written after epoch {epochs}")
    print(f"{INDENT}-> picked up at epoch {resumed_at} and went on to epoch {epochs + more} \u2713\n")


def step_pack(workdir: str) -> None:
    """Step 4: one archive with the graph, weights and labels, opened where ``Multiclass`` is not."""
    print(f"4/{STEPS} pack into iris.ferry, then label flowers in a fresh process that cannot import Multiclass")
    output = run_script("pack.py", "--workdir", workdir)
    labels = LABEL_LINE.findall(output)
    if not labels:
        raise DemoError("expected the labels predicted for a few flowers in the output above, found none")
    accuracy = find(ARCHIVE_LINE, output, "the archive's accuracy")
    print(f"{INDENT}-> {', '.join(labels)}; same accuracy {accuracy['value']} from the archive alone \u2713\n")


def step_registry(workdir: str) -> None:
    """Step 5: add the archive to a registry in the work directory, then load it by its alias elsewhere."""
    print(f"5/{STEPS} keep iris.ferry in a registry as iris@production, then load it by that name")
    root, archive = str(Path(workdir) / REGISTRY), str(Path(workdir) / "iris.ferry")
    add = ["registry", "--root", root, "add", archive, "--alias", "production"]
    added = find(ADDED_LINE, run_cli(add), "an 'added ... as iris:N (iris@production)' line")
    display = f"TORCHFERRY_HOME={root} python -c '<list the registry; load_model(\"iris@production\").predict(...)>'"
    output = run([sys.executable, "-c", FROM_REGISTRY], display, {"TORCHFERRY_HOME": root})
    production = find(PRODUCTION_LINE, output, "a prediction from iris@production")
    if production["ref"] != added["ref"] or production["label"] != "setosa":
        raise DemoError(
            f"iris@production is {production['ref']} and said {production['label']}, expected {added['ref']} and setosa"
        )
    print(f"{INDENT}-> {archive} is {added['ref']} in {root}/; iris@production loads it and says setosa \u2713\n")


def step_serve(workdir: str) -> None:
    """Step 6: serve iris@production on 127.0.0.1, query it, read /metrics, stop it cleanly."""
    print(f"6/{STEPS} serve iris@production over HTTP, query it, read the metrics, shut down with SIGTERM")
    root = str(Path(workdir) / REGISTRY)
    display = f"TORCHFERRY_HOME={root} python {shown(HERE / 'serve.py')}"
    output = run([sys.executable, str(HERE / "serve.py")], display, {"TORCHFERRY_HOME": root})
    if "drained and exited 0" not in output:
        raise DemoError("the server did not report a clean shutdown")
    print(f"{INDENT}-> answered over HTTP, batched a burst, and drained on SIGTERM \u2713\n")


def run_cli(args: list[str]) -> str:
    """The ``torchferry`` command, run by this Python (so it works without the script on PATH)."""
    return run([sys.executable, "-m", "torchferry.cli.main", *args], " ".join(["torchferry", *args]))


def step_inspect(workdir: str) -> None:
    """Extra step: the ``torchferry inspect`` command, only if it is installed beside this Python."""
    cli = shutil.which("torchferry", path=str(Path(sys.executable).parent))
    checkpoint = str(Path(workdir) / "iris-ckpt.safetensors")
    if cli is None:
        print(f"+  (skipped `torchferry inspect`: no torchferry command next to {sys.executable})\n")
        return
    print("+  look inside the checkpoint from the shell, without loading it into a model")
    run([cli, "inspect", checkpoint], f"torchferry inspect {checkpoint}")
    print()


def use_safe_stdout() -> None:
    """Show each line as soon as it is printed, even through a pipe, and print a '?'
    instead of crashing where the terminal cannot show the check mark."""
    if isinstance(sys.stdout, io.TextIOWrapper):
        sys.stdout.reconfigure(errors="replace", line_buffering=True)


def main(argv: list[str] | None = None) -> int:
    """Run the five steps (and the optional CLI look) in order; stop at the first failure."""
    args = parse_args(argv)
    use_safe_stdout()
    workdir = str(args.workdir)
    started = time.perf_counter()
    print(f"torchferry demo: save, reload, resume, pack, register and serve an Iris classifier (files in {workdir}/)\n")
    try:
        trained = step_train(workdir, args.epochs)
        step_evaluate(workdir, trained)
        step_resume(workdir, args.epochs, args.more_epochs)
        step_pack(workdir)
        step_registry(workdir)
        step_serve(workdir)
        step_inspect(workdir)
    except DemoError as exc:
        print(f"demo failed: {exc}", file=sys.stderr)
        return 1
    files = ", ".join(sorted(p.name for p in args.workdir.iterdir()))
    print(f"done in {time.perf_counter() - started:.1f} s. {workdir}/ holds {files}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
