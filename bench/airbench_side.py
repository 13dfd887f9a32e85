"""airbench94's own code against the `fast` recipe on the same GPU, the same data, in one run.

airbench 0.1.8 (PyPI; a bench-only dependency: `pip install airbench==0.1.8`, or its wheel where
there is no registry) trains airbench94 with its own loader, schedule and timer; the `fast` recipe
runs as a user's run does, its train stage then its evaluate stage (bench/fast_train.py's
`run_version`). Both read one preprocessed copy of cifar10-jpeg.zip: this checkout's preprocess
stage writes data/processed, and airbench reads the same arrays, saved in its own `train.pt` /
`test.pt` form. Seeds alternate (airbench seed 0, fast seed 0, airbench seed 1, ...); each run is a
process of its own, and each airbench run first does airbench's warm-up run (untimed, as its
README does), so cuDNN's autotuning is not in its time.

Times, each side as it reports itself: airbench's `total_time_seconds` (CUDA events around its
whitening init, its epochs and its final TTA scoring; its per-epoch validation is outside), and
our metrics/timings/train.json `train_seconds` (the steps, no validation) plus the train stage's
wall time. Accuracy: airbench's `tta_val_acc`; ours, the evaluate stage's test_acc (TTA, scored
in strict fp32 here, as bench/fast_train.py does).

    uv run python bench/airbench_side.py --seeds 0,1,2 [--compiled] [--also train.cuda_graph=true]

`--compiled` also runs airbench94 with its net's forward under torch.compile (its repository's
compiled variant is not in the PyPI package). `--also OVERRIDE` (repeatable) also runs `fast`
with that override, labelled `fast+OVERRIDE`: `train.cuda_graph=true`, `train.compile=true`.
`--cpu-shim --epochs 0.05 --test-images 500` runs airbench on a CPU (its code calls .cuda() and
CUDA events: the shim maps them to the CPU), to check this script without a GPU; its figures mean
nothing.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from benchlib import (
    DEFAULT_CIFAR_ZIP,
    REPO_ROOT,
    announce_machine,
    busy_note,
    publish,
    section_head,
)
from fast_train import preprocess_once, run_version

NAME = "airbench_side"

# Runs in a fresh process, cwd = a folder holding cifar10/{train,test}.pt: airbench's train()
# opens its test loader as CifarLoader('cifar10', train=False).
AIRBENCH_RUN = r"""
import json, sys, time
import torch
seed, epochs = int(sys.argv[1]), float(sys.argv[2])
compiled, shim = sys.argv[3] == "1", sys.argv[4] == "1"
if shim:  # airbench's code is CUDA-only: on a CPU, .cuda() and CUDA events become CPU ones
    class Event:
        def __init__(self, **_): self.t = 0.0
        def record(self): self.t = time.perf_counter()
        def elapsed_time(self, end): return 1e3 * (end.t - self.t)
    torch.cuda.Event, torch.cuda.synchronize = Event, lambda *a: None
    torch.nn.Module.cuda = lambda self, *a, **k: self
    # and its fp16, which a CPU computes in reference kernels (a 0.05-epoch run took over 18
    # minutes), fp32
    torch.nn.Module.half = lambda self: self
    torch.Tensor.half = lambda self, *a, **k: self.float()
import airbench, airbench.utils as utils, airbench.lib_airbench94 as lib
if shim:
    class CpuLoader(utils.CifarLoader):
        def __init__(self, *a, **k): super().__init__(*a, **{**k, "gpu": "cpu"})
    utils.CifarLoader = lib.CifarLoader = CpuLoader
final = {}
def capture(variables, is_final_entry):
    if is_final_entry:
        final.update(tta_val_acc=float(variables["tta_val_acc"]),
                     total_time_seconds=float(variables["total_time_seconds"]))
    printer(variables, is_final_entry)
printer, utils.print_training_details = utils.print_training_details, capture
make_net = lib.make_net94
if compiled:
    def make_net():
        net = lib.make_net94()
        net.forward = torch.compile(net.forward)
        return net
loader = lib.CifarLoader("cifar10", train=True, batch_size=lib.hyp["opt"]["batch_size"],
                         aug=lib.hyp["aug"], altflip=True)
airbench.warmup94(loader, make_net=make_net, epochs=epochs)
torch.manual_seed(seed)
airbench.train94(loader, make_net=make_net, epochs=epochs)
print("RESULT " + json.dumps(final), flush=True)
"""


def write_airbench_data(project: Path, dest: Path, test_images: int | None) -> None:
    """The train and test splits of `project`'s data/processed as airbench's
    cifar10/{train,test}.pt: uint8 NHWC images, labels and class names."""
    import torch

    from visionpipe import split_tensors

    with contextlib.chdir(project):  # the project's loaders read ./data/processed
        classes = split_tensors.read_meta()["classes"]
        for split in ("train", "test"):
            images, labels = split_tensors.load_split(split, in_memory=True)
            if split == "test" and test_images:  # every k-th image: the split is sorted by class
                step = max(1, len(labels) // test_images)
                images, labels = images[::step][:test_images], labels[::step][:test_images]
            data = {"images": images.permute(0, 2, 3, 1).contiguous(), "labels": labels}
            torch.save({**data, "classes": classes}, dest / f"{split}.pt")


def run_airbench(work: Path, seed: int, args: argparse.Namespace, compiled: bool) -> dict:
    label = "airbench94 compiled" if compiled else "airbench94"
    print(f"[{label} seed {seed}] ...", flush=True)
    argv = [str(seed), str(args.airbench_epochs), str(int(compiled)), str(int(args.cpu_shim))]
    done = subprocess.run(
        [sys.executable, "-c", AIRBENCH_RUN, *argv],
        cwd=work / "airbench",
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
        capture_output=True,
        text=True,
    )
    sys.stdout.write(done.stdout[-3000:])
    if done.returncode != 0:
        raise SystemExit(f"{label} seed {seed} failed:\n{done.stderr[-3000:]}")
    result = json.loads(done.stdout.rsplit("RESULT ", 1)[1])
    return {"version": label, "seed": seed, "seconds": result["total_time_seconds"],
            "test_accuracy": result["tta_val_acc"]}  # fmt: skip


def run_fast(
    work: Path, seed: int, processed: Path, args: argparse.Namespace, override: str = ""
) -> dict:
    label, extra = (f"fast+{override}", [override]) if override else ("fast", [])
    r = run_version(REPO_ROOT, label, seed, work, processed, args, extra)
    return {"version": label, "seed": seed, "seconds": r["stage_timings"]["train_seconds"],
            "stage_wall_seconds": r["train_stage_wall_seconds"],
            "test_accuracy": r["test_accuracy"]}  # fmt: skip


def report(info: dict[str, Any], args: argparse.Namespace, runs: list[dict[str, Any]]) -> str:
    lines = [
        *section_head("airbench94 vs the `fast` recipe, side by side", NAME, info),
        "Same preprocessed cifar10-jpeg.zip for both, seeds alternating. airbench94: its own "
        "timer (whitening, epochs and final TTA scoring; warm-up run untimed). `fast`: "
        "train_seconds (the steps; per-epoch validation apart); accuracy with TTA for both.",
        "",
        "| version | seed | seconds | test accuracy (TTA) |",
        "|---|---:|---:|---:|",
    ]
    lines += [
        f"| {r['version']} | {r['seed']} | {r['seconds']:.2f} s | {100 * r['test_accuracy']:.2f}% |"
        for r in runs
    ]
    lines.append("")
    by: dict[str, list[dict[str, Any]]] = {}
    for r in runs:
        by.setdefault(r["version"], []).append(r)
    for version, rs in by.items():
        secs, accs = [r["seconds"] for r in rs], [100 * r["test_accuracy"] for r in rs]
        lines.append(
            f"- {version}: {statistics.mean(secs):.2f} s, {statistics.mean(accs):.2f}% "
            f"(means over {len(rs)} seeds)"
        )
    for ours in (v for v in by if v.startswith("fast") and "airbench94" in by):
        mean = {v: statistics.mean(r["seconds"] for r in by[v]) for v in ("airbench94", ours)}
        acc = {v: statistics.mean(r["test_accuracy"] for r in by[v]) for v in mean}
        met = mean[ours] <= mean["airbench94"] and acc[ours] >= acc["airbench94"]
        lines.append(
            f"- `{ours}` / airbench94 time: **{mean[ours] / mean['airbench94']:.2f}x**, accuracy "
            f"{100 * (acc[ours] - acc['airbench94']):+.2f} points (target: time ≤ 1x at ≥ its "
            f"accuracy: {'met' if met else 'NOT met'})."
        )
    if args.cpu_shim:
        lines.append("- `--cpu-shim`: airbench on a CPU, to check the script; not a result.")
    return "\n".join(lines + busy_note(info))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--epochs", type=int, default=10, help="the fast recipe's train.epochs")
    parser.add_argument("--airbench-epochs", type=float, default=9.9, help="airbench's (9.9)")
    parser.add_argument("--compiled", action="store_true", help="also airbench94 compiled")
    parser.add_argument(
        "--also", action="append", default=[], help="also fast with this override (repeatable)"
    )
    parser.add_argument("--zip", type=Path, default=DEFAULT_CIFAR_ZIP, help="cifar10-jpeg.zip")
    parser.add_argument("--test-images", type=int, default=None, help="airbench's test split cut")
    parser.add_argument("--cpu-shim", action="store_true", help="airbench on a CPU (a check)")
    parser.add_argument("--work", type=Path, default=None)
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    args.lock, args.keep = None, False  # what fast_train.run_version reads
    info = announce_machine()
    work = args.work or Path(tempfile.mkdtemp(prefix="airbench-side-"))
    processed = preprocess_once(work, args.zip.resolve())
    (work / "airbench" / "cifar10").mkdir(parents=True)
    write_airbench_data(processed.parent.parent, work / "airbench" / "cifar10", args.test_images)
    runs: list[dict[str, Any]] = []
    for seed in (int(s) for s in args.seeds.split(",")):
        runs.append(run_airbench(work, seed, args, compiled=False))
        if args.compiled:
            runs.append(run_airbench(work, seed, args, compiled=True))
        runs.append(run_fast(work, seed, processed, args))
        for override in args.also:
            runs.append(run_fast(work, seed, processed, args, override))
        (work / "runs.json").write_text(json.dumps({"machine": info, "runs": runs}))
    payload = {"machine": info, "args": {k: str(v) for k, v in vars(args).items()}, "runs": runs}
    name = NAME if info["gpu"] else f"{NAME}_cpu"
    publish(name, report(info, args, runs), payload, not args.no_write)


if __name__ == "__main__":
    main()
