"""What OpenMP's passive waiting saves a stage of two threads beside other work (the suite's
other pytest worker): train.py on 640 tiny images x 8 epochs at 16 px, OMP_NUM_THREADS=2, with
one busy process on the side, OMP_WAIT_POLICY unset (spinning) and PASSIVE taking turns; seconds.

    uv run python bench/omp_wait_policy.py --repeats 3

Why tests/helpers.env sets OMP_WAIT_POLICY=PASSIVE for the stages the tests start.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml
from benchlib import announce_machine, busy_note, publish, section_head

NAME = "omp_wait_policy"
ROOT = Path(__file__).resolve().parent.parent
BUSY = "while True: pass"  # the other worker: one core's worth of work


def workdir(root: Path) -> Path:
    sys.path.insert(0, str(ROOT))
    from tests.datasets import write_processed

    write_processed(root, n_train=640, n_val=16, n_test=16, size=16)
    train = {"epochs": 8, "batch_size": 16, "lr": 0.05, "momentum": 0.9, "log_every": 20}
    params = {"data": {"dataset": "imagefolder", "source": "unused"}, "train": train}
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    return root


def one(cwd: Path, policy: str | None) -> float:
    env = {**os.environ, "OMP_NUM_THREADS": "2", "PYTHONPATH": str(ROOT / "src")}
    env.pop("OMP_WAIT_POLICY", None)
    if policy:
        env["OMP_WAIT_POLICY"] = policy
    for old in (cwd / "checkpoints", cwd / "models"):
        subprocess.run(["rm", "-rf", str(old)], check=True)
    start = time.perf_counter()
    subprocess.run(
        [sys.executable, str(ROOT / "stages/train.py")], cwd=cwd, env=env, check=True,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    info = announce_machine()
    runs: dict[str, list[float]] = {"spinning (unset)": [], "PASSIVE": []}
    busy = subprocess.Popen([sys.executable, "-c", BUSY])
    try:
        with tempfile.TemporaryDirectory() as tmp:
            cwd = workdir(Path(tmp))
            for _ in range(args.repeats):
                for label, policy in (("spinning (unset)", None), ("PASSIVE", "PASSIVE")):
                    runs[label].append(one(cwd, policy))
                    print(f"  {label}: {runs[label][-1]:.1f} s", flush=True)
    finally:
        busy.kill()
    rows = [
        f"| {label} | {statistics.median(s):.1f} | {min(s):.1f}-{max(s):.1f} |"
        for label, s in runs.items()
    ]
    lines = [
        *section_head("A two-thread stage beside a busy core, by OpenMP wait policy", NAME, info),
        f"stages/train.py, tutorial CNN, 640 images x 8 epochs at 16 px, OMP_NUM_THREADS=2, one"
        f" busy process beside it; {args.repeats} runs each, taking turns (whole process, torch"
        " import included).",
        "",
        "| OMP_WAIT_POLICY | median s | range s |",
        "|---|---:|---:|",
        *rows,
        *busy_note(info),
    ]
    publish(NAME, "\n".join(lines), {"machine": info, "args": vars(args), "runs": runs},
            not args.no_write)  # fmt: skip


if __name__ == "__main__":
    main()
