"""What fixing the resize's pass order costs: Pillow's one-call resize against one call per axis.

`images.resize_center_crop` resizes in two calls, rows first, so that its bytes do not depend on
the order Pillow picks for its two passes (Pillow 13 runs some tall images columns first). This
times both on photo shapes at the sizes preprocess and predict use, alternating, in one process,
and counts how many bytes differ (only tall images, where Pillow goes columns first).

    uv run python bench/resize_order.py [--repeats 200] [--no-write]
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
from benchlib import announce_machine, busy_note, publish, section_head
from PIL import Image

from visionpipe.images import bilinear

NAME = "resize_order"
# (width, height, model size): phone photos landscape and portrait, the ants/bees set's usual
# 500x375, a tall web image, and the shorter side to 32, 64 and 224.
SHAPES = [
    (4032, 3024, 224),
    (3024, 4032, 224),
    (500, 375, 64),
    (375, 500, 64),
    (600, 1400, 64),
    (500, 375, 32),
]


def _target(w: int, h: int, size: int) -> tuple[int, int]:
    scale = size / min(w, h)
    return max(size, round(w * scale)), max(size, round(h * scale))


def _median_ms(fn: object, img: Image.Image, target: tuple[int, int], n: int) -> float:
    times = []
    for _ in range(n):
        start = time.perf_counter()
        fn(img, target)  # type: ignore[operator]
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=200)
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    info = announce_machine()

    def one_call(img: Image.Image, target: tuple[int, int]) -> Image.Image:
        return img.resize(target, Image.Resampling.BILINEAR, reducing_gap=None)

    rng = np.random.default_rng(0)
    rows, payload = [], []
    for w, h, size in SHAPES:
        img = Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
        target = _target(w, h, size)
        ms: dict[str, list[float]] = {"one call": [], "per axis": []}
        for _ in range(5):  # alternating rounds: a busy moment hits both
            ms["one call"].append(_median_ms(one_call, img, target, args.repeats // 5))
            ms["per axis"].append(_median_ms(bilinear, img, target, args.repeats // 5))
        one, per_axis = (statistics.median(v) for v in ms.values())
        differ = int((np.asarray(one_call(img, target)) != np.asarray(bilinear(img, target))).sum())
        total = target[0] * target[1] * 3
        rows.append(
            f"| {w}x{h} | {target[0]}x{target[1]} | {one:.3f} | {per_axis:.3f} |"
            f" {per_axis / one:.2f}x | {differ:,} of {total:,} |"
        )
        payload.append({"shape": [w, h], "target": list(target), "ms": ms, "bytes_differ": differ})
        print(rows[-1], flush=True)
    lines = [
        *section_head("The resize's pass order fixed: one call per axis", NAME, info),
        "Pillow's BILINEAR resize of random RGB pixels to the size preprocess and predict use"
        " (shorter side to the model's size) before the centre crop: *one call*, as Pillow picks"
        " its pass order; *per axis*, `images.bilinear`, rows then columns, as the pipeline does."
        f" Median of 5 alternating rounds of {args.repeats // 5} calls each.",
        "",
        "| image | resized to | one call ms | per axis ms | per axis / one call | bytes that"
        " differ |",
        "|---|---|---:|---:|---:|---:|",
        *rows,
        *busy_note(info),
    ]
    publish(NAME, "\n".join(lines), {"machine": info, "args": vars(args), "shapes": payload},
            not args.no_write)  # fmt: skip


if __name__ == "__main__":
    main()
