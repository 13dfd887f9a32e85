"""Where a `fast` train step spends its time: torch.profiler over N steps of the train stage's loop.

Run from a folder holding a preprocessed CIFAR-10 (`data/processed/`) and a params.yaml of the
`fast` recipe; the loop is the train stage's own (`train.build_training_model`, `make_loop`,
`train_epoch`), so pointing PYTHONPATH at another checkout's src/ profiles that version:

    cd /tmp/work && PYTHONPATH=/tmp/visionpipe-old/src python /path/to/bench/profile_fast.py

It prints the ops with the most self CPU time, a warm-up of a few steps excluded, and writes them
as JSON (`--json`), which `fast_train.py` puts into RESULTS.md beside the train times.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import torch
from torch.profiler import ProfilerActivity, profile

from visionpipe import data, distributed, train
from visionpipe.config import load_params


def profile_steps(steps: int, warmup: int, top: int) -> dict[str, Any]:
    """Profile `steps` train steps after `warmup` untimed ones; the top ops by self CPU time."""
    params = load_params()
    device = torch.device("cpu")
    torch.manual_seed(params.train.seed)
    splits = data.load_training_data(device)
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=100, help="profiled steps")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps before them")
    parser.add_argument("--top", type=int, default=15, help="ops to list")
    parser.add_argument("--json", type=Path, default=None, help="write the result here")
    args = parser.parse_args()
    result = profile_steps(args.steps, args.warmup, args.top)
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
