"""Wall time of each stage in an lr experiment (`dvc exp run -S train.lr=X`), old commit vs new.

For each revision this builds a fresh project from `git archive <rev>` (git + DVC initialised,
`data.source` pointed at the CIFAR-10 copy), runs the whole pipeline once and commits it, as a
user does before experimenting. Then the two projects take turns at `dvc exp run -S train.lr=X`
(a new lr each time, so nothing comes from the run cache), and the script timestamps DVC's
"Running stage" lines as they stream: a stage's time runs from its line to the next one, the
last stage's to the end of the command, and "dvc before train" is everything from the command's
start to the train stage. "outside the epoch loop" is the command's wall time minus the train
stage's epoch loop (metrics/timings/train.json's epoch_loop_seconds, per-epoch validation
included; train_seconds in revisions before bbf3d56, where it meant the same).

    uv run python bench/stage_times.py --old 8989bb0 --new HEAD --repeats 3
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml
from benchlib import (
    DEFAULT_CIFAR_ZIP,
    REPO_ROOT,
    busy_note,
    machine_info,
    machine_line,
    update_results_md,
    write_json_result,
)

NAME = "stage_times"
STAGES = ("train", "evaluate", "export", "predict")
RUNNING = re.compile(r"Running stage '(\w+)'")


def _run(cmd: list[str], cwd: Path, **kw: Any) -> str:
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, **kw)
    if proc.returncode:
        raise SystemExit(f"{' '.join(cmd)} failed in {cwd}:\n{proc.stdout[-3000:]}{proc.stderr}")
    return proc.stdout


def make_project(rev: str, dest: Path, source: Path, epochs: int) -> Path:
    """A fresh clone-like project of `rev` with data.source and train.epochs set, run once."""
    dest.mkdir(parents=True)
    tar_path = dest.parent / f"{dest.name}.tar"
    subprocess.run(["git", "archive", "-o", str(tar_path), rev], cwd=REPO_ROOT, check=True)
    with tarfile.open(tar_path) as tar:
        tar.extractall(dest, filter="data")
    tar_path.unlink()
    _run(["git", "init", "-q", "-b", "main"], dest)
    settings = {"data": {"source": str(source)}, "train": {"epochs": epochs}}
    conf = dest / "conf" / "config.yaml"
    target = conf if conf.is_file() else dest / "params.yaml"  # Hydra layout, or params.yaml
    data = yaml.safe_load(target.read_text())
    for section, values in settings.items():
        data[section].update(values)
    target.write_text(yaml.safe_dump(data, sort_keys=False, allow_unicode=True))
    if conf.is_file():
        env_src = f"PYTHONPATH={dest / 'src'}"
        _run(["env", env_src, sys.executable, "-m", "visionpipe.cli", "params"], dest)
    _run(["git", "add", "-A"], dest)
    _run(["git", "commit", "-qm", "project"], dest)
    _run([sys.executable, "-m", "dvc", "repro"], dest, timeout=3600)
    _run(["git", "add", "-A"], dest)
    _run(["git", "commit", "-qm", "baseline run"], dest)
    return dest


def timed_experiment(project: Path, lr: float) -> dict[str, float]:
    """One `dvc exp run -S train.lr=<lr>`, timed stage by stage from its streamed output."""
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    cmd = [sys.executable, "-m", "dvc", "exp", "run", "-S", f"train.lr={lr}"]
    started = time.perf_counter()
    marks: list[tuple[str, float]] = [("dvc before train", started)]
    with subprocess.Popen(
        cmd, cwd=project, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    ) as proc:
        assert proc.stdout is not None
        for line in proc.stdout:
            if found := RUNNING.search(line):
                marks.append((found.group(1), time.perf_counter()))
    ended = time.perf_counter()
    if proc.returncode:
        raise SystemExit(f"{' '.join(cmd)} failed in {project}")
    seconds = {name: nxt - t for (name, t), (_, nxt) in itertools.pairwise(marks)}
    seconds[marks[-1][0]] = ended - marks[-1][1]
    timings = json.loads((project / "metrics/timings/train.json").read_text())
    # Revisions before bbf3d56 have no epoch_loop_seconds: their train_seconds is the loop.
    loop = timings.get("epoch_loop_seconds", timings["train_seconds"])
    seconds["total"] = ended - started
    seconds["train epoch loop"] = loop
    seconds["outside the epoch loop"] = seconds["total"] - loop
    return seconds


def report(info: dict[str, Any], args: argparse.Namespace, runs: dict[str, list[dict]]) -> str:
    rows = ["dvc before train", *STAGES, "train epoch loop", "outside the epoch loop", "total"]
    med = {v: {r: statistics.median(run[r] for run in runs[v]) for r in rows} for v in runs}
    lines = [
        f"## Stage wall times of an lr experiment (`bench/{NAME}.py`)",
        "",
        f"Machine: {machine_line(info)}.",
        f"Command: `uv run python bench/{NAME}.py --old {args.old} --new {args.new} "
        f"--repeats {args.repeats} --epochs {args.epochs}`",
        "",
        f"Each revision as a fresh project on cifar10-jpeg.zip (45,000 train / 5,000 val / "
        f"10,000 test images), the tutorial's defaults with train.epochs={args.epochs}, run "
        "once and committed; then `dvc exp run -S train.lr=X` with a new lr each time, the two "
        f"projects taking turns, {args.repeats} runs each (medians in seconds). A stage's time "
        "runs from DVC's 'Running stage' line to the next (so it includes DVC's own work "
        "around it); the train stage's time includes its epoch loop, shown on its own below.",
        "",
        f"| | old ({args.old}) | new ({args.new}) |",
        "|---|---:|---:|",
    ]
    for r in rows:
        lines.append(f"| {r} | {med['old'][r]:.1f} | {med['new'][r]:.1f} |")
    lines += ["", *busy_note(info)]
    return "\n".join(lines).rstrip()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--old", required=True, help="revision before the change")
    parser.add_argument("--new", default="HEAD", help="revision after it (default HEAD)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=1, help="train.epochs of every run")
    parser.add_argument("--zip", type=Path, default=DEFAULT_CIFAR_ZIP)
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    info = machine_info()
    print(f"machine: {machine_line(info)}")
    with tempfile.TemporaryDirectory(prefix="stage-times-") as tmp:
        projects = {
            which: make_project(rev, Path(tmp) / which, args.zip.resolve(), args.epochs)
            for which, rev in (("old", args.old), ("new", args.new))
        }
        runs: dict[str, list[dict]] = {"old": [], "new": []}
        lr = 0.02
        for i in range(args.repeats):
            order = ("old", "new") if i % 2 == 0 else ("new", "old")
            for which in order:
                lr += 0.001
                runs[which].append(timed_experiment(projects[which], round(lr, 4)))
                print(which, json.dumps({k: round(v, 1) for k, v in runs[which][-1].items()}))
        shutil.rmtree(tmp, ignore_errors=True)
    body = report(info, args, runs)
    print("\n" + body)
    if not args.no_write:
        payload = {"benchmark": NAME, "machine": info, "old": args.old, "new": args.new, **runs}
        print(f"wrote {write_json_result(NAME, payload)} and {update_results_md(NAME, body)}")


if __name__ == "__main__":
    main()
