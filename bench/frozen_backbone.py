"""Fine-tuning on frozen layers (`train.backbone_lr_scale: 0`) against training every layer: the
train stage's own loop (`train.make_loop`, `train.train_epoch`) over the same images, the two
taking turns, one epoch each per turn.

    uv run python bench/frozen_backbone.py --model resnet18 --size 64 --images 512 --repeats 3

The images are random uint8 pixels: a step's cost does not depend on what they show.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from benchlib import announce_machine, busy_note, publish, section_head

from visionpipe import train
from visionpipe.config.train import TrainConfig
from visionpipe.models import build_model

NAME = "frozen_backbone"


def epoch_seconds(
    model_name: str, size: int, x: torch.Tensor, y: torch.Tensor, scale: float
) -> float:
    """One epoch of the train stage's loop over (x, y) with train.backbone_lr_scale `scale`."""
    torch.manual_seed(0)
    model = build_model(model_name, 2, size)
    if scale == 0.0:
        model.freeze_backbone()
    cfg = TrainConfig(batch_size=32, backbone_lr_scale=scale, log_every=10_000)
    loop = train.make_loop(
        train.place_model(model, torch.device("cpu"), cfg), x, y, cfg, torch.device("cpu")
    )
    train.train_epoch(loop, 0, which=range(2))  # warm-up: the first steps allocate
    start = time.perf_counter()
    train.train_epoch(loop, 0)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="resnet18")
    parser.add_argument("--size", type=int, default=64, help="image side, px")
    parser.add_argument("--images", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    info = announce_machine()
    gen = torch.Generator().manual_seed(0)
    x = torch.randint(
        0, 256, (args.images, 3, args.size, args.size), dtype=torch.uint8, generator=gen
    )
    y = torch.arange(args.images) % 2
    times: dict[str, list[float]] = {"every layer (1)": [], "frozen (0)": []}
    for _ in range(args.repeats):
        for label, scale in (("every layer (1)", 1.0), ("frozen (0)", 0.0)):
            times[label].append(epoch_seconds(args.model, args.size, x, y, scale))
            print(f"  {label}: {times[label][-1]:.2f} s", flush=True)
    full, frozen = (statistics.median(t) for t in times.values())
    lines = [
        *section_head("Fine-tuning on frozen layers", NAME, info),
        f"One epoch of the train stage's loop (`{args.model}`, {args.size} px, {args.images} "
        "images, batch 32, SGD), `train.backbone_lr_scale` 1 and 0 taking turns, "
        f"{args.repeats} epochs each after two warm-up steps.",
        "",
        "| train.backbone_lr_scale | epoch, median | min | max |",
        "|---|---:|---:|---:|",
        *(
            f"| {k} | {statistics.median(t):.2f} s | {min(t):.2f} s | {max(t):.2f} s |"
            for k, t in times.items()
        ),
        "",
        f"Frozen: {full / frozen:.1f}x faster (backward stops at the classifier).",
        *busy_note(info),
    ]
    payload = {"machine": info, "args": vars(args), "seconds": times}
    publish(NAME, "\n".join(lines), payload, not args.no_write)


if __name__ == "__main__":
    main()
