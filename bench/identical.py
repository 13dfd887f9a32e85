"""What finding identical pictures costs preprocess: the time `identical.digests` takes within
decoding the real CIFAR-10 copy in one process (the workers' share of the work, without their
start-up), and grouping a million digests.

    uv run python bench/identical.py --repeats 3
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path
from unittest import mock

import numpy as np
from benchlib import (
    DEFAULT_CIFAR_ZIP,
    announce_machine,
    busy_note,
    publish,
    section_head,
)

from visionpipe import identical, preprocess
from visionpipe.config.data import DataConfig

NAME = "identical"


def decode_seconds(source: Path) -> tuple[float, float]:
    """One decode of `source` at 32 px into a scratch folder, in this process: its seconds, and
    the seconds of them spent in `identical.digests`."""
    data = DataConfig(dataset="imagefolder", source=str(source))
    spent = [0.0]
    digests = identical.digests

    def timed(images: np.ndarray) -> bytes:
        start = time.perf_counter()
        try:
            return digests(images)
        finally:
            spent[0] += time.perf_counter() - start

    with (
        tempfile.TemporaryDirectory() as out,
        mock.patch.object(preprocess, "log"),
        mock.patch.object(identical, "digests", timed),
    ):
        start = time.perf_counter()
        preprocess.decode_source(source, 32, data, Path(out), workers=1)
        return time.perf_counter() - start, spent[0]


def groups_seconds(n: int) -> float:
    """identical.groups over `n` random digests holding 1% copies."""
    digests = bytearray(os.urandom(identical.DIGEST_BYTES * n))
    rng = np.random.default_rng(0)
    size = identical.DIGEST_BYTES
    for src, dst in rng.integers(0, n, (n // 100, 2)):
        digests[dst * size : (dst + 1) * size] = digests[src * size : (src + 1) * size]
    start = time.perf_counter()
    identical.groups(bytes(digests))
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--zip", type=Path, default=DEFAULT_CIFAR_ZIP, help="cifar10-jpeg.zip")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    info = announce_machine()
    runs = []
    for _ in range(args.repeats):
        runs.append(decode_seconds(args.zip))
        print(f"  decode {runs[-1][0]:.2f} s, of which digests {runs[-1][1]:.2f} s", flush=True)
    grouping = groups_seconds(1_000_000)
    total, spent = (statistics.median(r[k] for r in runs) for k in (0, 1))
    lines = [
        *section_head("Finding identical pictures in preprocess", NAME, info),
        "Decoding the 60,000 CIFAR-10 JPEGs at 32 px in one process (`decode_source`, workers=1),"
        f" {args.repeats} runs: {total:.2f} s (median), of which `identical.digests` took "
        f"{spent:.2f} s ({100 * spent / total:.1f}%; {1e6 * spent / 60000:.1f} us an image). "
        f"Grouping 1,000,000 digests with 1% copies (`identical.groups`): {grouping:.2f} s.",
        *busy_note(info),
    ]
    payload = {"machine": info, "args": vars(args) | {"zip": str(args.zip)},
               "decode_and_digest_seconds": runs, "groups_1m_seconds": grouping}  # fmt: skip
    publish(NAME, "\n".join(lines), payload, not args.no_write)


if __name__ == "__main__":
    main()
