"""Where a `fast` train step spends its time: torch.profiler over N steps of the train stage's loop.

Run from a folder holding a preprocessed CIFAR-10 (`data/processed/`) and a params.yaml of the
`fast` recipe; the loop is the train stage's own (`train.build_training_model`, `make_loop`,
`train_epoch`), so pointing PYTHONPATH at another checkout's src/ profiles that version:

    cd /tmp/work && PYTHONPATH=/tmp/visionpipe-old/src python /path/to/bench/profile_fast.py

It prints the ops with the most self CPU time, a warm-up of a few steps excluded, and writes them
as JSON (`--json`). `--compare OLD.json NEW.json` puts two such profiles side by side in
RESULTS.md (section `fast_profile`).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import torch
from torch.profiler import ProfilerActivity, profile

from visionpipe import distributed, memory, split_tensors, train
from visionpipe.config.params import load_params

NAME = "fast_profile"


def profile_steps(steps: int, warmup: int, top: int) -> dict[str, Any]:
    """Profile `steps` train steps after `warmup` untimed ones; the top ops by self CPU time."""
    params = load_params()
    device = torch.device("cpu")
    # As train.run does before training (revisions before 9856bd9 have no such call).
    keep = getattr(memory, "keep_freed_memory", None)
    if keep is not None:
        keep()
    torch.manual_seed(params.train.seed)
    splits = split_tensors.load_training_data(device)
    ddp = distributed.Dist()
    model = train.build_training_model(params, splits, device, ddp)
    loop = train.make_loop(model, splits.train_x, splits.train_y, params.train, device, ddp)
    per_epoch = loop.batches.steps_per_epoch
    train.train_epoch(loop, 0, range(warmup)).item()
    done, epoch = warmup, 0
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        t0 = time.perf_counter()
        while done < warmup + steps:
            first = done % per_epoch
            last = min(per_epoch, first + warmup + steps - done)
            train.train_epoch(loop, epoch, range(first, last)).item()
            done += last - first
            epoch += last == per_epoch
        seconds = time.perf_counter() - t0
    events = prof.key_averages()
    total = sum(e.self_cpu_time_total for e in events)
    ranked = sorted(events, key=lambda e: e.self_cpu_time_total, reverse=True)[:top]
    return {
        "steps": steps,
        "batch_size": params.train.batch_size,
        "seconds": seconds,
        "ms_per_step": 1000 * seconds / steps,
        "top": [
            {
                "op": e.key,
                "calls_per_step": e.count / steps,
                "ms_per_step": e.self_cpu_time_total / 1000 / steps,
                "share": e.self_cpu_time_total / total,
            }
            for e in ranked
        ],
    }


def compare(old: dict[str, Any], new: dict[str, Any], files: list[Path]) -> str:
    """RESULTS.md section: the top ops of two profiles, ms per step side by side."""
    from benchlib import machine_line

    rows = {r["op"]: [r, None] for r in old["top"]}
    for r in new["top"]:
        rows.setdefault(r["op"], [None, None])[1] = r

    def cell(r: dict[str, Any] | None) -> str:
        return "-" if r is None else f"{r['ms_per_step']:.1f} ({100 * r['share']:.1f}%)"

    lines = [
        "## `fast` step profile, before and after (`bench/profile_fast.py`)",
        "",
        f"Machine: {machine_line(new['machine'])} (old profile: {old['machine']['date']}).",
        f"Command: `python bench/profile_fast.py --steps {new['steps']} --json ...` in a folder "
        "with the preprocessed CIFAR-10 copy and the fast recipe's params.yaml, with "
        "PYTHONPATH at each version's src/; then `--compare " + " ".join(map(str, files)) + "`.",
        "",
        f"{old['steps']} / {new['steps']} train steps at batch {new['batch_size']} after 3 "
        "warm-up steps, torch.profiler on (CPU), the ops with the most self CPU time: ms per "
        "step (share of all self time). A dash: not among that version's top ops.",
        "",
        f"| op | old: {old['ms_per_step']:.0f} ms/step | new: {new['ms_per_step']:.0f} ms/step |",
        "|---|---:|---:|",
    ]
    ranked = sorted(rows.items(), key=lambda kv: -max(r["ms_per_step"] for r in kv[1] if r))
    lines += [f"| `{op}` | {cell(o)} | {cell(n)} |" for op, (o, n) in ranked]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=100, help="profiled steps")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps before them")
    parser.add_argument("--top", type=int, default=15, help="ops to list")
    parser.add_argument("--json", type=Path, default=None, help="write the result here")
    parser.add_argument(
        "--compare", nargs=2, type=Path, metavar=("OLD", "NEW"), help="publish two profiles"
    )
    args = parser.parse_args()
    if args.compare:
        from benchlib import publish

        old, new = (json.loads(f.read_text()) for f in args.compare)
        payload = {"old": old, "new": new}
        publish(NAME, compare(old, new, args.compare), payload, write=True)
        return
    from benchlib import machine_info

    result = {**profile_steps(args.steps, args.warmup, args.top), "machine": machine_info()}
    print(f"{result['steps']} steps, {result['ms_per_step']:.0f} ms/step (profiler on)")
    for row in result["top"]:
        print(
            f"{row['ms_per_step']:9.1f} ms/step {100 * row['share']:5.1f}% "
            f"{row['calls_per_step']:6.1f} calls/step  {row['op']}"
        )
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
