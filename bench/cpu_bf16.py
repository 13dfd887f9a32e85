"""bf16 autocast vs fp32 on this CPU, side by side: a train step and a scoring batch of the tutorial
CNN and of `fast`, timed alternately in one process, and what `precision.cpu_computes_bf16`
decides here. `train.amp` and `evaluate.amp` use bf16 on a CPU only where it decides so; this
is the measurement that decision rests on, to re-run on each kind of CPU.

    uv run python bench/cpu_bf16.py --repeats 5
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch
from benchlib import busy_note, machine_info, machine_line, publish, section_head

from visionpipe import precision
from visionpipe.models import build_model

NAME = "cpu_bf16"
# (model, what is timed, batch): the recipes' own batch sizes; scoring at evaluate's batch.
CASES = [
    ("tutorial_cnn", "train", 64),
    ("tutorial_cnn", "score", 500),
    ("fast", "train", 1024),
    ("fast", "score", 500),
]


def flags() -> dict[str, object]:
    """What the decision reads: the CPU's vendor and torch's checks for its bf16 instructions."""
    cpu = torch.cpu
    return {
        "vendor": precision.cpu_vendor(),
        "avx512_bf16": bool(getattr(cpu, "_is_avx512_bf16_supported", lambda: False)()),
        "amx": bool(getattr(cpu, "_is_amx_tile_supported", lambda: False)()),
        "cpu_computes_bf16": precision.cpu_computes_bf16(),
    }


def step_fn(arch: str, kind: str, batch: int, bf16: bool) -> Callable[[], None]:
    """One train step (SGD) or one scoring batch, channels-last as the stages run them."""
    torch.manual_seed(0)
    model = build_model(arch, 10, 32).to(memory_format=torch.channels_last)
    images = torch.rand(batch, 3, 32, 32).to(memory_format=torch.channels_last)
    labels = torch.randint(0, 10, (batch,))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    cast = torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16)

    def train() -> None:
        with cast:
            loss = torch.nn.functional.cross_entropy(model(images), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    def score() -> None:
        with torch.inference_mode(), cast:
            model(images).float().softmax(1)

    model.train(kind == "train")
    return train if kind == "train" else score


def time_case(arch: str, kind: str, batch: int, repeats: int, steps: int) -> dict[str, float]:
    """Median ms per step of fp32 and bf16, alternating; 3 untimed steps first."""
    runs = {name: step_fn(arch, kind, batch, name == "bf16") for name in ("fp32", "bf16")}
    samples: dict[str, list[float]] = {name: [] for name in runs}
    for run in runs.values():
        for _ in range(3):
            run()
    for _ in range(repeats):
        for name, run in runs.items():
            start = time.perf_counter()
            for _ in range(steps):
                run()
            samples[name].append(1000 * (time.perf_counter() - start) / steps)
    return {name: statistics.median(s) for name, s in samples.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5, help="timed rounds per precision")
    parser.add_argument("--steps", type=int, default=5, help="steps per timed round")
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    info, found = machine_info(), flags()
    print(f"machine: {machine_line(info)}; {found}")
    rows, results = [], []
    for arch, kind, batch in CASES:
        ms = time_case(arch, kind, batch, args.repeats, args.steps)
        results.append({"model": arch, "timed": kind, "batch": batch, **ms})
        ratio = ms["bf16"] / ms["fp32"]
        rows.append(f"| `{arch}` | {kind} | {batch} | {ms['fp32']:.1f} | {ms['bf16']:.1f} | "
                    f"{ratio:.2f}x |")  # fmt: skip
        print(rows[-1], flush=True)
    lines = [
        *section_head("bf16 autocast vs fp32 on a CPU", NAME, info),
        f"CPU: vendor {found['vendor']}, AVX512-BF16 {found['avx512_bf16']}, AMX "
        f"{found['amx']}; `precision.cpu_computes_bf16()` here: {found['cpu_computes_bf16']}. "
        f"Median ms per step over {args.repeats} alternating rounds of {args.steps} steps "
        "(channels-last, random 32 px images; a train step is forward, backward and SGD):",
        "",
        "| model | timed | batch | fp32 ms | bf16 ms | bf16 / fp32 |",
        "|---|---|---:|---:|---:|---:|",
        *rows,
        *busy_note(info),
    ]
    payload = {"machine": info, "cpu_flags": found, "args": vars(args), "results": results}
    publish(NAME, "\n".join(lines), payload, not args.no_write)


if __name__ == "__main__":
    main()
