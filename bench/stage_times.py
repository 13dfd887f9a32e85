"""Wall time of each stage in an lr experiment (`dvc exp run -S train.lr=X`), old commit vs new.

For each revision this builds a fresh project from `git archive <rev>` (git + DVC initialised,
`data.source` pointed at the CIFAR-10 copy), runs the whole pipeline once and commits it, as a
user does before experimenting. Then the two projects take turns at `dvc exp run -S train.lr=X`
(a new lr each time, so nothing comes from the run cache), and the script timestamps DVC's
"Running stage" lines as they stream: a stage's time runs from its line to the next one, the
last stage's to the end of the command, and "dvc before train" is everything from the command's
start to the train stage. "outside the epoch loop" is the command's wall time minus the train
stage's epoch loop (metrics/timings/train.json's epoch_loop_seconds, per-epoch validation
included; train_seconds in revisions before bbf3d56, where it meant the same). Then one more
experiment per project with every warm stage process (visionpipe.warm) stopped first, as in a
session's first experiment. Then, per project, `dvc repro` with nothing to do, and a revisit of
the first lr (`dvc exp run -S train.lr=<first>`), which DVC's run cache restores.

Each revision runs with the Python of its own install (`--old-python`, `--new-python`; default
this one): an install change, such as bytecode compiled at install, shows only that way. Without
`--old` only the new revision is measured; `--new .` takes this checkout's files as they are, for
a machine that has the working tree but no git history (a lent GPU machine).

    uv run python bench/stage_times.py --old 8989bb0 --new HEAD --repeats 3 \
        --old-python /tmp/venv-old/bin/python
"""

from __future__ import annotations

import argparse
import functools
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
    announce_machine,
    busy_note,
    machine_line,
    result_name,
    update_results_md,
    write_json_result,
)

NAME = "stage_times"
STAGES = ("train", "evaluate", "export", "predict")
RUNNING = re.compile(r"Running stage '(\w+)'")
COLD = "outside the epoch loop, no warm process running"
# What a project is, for `--new .`: the files `git archive` gives a revision's project.
PROJECT_FILES = (
    *("dvc.yaml", "params.yaml", "pyproject.toml", ".gitignore", ".dvcignore"),
    *(".dvc/config", ".dvc/.gitignore"),  # DVC's settings: Hydra composition is on
)
PROJECT_DIRS = ("conf", "stages", "src", "plots_template")


@functools.cache
def _python_dir(python: str) -> str:
    """A folder whose `python` runs `python`: dvc.yaml's stages run `python`, and the folder an
    interpreter lives in may hold none by that name (/usr/bin/python3 alone) or another one."""
    folder = Path(tempfile.mkdtemp(prefix="stage-times-python-"))
    (folder / "python").write_text(f'#!/bin/sh\nexec "{python}" "$@"\n')
    (folder / "python").chmod(0o755)
    return str(folder)


def _env(python: str) -> dict[str, str]:
    """The environment a project's commands run in: its Python first on PATH, for the stages."""
    return {**os.environ, "PATH": f"{_python_dir(python)}{os.pathsep}{os.environ['PATH']}"}


def _run(cmd: list[str], cwd: Path, python: str = sys.executable, **kw: Any) -> str:
    proc = subprocess.run(cmd, cwd=cwd, env=_env(python), capture_output=True, text=True, **kw)
    if proc.returncode:
        raise SystemExit(f"{' '.join(cmd)} failed in {cwd}:\n{proc.stdout[-3000:]}{proc.stderr}")
    return proc.stdout


def use_recipe(project: Path, recipe: str, epochs: int) -> None:
    """Compose `recipe` into params.yaml by default, at `epochs` epochs: a recipe is composed
    after conf/config.yaml, so its own train.epochs is the one to change."""
    conf = project / "conf" / "config.yaml"
    data = yaml.safe_load(conf.read_text())
    data["defaults"] = [
        {"recipe": recipe} if isinstance(d, dict) and "recipe" in d else d for d in data["defaults"]
    ]
    data["recipe"] = recipe
    conf.write_text(yaml.safe_dump(data, sort_keys=False, allow_unicode=True))
    path = project / "conf" / "recipe" / f"{recipe}.yaml"
    header, _, body = path.read_text().partition("\n")  # "# @package _global_": Hydra's
    values = yaml.safe_load(body) or {}
    if "epochs" in values.get("train", {}):
        values["train"]["epochs"] = epochs
        path.write_text(f"{header}\n{yaml.safe_dump(values, sort_keys=False)}")


def make_project(
    rev: str, dest: Path, source: Path, epochs: int, python: str, recipe: str = "tutorial"
) -> Path:
    """A fresh clone-like project of `rev` with data.source, the recipe and train.epochs set,
    run once."""
    _project_files(rev, dest)
    _run(["git", "init", "-q", "-b", "main"], dest)
    settings = {"data": {"source": str(source)}, "train": {"epochs": epochs}}
    conf = dest / "conf" / "config.yaml"
    target = conf if conf.is_file() else dest / "params.yaml"  # Hydra layout, or params.yaml
    data = yaml.safe_load(target.read_text())
    for section, values in settings.items():
        data[section].update(values)
    target.write_text(yaml.safe_dump(data, sort_keys=False, allow_unicode=True))
    if recipe != "tutorial":
        use_recipe(dest, recipe, epochs)
    if conf.is_file():
        env_src = f"PYTHONPATH={dest / 'src'}"
        _run(["env", env_src, python, "-m", "visionpipe.cli", "params"], dest, python)
    _run(["git", "add", "-A"], dest)
    _run(["git", "commit", "-qm", "project"], dest)
    _run([python, "-m", "dvc", "repro"], dest, python, timeout=3600)
    _run(["git", "add", "-A"], dest)
    _run(["git", "commit", "-qm", "baseline run"], dest)
    return dest


def _project_files(rev: str, dest: Path) -> None:
    """`rev`'s project in `dest`: a revision's by `git archive`, or this checkout's for `.`."""
    if rev == ".":
        ignore = shutil.ignore_patterns("__pycache__", "*.egg-info")
        for name in PROJECT_DIRS:
            shutil.copytree(REPO_ROOT / name, dest / name, ignore=ignore)
        for name in PROJECT_FILES:
            (dest / name).parent.mkdir(exist_ok=True)
            shutil.copy2(REPO_ROOT / name, dest / name)
        return
    dest.mkdir(parents=True)
    tar_path = dest.parent / f"{dest.name}.tar"
    subprocess.run(["git", "archive", "-o", str(tar_path), rev], cwd=REPO_ROOT, check=True)
    with tarfile.open(tar_path) as tar:
        tar.extractall(dest, filter="data")
    tar_path.unlink()


def timed_experiment(project: Path, lr: float, python: str) -> dict[str, float]:
    """One `dvc exp run -S train.lr=<lr>`, timed stage by stage from its streamed output."""
    env = _env(python)
    cmd = [python, "-m", "dvc", "exp", "run", "-S", f"train.lr={lr}"]
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


def stop_warm_processes() -> None:
    """End every warm stage process (visionpipe.warm), so that the next torch stage starts one
    and waits for its imports, as the first experiment of a session does."""
    import psutil

    for proc in psutil.process_iter(["cmdline"]):
        cmd = proc.info["cmdline"] or []
        if "visionpipe.warm" in cmd and "--serve" in cmd:
            proc.terminate()
            proc.wait(10)


def timed_dvc(project: Path, python: str, *args: str) -> float:
    """Wall seconds of one DVC command in `project`; it must run no stage."""
    started = time.perf_counter()
    out = _run([python, "-m", "dvc", *args], project, python)
    seconds = time.perf_counter() - started
    if "Running stage" in out:
        raise SystemExit(f"`dvc {' '.join(args)}` ran a stage in {project}:\n{out[-2000:]}")
    return seconds


def report(info: dict[str, Any], args: argparse.Namespace, runs: dict[str, list[dict]]) -> str:
    rows = ["dvc before train", *STAGES, "train epoch loop", "outside the epoch loop", "total"]
    revs = {"old": args.old, "new": args.new}
    lines = [
        f"## Stage wall times of an lr experiment (`bench/{NAME}.py`)",
        "",
        f"Machine: {machine_line(info)}.",
        f"Command: `uv run python bench/{NAME}.py"
        + (f" --old {args.old}" if args.old else "")
        + f" --new {args.new} --repeats {args.repeats} --epochs {args.epochs}"
        + (f" --recipe {args.recipe}" if args.recipe != "tutorial" else "")
        + "".join(
            f" --{w}-python {getattr(args, w + '_python')}"
            for w in runs
            if getattr(args, w + "_python") != sys.executable
        )
        + "`",
        "",
        f"Each revision as a fresh project on {args.zip.name}, recipe {args.recipe} with "
        f"train.epochs={args.epochs}, run "
        "once and committed; then `dvc exp run -S train.lr=X` with a new lr each time, the "
        f"projects taking turns, {args.repeats} runs each (medians in seconds). A stage's time "
        "runs from DVC's 'Running stage' line to the next (so it includes DVC's own work "
        "around it); the train stage's time includes its epoch loop, shown on its own below.",
        "",
        "Torch stages that run through `visionpipe.warm` fork from a warm process that a "
        "project's first run started; for the row 'no warm process running' every warm process "
        "was stopped before one more experiment (a session's first), once per project.",
        "",
        "Then, in each project, `dvc repro` with nothing to do and `dvc exp run -S train.lr=X` "
        "back to the first lr (restored from the run cache), each as often.",
        "",
        "| | " + " | ".join(f"{v} ({revs[v]})" for v in runs) + " |",
        "|---|" + "---:|" * len(runs),
    ]
    for r in (*rows, COLD, "dvc repro, nothing to do", "revisit of the first lr (run cache)"):
        lines.append(f"| {r} | " + " | ".join(med_of(runs, v, r) for v in runs) + " |")
    lines += ["", *busy_note(info)]
    return "\n".join(lines).rstrip()


def med_of(runs: dict[str, list[dict]], which: str, row: str) -> str:
    """The median of `row` over the runs that have it; "-" where none has (a stage DVC did not
    run: its deps were unchanged)."""
    values = [run[row] for run in runs[which] if row in run]
    return f"{statistics.median(values):.1f}" if values else "-"


def take_turns(projects: dict[str, Path], python: dict[str, str], repeats: int) -> dict:
    """`repeats` lr experiments per project, then as many no-op repros and run-cache revisits,
    the projects alternating so that a change in the machine's load hits both."""
    runs: dict[str, list[dict]] = {which: [] for which in projects}
    turns = (list(projects), list(projects)[::-1])
    lr, first, last = 0.02, {}, {}
    for i in range(repeats):
        for which in turns[i % 2]:
            lr += 0.001
            first.setdefault(which, round(lr, 4))
            last[which] = round(lr, 4)
            runs[which].append(timed_experiment(projects[which], round(lr, 4), python[which]))
            print(which, json.dumps({k: round(v, 1) for k, v in runs[which][-1].items()}))
    for which in projects:
        stop_warm_processes()
        lr += 0.001
        cold = timed_experiment(projects[which], round(lr, 4), python[which])
        runs[which].append({COLD: cold["outside the epoch loop"]})
        print(which, "no warm process:", round(cold["outside the epoch loop"], 1))
    for i in range(repeats):
        for which in turns[i % 2]:
            project, exe = projects[which], python[which]
            noop = timed_dvc(project, exe, "repro")
            revisit = timed_dvc(project, exe, "exp", "run", "-S", f"train.lr={first[which]}")
            # Back to the last lr (also in the run cache), so the next revisit restores again.
            timed_dvc(project, exe, "exp", "run", "-S", f"train.lr={last[which]}")
            runs[which].append(
                {"dvc repro, nothing to do": noop, "revisit of the first lr (run cache)": revisit}
            )
            print(which, json.dumps({k: round(v, 2) for k, v in runs[which][-1].items()}))
    return runs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--old", help="revision before the change (default: none, only --new)")
    parser.add_argument(
        "--new", default="HEAD", help="revision after it (default HEAD; '.': this checkout)"
    )
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=1, help="train.epochs of every run")
    parser.add_argument(
        "--recipe", default="tutorial", help="the recipe of conf/recipe/ to run (default tutorial)"
    )
    parser.add_argument("--zip", type=Path, default=DEFAULT_CIFAR_ZIP)
    for which in ("old", "new"):
        parser.add_argument(
            f"--{which}-python",
            default=sys.executable,
            help=f"the Python of the {which} revision's install (default: this one)",
        )
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    info = announce_machine()
    with tempfile.TemporaryDirectory(prefix="stage-times-") as tmp:
        python = {"old": args.old_python, "new": args.new_python}
        zip_path = args.zip.resolve()
        projects = {
            which: make_project(
                rev, Path(tmp) / which, zip_path, args.epochs, python[which], args.recipe
            )
            for which, rev in (("old", args.old), ("new", args.new))
            if rev
        }
        runs = take_turns(projects, python, args.repeats)
        shutil.rmtree(tmp, ignore_errors=True)
    body = report(info, args, runs)
    print("\n" + body)
    if not args.no_write:
        payload = {"benchmark": NAME, "machine": info, "old": args.old, "new": args.new, **runs}
        name = result_name(NAME, info)  # a GPU machine's section never replaces the CPU host's
        print(f"wrote {write_json_result(name, payload)} and {update_results_md(name, body)}")


if __name__ == "__main__":
    main()
