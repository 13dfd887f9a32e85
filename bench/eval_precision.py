"""The evaluate stage's scoring in strict fp32 against `evaluate.amp` (bf16 where native), on
trained models: seconds, and how far the reported figures move.

For each model.pt, scores the test split of PROJECT (a project with data/processed) the way the
evaluate stage does (`inference.predict_logits`, its batch size, on the CPU), in fp32 and in the
precision `evaluate.amp` picks here, the two taking turns for `--rounds` rounds. Reports the
test loss and accuracy of each, the share of images whose top-1 class differs, the largest logit
difference, and the median seconds.

    uv run python bench/eval_precision.py PROJECT MODEL.pt [MODEL.pt ...] --rounds 2
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path
from typing import Any

import torch
from benchlib import busy_note, machine_info, machine_line, update_results_md, write_json_result

from visionpipe import split_tensors
from visionpipe.inference import eval_batch_size, loss_and_accuracy, predict_logits
from visionpipe.modelfile import load_model
from visionpipe.precision import autocast_dtype, precision_name

NAME = "eval_precision"
CPU = torch.device("cpu")


def score(model_path: Path, rounds: int) -> dict[str, Any]:
    model, info = load_model(model_path)
    images, labels = split_tensors.load_split("test", in_memory=False)
    batch = eval_batch_size(info.params["train"]["batch_size"], model.views, CPU)
    amp = autocast_dtype(CPU, True)
    seconds: dict[str, list[float]] = {"fp32": [], "amp": []}
    logits: dict[str, torch.Tensor] = {}
    for _ in range(rounds):
        for key, dtype in (("fp32", None), ("amp", amp)):
            start = time.perf_counter()
            logits[key] = predict_logits(model, images, CPU, batch, amp=dtype)
            seconds[key].append(time.perf_counter() - start)
    loss32, acc32 = loss_and_accuracy(logits["fp32"], labels)
    loss_amp, acc_amp = loss_and_accuracy(logits["amp"], labels)
    flips = (logits["fp32"].argmax(1) != logits["amp"].argmax(1)).float().mean().item()
    return {
        "model": str(model_path),
        "recipe": info.params.get("recipe"),
        "epochs": info.params["train"]["epochs"],
        "amp": precision_name(amp),
        "images": len(labels),
        "fp32": {"loss": loss32, "acc": acc32, "seconds": seconds["fp32"]},
        "amp_scores": {"loss": loss_amp, "acc": acc_amp, "seconds": seconds["amp"]},
        "top1_differs": flips,
        "max_logit_diff": (logits["fp32"] - logits["amp"]).abs().max().item(),
    }


def row(r: dict[str, Any]) -> str:
    t32, tamp = (statistics.median(r[k]["seconds"]) for k in ("fp32", "amp_scores"))
    return (
        f"| {r['recipe']}, {r['epochs']} epochs | {r['fp32']['acc']:.4f} / {r['fp32']['loss']:.6f}"
        f" | {r['amp_scores']['acc']:.4f} / {r['amp_scores']['loss']:.6f}"
        f" | {r['amp_scores']['acc'] - r['fp32']['acc']:+.4f} | {r['top1_differs']:.2%}"
        f" | {r['max_logit_diff']:.2e} | {t32:.1f} / {tamp:.1f} s ({tamp / t32:.2f}x) |"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("project", type=Path, help="a project whose data/processed to score")
    parser.add_argument("models", type=Path, nargs="+", help="model.pt files to score")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    info = machine_info()
    models = [m.resolve() for m in args.models]
    os.chdir(args.project)  # the splits are read from ./data/processed, as the stages do
    results = [score(m, args.rounds) for m in models]
    amp = results[0]["amp"]
    body = "\n".join(
        [
            f"## Test scoring in fp32 vs `evaluate.amp` ({amp} here) (`bench/{NAME}.py`)",
            "",
            f"Machine: {machine_line(info)}.",
            f"Command: `uv run python bench/{NAME}.py {args.project} "
            f"{' '.join(map(str, args.models))} --rounds {args.rounds}`",
            f"Rounds: {args.rounds}, the two precisions taking turns; seconds are medians.",
            *busy_note(info),
            "",
            f"| model | fp32 acc / loss | {amp} acc / loss | accuracy change | top-1 differs "
            "| largest logit diff | seconds fp32 / amp |",
            "|---|---:|---:|---:|---:|---:|---:|",
            *(row(r) for r in results),
        ]
    )
    print(body)
    if not args.no_write:
        payload = {"machine": info, "results": results}
        print(f"wrote {write_json_result(NAME, payload)} and {update_results_md(NAME, body)}")


if __name__ == "__main__":
    main()
