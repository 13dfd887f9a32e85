"""Accuracy and train time of each named recipe (conf/recipe/<name>.yaml, `-S recipe=<name>`).

The recipes themselves live in conf/recipe/: this script composes the same params.yaml that
`uv run dvc exp run -S recipe=<name>` writes (visionpipe.config.compose, DVC's Hydra composition)
with `data.source` pointed at the local dataset copy, copies the project's `stages/` and `src/`
into a work folder, and runs the stage scripts download -> preprocess -> train -> evaluate as
plain `python stages/<name>.py` (no DVC needed, so it runs on a bare GPU machine too). It then
reads the stages' own metrics: test accuracy (dvclive/eval/metrics.json, with the model's TTA)
and, from metrics/timings/train.json, the train stage's train_seconds (the steps alone) and
validation_seconds (per-epoch validation), both inside the epoch loop, after data loading, model
building and the whitening init.

    uv run python bench/recipes.py fast            # one recipe
    uv run python bench/recipes.py --all           # every recipe (hours on a 2-core CPU)
    uv run python bench/recipes.py --from fast=.   # record a finished `dvc exp run` of it

`--from NAME=DIR` records a run already made (say `dvc exp run -S recipe=fast`, whose workspace
holds params.yaml and the metrics) instead of training again; it refuses a folder whose
params.yaml is not that recipe.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml
from benchlib import (
    DEFAULT_CIFAR_ZIP,
    REPO_ROOT,
    announce_machine,
    machine_line,
    update_results_md,
    write_json_result,
)

from visionpipe.config.compose import compose

NAME = "recipes"
STAGES = ("download", "preprocess", "train", "evaluate")
DEFAULT_HYMENOPTERA_ZIP = DEFAULT_CIFAR_ZIP.with_name("hymenoptera_data.zip")

# What each recipe is, in a line for the results table; its values are in conf/recipe/.
RECIPES: dict[str, str] = {
    "tutorial": "the tutorial's defaults",
    "fast": "airbench94: batch 1024, nesterov SGD, triangle lr, lookahead, BN-bias lr x64, "
    "label smoothing 0.2, reflect-crop 2 + alternating flip, TTA 2, all 50,000 train images",
    "resnet18": "5 epochs, batch 256, nesterov SGD one-cycle lr 0.2, wd 5e-4, label smoothing "
    "0.1, crop 4 + flip",
    "alexnet": "5 epochs, batch 64, AdamW lr 1e-3 wd 0.05, cosine with half an epoch of "
    "warmup, crop 4 + flip (SGD lr 0.01 momentum 0.9 was still near chance after 2 epochs)",
    "vgg16": "1 epoch (CPU budget), batch 64, AdamW lr 1e-4 wd 0.05, cosine with a fifth of an "
    "epoch of warmup, crop 4 + flip; from scratch, no ImageNet weights offline",
    "hymenoptera": "ants/bees from scratch at 64 px: tutorial CNN + ReLU + BatchNorm, 25 "
    "epochs, batch 16, momentum SGD cosine, wd 0.005, label smoothing 0.1, crop 8 + flip",
}


def recipe_params(name: str, source: str | None) -> dict[str, Any]:
    """params.yaml as `dvc exp run -S recipe=<name>` composes it, with data.source set."""
    params = compose([f"recipe={name}"], REPO_ROOT / "conf")
    params["data"]["source"] = source
    return params


def read_result(name: str, work: Path) -> dict[str, Any]:
    """The recipe's figures from a finished run's metrics files in `work`."""
    train_metrics = json.loads((work / "metrics/train.json").read_text())
    timings = json.loads((work / "metrics/timings/train.json").read_text())
    evaluation = json.loads((work / "dvclive/eval/metrics.json").read_text())
    return {
        "recipe": name,
        "what": RECIPES[name],
        "test_accuracy": evaluation["test_acc"],
        # Revisions before bbf3d56 record train_seconds as the whole epoch loop, validation
        # included, and no validation_seconds: such a run shows no validation figure.
        "train_seconds": timings["train_seconds"],
        "validation_seconds": timings.get("validation_seconds"),
        "epoch_loop_seconds": timings.get("epoch_loop_seconds", timings["train_seconds"]),
        "device": timings["device"],
        "epochs_run": train_metrics["epochs_run"],
    }


def recorded_run(name: str, work: Path) -> dict[str, Any]:
    """A finished run in `work`, checked to be this recipe (any data.source)."""
    params = yaml.safe_load((work / "params.yaml").read_text())
    expected = recipe_params(name, params.get("data", {}).get("source"))
    params.pop("launch", None), expected.pop("launch", None)  # where it ran, not what
    if params != expected:
        raise SystemExit(f"{work}/params.yaml is not the {name!r} recipe: refusing to record it")
    return {**read_result(name, work), "recorded_from": str(work.resolve())}


def run_recipe(name: str, zip_path: Path, work: Path) -> dict[str, Any]:
    shutil.copytree(REPO_ROOT / "stages", work / "stages")
    shutil.copytree(REPO_ROOT / "src", work / "src")
    params = recipe_params(name, str(zip_path))
    (work / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    env = {**os.environ, "PYTHONPATH": str(work / "src"), "PYTHONUNBUFFERED": "1"}
    stage_seconds = {}
    for stage in STAGES:
        print(f"[{name}] {stage} ...", flush=True)
        t0 = time.perf_counter()
        subprocess.run([sys.executable, f"stages/{stage}.py"], cwd=work, env=env, check=True)
        stage_seconds[stage] = round(time.perf_counter() - t0, 1)
    return {**read_result(name, work), "stage_seconds": stage_seconds}


def report(info: dict[str, Any], results: list[dict[str, Any]], command: str) -> str:
    lines = [
        f"## Recipes: accuracy and train time per model (`bench/{NAME}.py`)",
        "",
        f"Machine: {machine_line(info)}.",
        f"Command: `{command}`",
        "",
        "Each recipe (conf/recipe/<name>.yaml) ran as the stage scripts (download, preprocess, "
        "train, evaluate) on cifar10-jpeg.zip (hymenoptera: hymenoptera_data.zip), by this "
        "script or (`--from`) by `dvc exp run -S recipe=<name>`, its params.yaml checked to be "
        "the recipe. Test accuracy: dvclive/eval/metrics.json (10,000 CIFAR-10 test images or "
        "the 153 ants/bees val photos, with the model's TTA). Train time: the train stage's "
        "steps (metrics/timings/train.json's train_seconds); validation: its per-epoch "
        "validation (validation_seconds), the rest of the epoch loop.",
        "",
        "| recipe | device | epochs | test accuracy | train time | validation | the recipe |",
        "|---|---|---:|---:|---:|---:|---|",
    ]
    for r in results:
        val = r.get("validation_seconds")
        lines.append(
            f"| `{r['recipe']}` | {r['device']} | {r['epochs_run']} | "
            f"{100 * r['test_accuracy']:.2f}% | {r['train_seconds']:.1f} s | "
            f"{'-' if val is None else f'{val:.1f} s'} | {r['what']} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("recipes", nargs="*", help=f"recipes to run: {', '.join(RECIPES)}")
    parser.add_argument("--all", action="store_true", help="run every recipe")
    parser.add_argument("--zip", type=Path, default=DEFAULT_CIFAR_ZIP, help="cifar10-jpeg.zip")
    parser.add_argument(
        "--hymenoptera-zip",
        type=Path,
        default=DEFAULT_HYMENOPTERA_ZIP,
        help="hymenoptera_data.zip, for the hymenoptera recipe",
    )
    parser.add_argument("--keep", type=Path, default=None, help="keep work folders under this")
    parser.add_argument(
        "--from",
        dest="runs",
        action="append",
        default=[],
        metavar="NAME=DIR",
        help="record the finished run of recipe NAME in DIR instead of training (repeatable)",
    )
    parser.add_argument(
        "--no-write", action="store_true", help="print only; leave RESULTS.md and results/ alone"
    )
    args = parser.parse_args()
    names = list(RECIPES) if args.all else args.recipes
    recorded = dict(run.split("=", 1) for run in args.runs)
    unknown = [n for n in [*names, *recorded] if n not in RECIPES]
    if unknown or not (names or recorded):
        parser.error(f"name recipes ({', '.join(RECIPES)}), --all or --from; unknown: {unknown}")
    if names and not args.zip.is_file():
        parser.error(f"{args.zip} not found: give the CIFAR-10 JPEG zip with --zip")
    info = announce_machine()
    results = [recorded_run(name, Path(work)) for name, work in recorded.items()]
    for name in names:
        data = (args.hymenoptera_zip if name == "hymenoptera" else args.zip).resolve()
        if args.keep:
            work = args.keep / name
            shutil.rmtree(work, ignore_errors=True)
            work.mkdir(parents=True)
            results.append(run_recipe(name, data, work))
        else:
            with tempfile.TemporaryDirectory(prefix=f"recipe-{name}-") as tmp:
                results.append(run_recipe(name, data, Path(tmp)))
        print(json.dumps(results[-1], indent=2))
    command = "uv run python bench/recipes.py " + " ".join(
        [*(["--all"] if args.all else names), *(f"--from {run}" for run in args.runs)]
    )
    body = report(info, results, command)
    print("\n" + body)
    if not args.no_write:
        # One section per kind of device, so a GPU run does not replace the CPU figures.
        name = f"{NAME}_{'cuda' if info['gpu'] else 'cpu'}"
        payload = {"benchmark": name, "machine": info, "results": results}
        print(f"wrote {write_json_result(name, payload)} and {update_results_md(name, body)}")


if __name__ == "__main__":
    main()
