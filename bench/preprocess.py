"""Preprocess speed and memory: this checkout vs commit 8989bb0, side by side.

Each run is the preprocess stage as DVC runs it: `python stages/preprocess.py` from the version's
own checkout, in a folder holding params.yaml and data/raw/<archive>, timed from start to exit,
with the peak resident memory of its processes sampled every 0.1 s. The two versions alternate,
the first one rotating, `--repeats` times on each dataset:

- cifar: the 60,000 CIFAR-10 JPEGs (cifar10-jpeg.zip) at 32 px. Target: at most 5 s here.
- photos: `--photos` generated 4000x3000 JPEGs (12 megapixels, quality 90, a quarter with an
  EXIF rotation, as phones write them; made once, untimed) at 224 px. Target: at least 5x faster.
- hymenoptera: the 398 real ant and bee photos at the imagefolder default of 64 px.

Afterwards it compares what the versions wrote: CIFAR arrays must be byte-identical; for the
photos the difference between draft-mode decoding (new) and a full decode + resize (old) is
measured per pixel value.

    git worktree add /tmp/visionpipe-old 8989bb0
    uv run python bench/preprocess.py --old /tmp/visionpipe-old
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from benchlib import (
    DEFAULT_CIFAR_ZIP,
    REPO_ROOT,
    announce_machine,
    busy_note,
    machine_line,
    publish,
    run_watched,
)
from PIL import Image, ImageChops, ImageDraw

NAME = "preprocess"
CIFAR_SECONDS = 5.0  # target: the 60,000 CIFAR-10 JPEGs, at most
PHOTO_SPEEDUP = 5.0  # target: old / new on 12-megapixel photos at 224 px, at least
DEFAULT_HYMENOPTERA = DEFAULT_CIFAR_ZIP.parent / "hymenoptera_data.zip"
SPLIT_NAMES = ("train", "val", "test")


def photo(rng: np.random.Generator, width: int = 4000, height: int = 3000) -> Image.Image:
    """A photo-like image: smooth colour fields, hard-edged shapes and sensor-like noise."""
    field = rng.integers(0, 256, (9, 12, 3), dtype=np.uint8)
    img = Image.fromarray(field).resize((width, height), Image.Resampling.BICUBIC)
    draw = ImageDraw.Draw(img)
    for _ in range(25):
        x, y = int(rng.integers(0, width)), int(rng.integers(0, height))
        r = int(rng.integers(20, 600))
        color = tuple(int(c) for c in rng.integers(0, 256, 3))
        shape = draw.ellipse if rng.random() < 0.5 else draw.rectangle
        shape((x - r, y - r // 2, x + r, y + r // 2), fill=color)
    noise = Image.effect_noise((width, height), float(rng.uniform(4, 10))).convert("RGB")
    return ImageChops.add(img, noise, scale=1.0, offset=-128)


def make_photos(dest: Path, n: int, seed: int = 0) -> Path:
    """A zip of `n` 4000x3000 JPEGs in a split-folder layout both versions read."""
    rng = np.random.default_rng(seed)
    with zipfile.ZipFile(dest, "w", zipfile.ZIP_STORED) as z:
        for i in range(n):
            exif = Image.Exif()
            if i % 4 == 3:
                exif[0x0112] = 6  # shot in portrait: "rotate 90 degrees to display"
            buf = io.BytesIO()
            photo(rng).save(buf, "JPEG", quality=90, exif=exif.tobytes())
            split = "test" if i % 5 == 4 else "train"
            z.writestr(f"photos/{split}/class{i % 3}/IMG_{i:04d}.jpg", buf.getvalue())
    return dest


def workdir(root: Path, archive: Path, params: dict[str, Any]) -> Path:
    (root / "data" / "raw").mkdir(parents=True)
    (root / "data" / "raw" / archive.name).symlink_to(archive.resolve())
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    return root


def run_stage(checkout: Path, work: Path) -> Any:
    for out in ("data/processed", "data/samples", "metrics"):
        shutil.rmtree(work / out, ignore_errors=True)
    env = {**os.environ, "PYTHONPATH": str(checkout / "src")}
    cmd = [sys.executable, str(checkout / "stages" / "preprocess.py")]
    return run_watched(cmd, work, env).check()


def read_splits(work: Path) -> dict[str, np.ndarray]:
    """The images each version wrote: old .pt tensors or new .npy arrays."""
    folder = work / "data" / "processed"
    out = {}
    for split in SPLIT_NAMES:
        if (folder / f"{split}.npy").is_file():
            out[split] = np.load(folder / f"{split}.npy")
        else:
            import torch

            out[split] = torch.load(folder / f"{split}.pt", weights_only=True)["images"].numpy()
    return out


def pixel_difference(old: dict[str, np.ndarray], new: dict[str, np.ndarray]) -> dict[str, Any]:
    """How far new pixel values are from old ones, over every split (same files, same order)."""
    diffs = [np.abs(old[s].astype(np.int16) - new[s].astype(np.int16)).ravel() for s in SPLIT_NAMES]
    d = np.concatenate(diffs)
    mse = float(np.mean(d.astype(np.float64) ** 2))
    return {
        "values": int(d.size),
        "mean_abs": float(d.mean()),
        "p99_abs": float(np.percentile(d, 99)),
        "max_abs": int(d.max()),
        "share_over_8": float((d > 8).mean()),
        "psnr_db": float(10 * np.log10(255**2 / mse)) if mse else float("inf"),
        "identical": bool(all(np.array_equal(old[s], new[s]) for s in SPLIT_NAMES)),
    }


def time_dataset(
    name: str, archive: Path, params: dict[str, Any], checkouts: dict[str, Path], repeats: int,
    tmp: Path,
) -> dict[str, Any]:  # fmt: skip
    works = {v: workdir(tmp / f"{name}-{v}", archive, params) for v in checkouts}
    runs: dict[str, list[Any]] = {v: [] for v in checkouts}
    order = list(checkouts)
    for r in range(repeats):
        for version in order[r % len(order) :] + order[: r % len(order)]:
            watched = run_stage(checkouts[version], works[version])
            runs[version].append(watched)
            print(
                f"  {name} {version}: {watched.seconds:.2f} s, "
                f"peak {watched.peak_rss / 2**20:.0f} MiB, CPU {watched.cpu_seconds:.1f} s"
            )
    meta = json.loads((works["new"] / "data" / "processed" / "meta.json").read_text())
    return {
        "images": sum(meta["counts"].values()),
        "image_size": meta["image_size"],
        "archive_bytes": archive.stat().st_size,
        "seconds": {v: [w.seconds for w in ws] for v, ws in runs.items()},
        "cpu_seconds": {v: [w.cpu_seconds for w in ws] for v, ws in runs.items()},
        "peak_rss": {v: max(w.peak_rss for w in ws) for v, ws in runs.items()},
        "difference": pixel_difference(read_splits(works["old"]), read_splits(works["new"])),
    }


def median(xs: list[float]) -> float:
    return float(np.median(xs))


def target_line(name: str, res: dict[str, Any]) -> str:
    old, new = median(res["seconds"]["old"]), median(res["seconds"]["new"])
    if name == "cifar":
        return f"≤ {CIFAR_SECONDS:g} s: {'met' if new <= CIFAR_SECONDS else 'NOT met'}"
    if name == "photos":
        return f"≥ {PHOTO_SPEEDUP:g}x: {'met' if old / new >= PHOTO_SPEEDUP else 'NOT met'}"
    return ""


def report(info: dict[str, Any], args: argparse.Namespace, results: dict[str, Any]) -> str:
    lines = [
        "## Preprocess: this version vs commit 8989bb0 (`bench/preprocess.py`)",
        "",
        f"Machine: {machine_line(info)}.",
        f"Command: `uv run python bench/preprocess.py {' '.join(sys.argv[1:])}`",
        "",
        f"*old*: the preprocess stage at {args.old_commit} (one process, full-size decode, every "
        "split in memory, saved with torch.save). *new*: this checkout (worker processes on every "
        "core, JPEG draft decoding, splits streamed to .npy). Each run is `python "
        "stages/preprocess.py` from start to exit, in a folder with params.yaml and the archive "
        f"in data/raw; the versions alternate, {args.repeats} runs each. Peak memory: resident "
        "bytes of the stage and its worker processes together, sampled every 0.1 s.",
        "",
        "| dataset | images | at | old (median) | new (median) | speedup | old peak memory "
        "| new peak memory | per 1,000 images (new) | target |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for name, res in results.items():
        old, new = median(res["seconds"]["old"]), median(res["seconds"]["new"])
        lines.append(
            f"| {name} | {res['images']:,} | {res['image_size']} px | {old:.2f} s | {new:.2f} s "
            f"| {old / new:.1f}x | {res['peak_rss']['old'] / 2**20:,.0f} MiB "
            f"| {res['peak_rss']['new'] / 2**20:,.0f} MiB | {new / res['images'] * 1000:.2f} s "
            f"| {target_line(name, res)} |"
        )
    lines += ["", "What the new version wrote, against the old (every pixel value of every split):"]
    for name, res in results.items():
        d = res["difference"]
        if d["identical"]:
            lines.append(f"- {name}: byte-identical arrays.")
        else:
            lines.append(
                f"- {name}: mean |difference| {d['mean_abs']:.2f} of 255, 99th percentile "
                f"{d['p99_abs']:.0f}, largest {d['max_abs']}, {d['share_over_8']:.2%} of values "
                f"off by more than 8; PSNR {d['psnr_db']:.1f} dB (JPEG draft decoding at 1/2, 1/4 "
                "or 1/8 scale, then the same resize, vs a full-size decode and resize)."
            )
    lines += busy_note(info)
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--old", type=Path, required=True, help="checkout of the baseline commit")
    parser.add_argument("--zip", type=Path, default=DEFAULT_CIFAR_ZIP, help="cifar10-jpeg.zip")
    parser.add_argument("--hymenoptera", type=Path, default=DEFAULT_HYMENOPTERA)
    parser.add_argument("--photos", type=int, default=300, help="generated 12 MP photos")
    parser.add_argument("--repeats", type=int, default=3, help="runs of each version")
    parser.add_argument(
        "--datasets", default="cifar,photos,hymenoptera", help="comma-separated subset"
    )
    parser.add_argument("--no-write", action="store_true", help="print only")
    args = parser.parse_args()
    args.old_commit = subprocess.run(
        ["git", "-C", str(args.old), "rev-parse", "--short", "HEAD"],
        capture_output=True, text=True, check=True,
    ).stdout.strip()  # fmt: skip
    checkouts = {"old": args.old.resolve(), "new": REPO_ROOT}
    info = announce_machine()
    wanted = args.datasets.split(",")
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(dir=os.environ.get("BENCH_TMP")) as tmp_name:
        tmp = Path(tmp_name)
        if "cifar" in wanted:
            params = {"data": {"dataset": "cifar10", "source": str(args.zip)}}
            results["cifar"] = time_dataset("cifar", args.zip, params, checkouts, args.repeats, tmp)
        if "photos" in wanted:
            print(f"generating {args.photos} 4000x3000 photos (untimed)...")
            archive = make_photos(tmp / "photos.zip", args.photos)
            params = {
                "data": {"dataset": "imagefolder", "source": str(archive)},
                "preprocess": {"image_size": 224},
            }
            results["photos"] = time_dataset(
                "photos", archive, params, checkouts, args.repeats, tmp
            )
        if "hymenoptera" in wanted and args.hymenoptera.is_file():
            params = {"data": {"dataset": "hymenoptera", "source": str(args.hymenoptera)}}
            results["hymenoptera"] = time_dataset(
                "hymenoptera", args.hymenoptera, params, checkouts, args.repeats, tmp
            )
    body = report(info, args, results)
    args_text = {k: str(v) for k, v in vars(args).items()}
    publish(NAME, body, {"machine": info, "args": args_text, "results": results}, not args.no_write)


if __name__ == "__main__":
    main()
