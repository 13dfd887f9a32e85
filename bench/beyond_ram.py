"""A photo collection whose decoded arrays are larger than this machine's memory: preprocess it,
then train resnet18 at 224 px from the memory-mapped train split, recording each stage's peak
memory next to the dataset's size.

Generates `--images` distinct 300x225 JPEGs (photo-like: colour fields, shapes, noise) in ten
class folders of a flat collection (untimed), then runs

1. the preprocess stage, `python stages/preprocess.py`, at 224 px with test and validation
   fractions of 0.05 (so the train split alone is larger than memory);
2. `--steps` training steps of resnet18 (batch `--batch-size`), the train stage's own loop
   (`visionpipe.train.make_loop` + `train_epoch`, after `split_tensors.load_training_data`, which
   keeps a split over the memory budget in its memory-mapped file), in a process of its own.

Peak memory: resident bytes of each stage's processes, sampled every 0.25 s, in all (anonymous +
file-backed: pages of the mapped split count while mapped) and anonymous only (what the processes
own; file pages are the OS's to drop). Needs (images x 150,528) bytes of free disk for the arrays
plus about 13 KB per image for the source; everything is deleted at the end unless --keep.

    uv run python bench/beyond_ram.py --images 200000 --steps 200

Generating the collection takes about as long as the rest: `--collection PATH` keeps it there
(made when missing), so `--generate-only` can make it in one sitting and the measured run come
in another.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import sys
import tempfile
import time
import zipfile
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from benchlib import (
    REPO_ROOT,
    announce_machine,
    busy_note,
    gib,
    machine_line,
    publish,
    run_watched,
)
from PIL import Image, ImageChops, ImageDraw

NAME = "beyond_ram"
CLASSES = [f"class{k}" for k in range(10)]


def small_photo(seed: int, width: int = 300, height: int = 225) -> bytes:
    """One distinct photo-like JPEG, its content drawn from `seed`."""
    rng = np.random.default_rng(seed)
    field = rng.integers(0, 256, (3, 4, 3), dtype=np.uint8)
    img = Image.fromarray(field).resize((width, height), Image.Resampling.BICUBIC)
    draw = ImageDraw.Draw(img)
    for _ in range(4):
        x, y, r = (int(v) for v in rng.integers(0, [width, height, 80]))
        draw.ellipse(
            (x - r, y - r, x + r, y + r), fill=tuple(int(c) for c in rng.integers(0, 256, 3))
        )
    noise = Image.effect_noise((width, height), 6.0).convert("RGB")
    buf = io.BytesIO()
    ImageChops.add(img, noise, offset=-128).save(buf, "JPEG", quality=85)
    return buf.getvalue()


def _photos(seeds: range) -> list[bytes]:
    return [small_photo(s) for s in seeds]


def make_collection(dest: Path, n: int, workers: int) -> Path:
    """A zip of `n` photos, `photos/<class>/<n>.jpg`, stored (JPEGs do not compress)."""
    step = 2000
    with zipfile.ZipFile(dest, "w", zipfile.ZIP_STORED) as z, ProcessPoolExecutor(workers) as pool:
        chunks = [range(i, min(n, i + step)) for i in range(0, n, step)]
        for seeds, blobs in zip(chunks, pool.map(_photos, chunks), strict=True):
            for seed, blob in zip(seeds, blobs, strict=True):
                z.writestr(f"photos/{CLASSES[seed % len(CLASSES)]}/{seed:07d}.jpg", blob)
    return dest


def collection(path: Path, images: int) -> Path:
    """The zip of `images` generated photos at `path`, made unless it is there already."""
    if path.is_file():
        with zipfile.ZipFile(path) as z:
            found = len(z.infolist())
        if found != images:
            raise SystemExit(f"{path} holds {found:,} photos, not --images {images:,}")
        print(f"using the {images:,} photos of {path}")
        return path
    print(f"generating {images:,} photos in {path} (untimed)...")
    part = make_collection(path.with_name(path.name + ".part"), images, os.cpu_count() or 1)
    return part.replace(path)  # complete, or not there at all


def train_steps(steps: int, batch_size: int) -> None:
    """In the preprocessed folder (cwd): the train stage's loop for `steps` steps; prints JSON."""
    import torch

    from visionpipe import distributed, split_tensors, train
    from visionpipe.config.params import load_params
    from visionpipe.logs import setup

    setup()
    params = load_params()
    device = torch.device("cpu")
    started = time.perf_counter()
    splits = split_tensors.load_training_data(device)
    loaded = time.perf_counter()
    model = train.build_training_model(params, splits, device, distributed.Dist())
    loop = train.make_loop(model, splits.train_x, splits.train_y, params.train, device)
    t = time.perf_counter()
    loss = train.train_epoch(loop, 0, range(steps)).item() / (steps * batch_size)
    seconds = time.perf_counter() - t
    print(
        "RESULT "
        + json.dumps(
            {
                "load_seconds": loaded - started,
                "train_seconds": seconds,
                "steps_per_second": steps / seconds,
                "images_per_second": steps * batch_size / seconds,
                "mean_loss": loss,
                "train_images": len(splits.train_y),
                "train_bytes": splits.train_x.numel(),
            }
        )
    )


def mem_total() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no MemTotal in /proc/meminfo")


def run_pipeline(work: Path, args: argparse.Namespace) -> dict[str, Any]:
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT / "src")}
    params = {
        "data": {"dataset": "imagefolder", "source": "photos.zip", "test_fraction": 0.05,
                 "val_fraction": 0.05},
        "preprocess": {"image_size": 224},
        "model": {"name": "resnet18", "normalize": True},
        "train": {"epochs": 1, "batch_size": args.batch_size, "lr": 0.05, "momentum": 0.9},
    }  # fmt: skip
    (work / "params.yaml").write_text(yaml.safe_dump(params))
    print("preprocess...")
    pre = run_watched(
        [sys.executable, str(REPO_ROOT / "stages" / "preprocess.py")], work, env, 0.25
    )
    pre.check()
    arrays = {p.stem: p.stat().st_size for p in sorted((work / "data" / "processed").glob("*.npy"))}
    print(f"  {pre.seconds:.0f} s, arrays {gib(sum(arrays.values()))}; training...")
    cmd = [sys.executable, __file__, "--child-train", str(args.steps), str(args.batch_size)]
    tr = run_watched(cmd, work, env, 0.25).check()
    result = json.loads(tr.output.split("RESULT ", 1)[1].splitlines()[0])
    return {
        "arrays_bytes": arrays,
        "preprocess": {
            "seconds": pre.seconds, "peak_rss": pre.peak_rss, "peak_anon": pre.peak_anon,
        },
        "train": {
            "seconds": tr.seconds, "peak_rss": tr.peak_rss, "peak_anon": tr.peak_anon,
            "memory_mapped": "reading its batches from the memory-mapped" in tr.output,
            **result,
        },
        "log": [line for line in (pre.output + tr.output).splitlines() if "WARNING" in line],
    }  # fmt: skip


def report(info: dict[str, Any], args: argparse.Namespace, res: dict[str, Any]) -> str:
    arrays, ram = res["arrays_bytes"], res["ram_bytes"]
    total = sum(arrays.values())
    pre, tr = res["preprocess"], res["train"]
    per_split = ", ".join(f"{k} {gib(v)}" for k, v in arrays.items())
    return "\n".join(
        [
            "## Larger than memory: preprocess, then train resnet18 at 224 px "
            "(`bench/beyond_ram.py`)",
            "",
            f"Machine: {machine_line(info)}; {gib(ram)} of memory.",
            f"Command: `uv run python bench/beyond_ram.py {' '.join(sys.argv[1:])}`",
            "",
            f"Dataset: {res['images']:,} generated 300x225 JPEGs (a flat collection of 10 class "
            f"folders, {gib(res['source_bytes'])} zipped), preprocessed at 224 px with "
            f"test_fraction and val_fraction 0.05: **{gib(total)} of uint8 arrays, "
            f"{total / ram:.2f}x this machine's memory** ({per_split}). Training: "
            f"{args.steps} steps of resnet18 at batch {args.batch_size} (SGD, bf16 autocast "
            "where native), the train stage's loop after `split_tensors.load_training_data`, "
            "with the "
            "default memory budget (half the available memory).",
            "",
            "| stage | wall time | peak memory, all | peak memory, anonymous | notes |",
            "|---|---:|---:|---:|---|",
            f"| preprocess | {pre['seconds']:.0f} s | {gib(pre['peak_rss'])} "
            f"| {gib(pre['peak_anon'])} | {res['images'] / pre['seconds']:.0f} images/s, "
            f"{pre['seconds'] / res['images'] * 1000:.2f} s per 1,000 photos |",
            f"| train ({args.steps} steps) | {tr['seconds']:.0f} s | {gib(tr['peak_rss'])} "
            f"| {gib(tr['peak_anon'])} | train split "
            f"{'memory-mapped' if tr['memory_mapped'] else 'in memory'}; "
            f"{tr['images_per_second']:.1f} images/s; loading the splits "
            f"{tr['load_seconds']:.1f} s; mean loss {tr['mean_loss']:.3f} |",
            "",
            "Peak memory: resident bytes of the stage's processes (the stage and its workers), "
            "sampled every 0.25 s; *all* counts file-backed pages, such as the parts of a mapped "
            "split the process has touched, which the OS drops under pressure; *anonymous* is what "
            "the processes own.",
            *busy_note(info),
        ]
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=200_000)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--dir", type=Path, default=None, help="where to work (default: /tmp)")
    parser.add_argument("--keep", action="store_true", help="keep the generated files")
    parser.add_argument(
        "--collection", type=Path, help="the collection's zip: made if missing, kept"
    )
    parser.add_argument("--generate-only", action="store_true", help="make --collection, stop")
    parser.add_argument("--no-write", action="store_true", help="print only")
    parser.add_argument("--child-train", nargs=2, type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child_train:
        train_steps(*args.child_train)
        return
    if args.generate_only:
        if args.collection is None:
            parser.error("--generate-only needs --collection")
        collection(args.collection, args.images)
        return
    info = announce_machine()
    work = Path(tempfile.mkdtemp(prefix="beyond-ram-", dir=args.dir))
    try:
        (work / "data" / "raw").mkdir(parents=True)
        raw = work / "data" / "raw" / "photos.zip"
        if args.collection is None:
            source = collection(raw, args.images)
        else:
            source = collection(args.collection, args.images)
            raw.symlink_to(source.resolve())
        res = run_pipeline(work, args)
        res.update(images=args.images, source_bytes=source.stat().st_size, ram_bytes=mem_total())
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    body = report(info, args, res)
    args_text = {k: str(v) for k, v in vars(args).items()}
    publish(NAME, body, {"machine": info, "args": args_text, **res}, not args.no_write)


if __name__ == "__main__":
    main()
