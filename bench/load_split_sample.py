"""What taking a 256-image sample of the train split costs (deploy.md's calibration snippet):
`load_split("train", in_memory=False)` (mapped) against `in_memory=True` (read whole), each in a
fresh process, taking turns; seconds and peak RSS.

    uv run python bench/load_split_sample.py --project /path/to/a/project --repeats 3

`--project` is a project whose preprocess has run (data/processed holds the splits).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

from benchlib import announce_machine, busy_note, publish, section_head

NAME = "load_split_sample"
ROOT = Path(__file__).resolve().parent.parent
SAMPLE = """
import json, resource, time
start = time.perf_counter()
from visionpipe.split_tensors import load_split
train = load_split("train", in_memory={in_memory})[0]
images = train[:: max(1, len(train) // 256)][:256].numpy().astype("float32") / 255
seconds = time.perf_counter() - start
rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
print(json.dumps({{"seconds": seconds, "rss": rss, "bytes": train.numel()}}))
"""


def one(project: Path, in_memory: bool) -> dict[str, float]:
    code = SAMPLE.format(in_memory=in_memory)
    env_path = str(ROOT / "src")
    out = subprocess.run(
        [sys.executable, "-c", code],
        cwd=project,
        env={"PYTHONPATH": env_path, "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return json.loads(out.splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--project", type=Path, required=True)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    info = announce_machine()
    runs: dict[str, list[dict[str, float]]] = {"mapped": [], "read whole": []}
    for _ in range(args.repeats):
        for label, in_memory in (("mapped", False), ("read whole", True)):
            runs[label].append(one(args.project, in_memory))
            print(f"  {label}: {runs[label][-1]}", flush=True)
    size = runs["mapped"][0]["bytes"]
    rows = [
        f"| {label} | {statistics.median(r['seconds'] for r in rs):.3f} |"
        f" {statistics.median(r['rss'] for r in rs) / 2**20:.0f} |"
        for label, rs in runs.items()
    ]
    lines = [
        *section_head("A 256-image sample of the train split, mapped or read whole", NAME, info),
        f"Train split of {args.project.name}: {size / 2**20:.0f} MiB of uint8 images. Each run a"
        f" fresh process (import, load_split, the sample as float32), taking turns,"
        f" {args.repeats} runs each (medians; the page cache warm after the first).",
        "",
        "| load_split | seconds | peak RSS (MiB) |",
        "|---|---:|---:|",
        *rows,
        *busy_note(info),
    ]
    payload = {"machine": info, "args": vars(args) | {"project": str(args.project)}, "runs": runs}
    publish(NAME, "\n".join(lines), payload, not args.no_write)


if __name__ == "__main__":
    main()
