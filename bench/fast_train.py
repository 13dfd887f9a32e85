"""The `fast` recipe's train time and accuracy, an older commit's train stage vs this one's.

Both versions run their own stage scripts (train, then evaluate) on the same preprocessed
CIFAR-10 (preprocessed once, by this checkout: the arrays are the same bytes in both), each in a
folder of its own holding a copy of that version's `stages/` and `src/`, params.yaml of the
`fast` recipe (train.seed set per run) and a link to the shared data/processed. The runs
alternate between the versions, so a machine that slows down over the hour slows both.

The train stage runs under a small wrapper that times `train.evaluate_split` and
`train.misclassified_grid` (per-epoch validation, the same functions in both versions): so the
old version's train time without validation is measured the same way as the new one's, next to
what each stage writes to metrics/timings/train.json. Test accuracy is the evaluate stage's, with
the model's TTA.

    git worktree add /tmp/visionpipe-old 43321a2
    uv run python bench/fast_train.py --old /tmp/visionpipe-old --seeds 0,1,2 --old-seeds 0 \\
        --lock /tmp/visionpipe-heavy.lock

`--lock FILE` runs each stage under `flock FILE`, so the heavy runs of others on the machine
never overlap a timed one. `--epochs 1` and `--from-results FILE` (reprint a finished run) help
while developing.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml
from benchlib import (
    DEFAULT_CIFAR_ZIP,
    REPO_ROOT,
    announce_machine,
    busy_note,
    machine_line,
    publish,
    result_name,
)

from visionpipe.config.compose import compose

NAME = "fast_train"
TARGET_SPEEDUP, TARGET_ACCURACY = 1.25, 0.905

# Runs the train stage with per-epoch validation timed; run from the run folder.
TIMED_TRAIN = """
import json, runpy, time
import visionpipe.train as train
spent = [0.0]
def timed(fn):
    def wrapper(*args, **kwargs):
        t0 = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            spent[0] += time.perf_counter() - t0
    return wrapper
train.evaluate_split = timed(train.evaluate_split)
train.misclassified_grid = timed(train.misclassified_grid)
try:
    runpy.run_path("stages/train.py", run_name="__main__")
finally:
    open("validation_seconds.json", "w").write(json.dumps(spent[0]))
"""


def fast_params(
    zip_path: Path, seed: int, epochs: int, extra: Sequence[str] = ()
) -> dict[str, Any]:
    overrides = ["recipe=fast", f"train.seed={seed}", f"train.epochs={epochs}", *extra]
    params = compose(overrides, REPO_ROOT / "conf")
    params["data"]["source"] = str(zip_path)
    # Test accuracy in strict fp32, as every revision before evaluate.amp scored it.
    params["evaluate"]["amp"] = False
    return params


def preprocess_once(work: Path, zip_path: Path) -> Path:
    """data/processed of the CIFAR copy, by this checkout's download and preprocess stages."""
    folder = work / "preprocessed"
    folder.mkdir()
    shutil.copytree(REPO_ROOT / "stages", folder / "stages")
    (folder / "params.yaml").write_text(yaml.safe_dump(fast_params(zip_path, 0, 1)))
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT / "src")}
    for stage in ("download", "preprocess"):
        subprocess.run([sys.executable, f"stages/{stage}.py"], cwd=folder, env=env, check=True)
    return folder / "data" / "processed"


def run_version(
    code: Path,
    label: str,
    seed: int,
    work: Path,
    processed: Path,
    args: argparse.Namespace,
    extra: Sequence[str] = (),
) -> dict[str, Any]:
    """Train and evaluate `fast` (with the `extra` overrides) with `code`'s stages; its timings
    and test accuracy."""
    folder = work / f"{label}-seed{seed}"
    for part in ("stages", "src"):
        shutil.copytree(code / part, folder / part)
    (folder / "data").mkdir()
    (folder / "data" / "processed").symlink_to(processed)
    params = fast_params(args.zip.resolve(), seed, args.epochs, extra)
    if not (code / "src/visionpipe/config/evaluate.py").is_file():
        del params["evaluate"]  # a revision from before the section: its loader refuses it
    known = (code / "src/visionpipe/config/train.py").read_text()
    for key in [k for k in params["train"] if f"    {k}:" not in known]:
        del params["train"][key]  # a key added after that revision: its loader refuses it
    (folder / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    env = {**os.environ, "PYTHONPATH": str(folder / "src"), "PYTHONUNBUFFERED": "1"}
    lock = ["flock", str(args.lock)] if args.lock else []
    print(f"[{label} seed {seed}] train ...", flush=True)
    t0 = time.perf_counter()
    subprocess.run([*lock, sys.executable, "-c", TIMED_TRAIN], cwd=folder, env=env, check=True)
    stage_seconds = time.perf_counter() - t0
    print(f"[{label} seed {seed}] evaluate ...", flush=True)
    evaluate = [*lock, sys.executable, "stages/evaluate.py"]
    subprocess.run(evaluate, cwd=folder, env=env, check=True)
    timings = json.loads((folder / "metrics/timings/train.json").read_text())
    validation = json.loads((folder / "validation_seconds.json").read_text())
    # The whole epoch loop: epoch_loop_seconds, or train_seconds in revisions before bbf3d56.
    loop = timings.get("epoch_loop_seconds", timings["train_seconds"])
    evaluation = json.loads((folder / "dvclive/eval/metrics.json").read_text())
    result = {
        "version": label,
        "seed": seed,
        "epoch_loop_seconds": loop,
        "validation_seconds": round(validation, 2),
        "loop_without_validation_seconds": round(loop - validation, 2),
        "stage_timings": timings,
        "train_stage_wall_seconds": round(stage_seconds, 1),
        # test_acc from 36206d0 on (short exp show columns); test_accuracy in older revisions.
        "test_accuracy": evaluation.get("test_acc", evaluation.get("test_accuracy")),
    }
    print(json.dumps(result, indent=2), flush=True)
    if not args.keep:
        shutil.rmtree(folder)
    return result


def checkout_commit(path: Path) -> str:
    """The short commit checked out at `path`; the path itself where `path` is not the top of
    a git checkout (a copy of another commit's src/ and stages/ inside some repo)."""

    def git(*args: str) -> str:
        done = subprocess.run(["git", *args], cwd=path, capture_output=True, text=True)
        return done.stdout.strip()

    top = git("rev-parse", "--show-toplevel")
    if not top or Path(top).resolve() != path.resolve():
        return str(path)
    return git("rev-parse", "--short", "HEAD")


def schedule(old_seeds: list[int], new_seeds: list[int]) -> list[tuple[str, int]]:
    """Old and new runs alternating, old first; the longer list's rest at the end."""
    order: list[tuple[str, int]] = []
    for i in range(max(len(old_seeds), len(new_seeds))):
        order += [("old", old_seeds[i])] if i < len(old_seeds) else []
        order += [("new", new_seeds[i])] if i < len(new_seeds) else []
    return order


def _mean_std(values: list[float]) -> str:
    if len(values) < 2:
        return f"{values[0]:.2f}" if values else "-"
    return f"{statistics.mean(values):.2f} ± {statistics.stdev(values):.2f}"


def report(info: dict[str, Any], args: argparse.Namespace, runs: list[dict[str, Any]]) -> str:
    by = {v: [r for r in runs if r["version"] == v] for v in ("old", "new")}

    def med(version: str, key: str) -> float:
        return statistics.median(r[key] for r in by[version])

    steps = "loop_without_validation_seconds"
    speedup = med("old", steps) / med("new", steps)
    loop_speedup = med("old", "epoch_loop_seconds") / med("new", "epoch_loop_seconds")
    reported = statistics.median(r["stage_timings"]["train_seconds"] for r in by["old"]) / (
        statistics.median(r["stage_timings"]["train_seconds"] for r in by["new"])
    )
    accuracy = [100 * r["test_accuracy"] for r in by["new"]]
    lines = [
        f"## `fast` recipe: train time and accuracy, {args.old_rev} vs this commit "
        f"(`bench/{NAME}.py`)",
        "",
        f"Machine: {machine_line(info)}.",
        f"Command: `uv run python bench/{NAME}.py --old {args.old} --seeds {args.seeds} "
        f"--old-seeds {args.old_seeds} --epochs {args.epochs}"
        f"{f' --lock {args.lock}' if args.lock else ''}`",
        "",
        f"Each run: the version's own train stage, then its evaluate stage, on the same "
        f"preprocessed cifar10-jpeg.zip (50,000 train images, {args.epochs} epochs, validating "
        "on the 10,000 test images each epoch as the recipe does), the versions alternating, "
        "old first. *without validation*: the epoch loop minus the time in "
        "`train.evaluate_split` and `train.misclassified_grid`, measured by the same wrapper "
        "in both versions (what is left: the steps, plus logging and checkpoints, well under "
        "a second per epoch). Test accuracy: the evaluate stage, with the model's TTA.",
        "",
        "| version | seed | epoch loop | validation | without validation | "
        "stage's train_seconds | test accuracy (TTA) |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in runs:
        lines.append(
            f"| {r['version']} | {r['seed']} | {r['epoch_loop_seconds']:.1f} s | "
            f"{r['validation_seconds']:.1f} s | {r[steps]:.1f} s | "
            f"{r['stage_timings']['train_seconds']:.1f} s | {100 * r['test_accuracy']:.2f}% |"
        )
    met = "met" if speedup >= TARGET_SPEEDUP else "NOT met"
    good = accuracy and statistics.mean(accuracy) >= 100 * TARGET_ACCURACY
    acc_met = "met" if good else "NOT met"
    lines += [
        "",
        f"- Train time without validation, old / new (medians): **{speedup:.2f}x** "
        f"(target ≥ {TARGET_SPEEDUP}x: {met}).",
        f"- The whole epoch loop, validation included, old / new: {loop_speedup:.2f}x.",
        "- What each stage's metrics/timings/train.json calls train_seconds, old (the whole "
        f"loop) / new (the steps alone): {reported:.2f}x; this mixes a change of what is "
        "counted with the speedup, so the targets are judged like for like, above.",
        f"- New test accuracy over seeds {args.seeds}: **{_mean_std(accuracy)}%** "
        f"(mean ± std; target ≥ {100 * TARGET_ACCURACY:.1f}% mean: {acc_met}); old: "
        f"{_mean_std([100 * r['test_accuracy'] for r in by['old']])}%.",
    ]
    lines += busy_note(info)
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--old", type=Path, required=True, help="checkout of the old commit")
    parser.add_argument("--old-label", default=None, help="name of the old version (its commit)")
    parser.add_argument("--seeds", default="0,1,2", help="train.seed values of the new version")
    parser.add_argument("--old-seeds", default="0", help="train.seed values of the old version")
    parser.add_argument("--epochs", type=int, default=10, help="train.epochs (the recipe: 10)")
    parser.add_argument("--zip", type=Path, default=DEFAULT_CIFAR_ZIP, help="cifar10-jpeg.zip")
    parser.add_argument("--lock", type=Path, default=None, help="flock this file per stage")
    parser.add_argument("--keep", action="store_true", help="keep the run folders")
    parser.add_argument("--work", type=Path, default=None, help="work folder (default: temp)")
    parser.add_argument("--from-results", type=Path, default=None, help="reprint a results json")
    parser.add_argument(
        "--no-write", action="store_true", help="print only; leave RESULTS.md and results/ alone"
    )
    args = parser.parse_args()
    args.old_rev = args.old_label or checkout_commit(args.old)
    if args.from_results:
        saved = json.loads(args.from_results.read_text())
        info, runs = saved["machine"], saved["runs"]
    else:
        if not args.zip.is_file():
            parser.error(f"{args.zip} not found: give the CIFAR-10 JPEG zip with --zip")
        info = announce_machine()
        work = args.work or Path(tempfile.mkdtemp(prefix="fast-train-"))
        work.mkdir(parents=True, exist_ok=True)
        processed = preprocess_once(work, args.zip.resolve())
        seeds = [int(s) for s in args.seeds.split(",")]
        old_seeds = [int(s) for s in args.old_seeds.split(",")]
        # This checkout as it is now: edits made while the benchmark runs do not leak into it.
        snapshot = work / "new-code"
        for part in ("stages", "src"):
            shutil.copytree(REPO_ROOT / part, snapshot / part)
        code = {"old": args.old.resolve(), "new": snapshot}
        runs = []
        for label, seed in schedule(old_seeds, seeds):
            runs.append(run_version(code[label], label, seed, work, processed, args))
            # Saved after each run, so an interrupted benchmark keeps what it measured.
            (work / "runs.json").write_text(json.dumps({"machine": info, "runs": runs}))
        if not args.keep and args.work is None:
            shutil.rmtree(work)
    payload = {"machine": info, "args": {k: str(v) for k, v in vars(args).items()}, "runs": runs}
    publish(result_name(NAME, info), report(info, args, runs), payload, not args.no_write)


if __name__ == "__main__":
    main()
