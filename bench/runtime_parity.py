"""The cells of docs/deploy.md's "What runs where" table: top-1 agreement with PyTorch / largest
logit difference, per model (form) of tests/unit/test_runtimes.py and runtime, over `--images`
random images (256 in the table).

The models, their exports and the runners are the test's own (random weights scaled to
trained-size logits, 32 pixels); only the number of images differs. A runtime that
`runtimes.problems` says cannot read a form shows that reason instead (the table's footnotes).
Not a timing: accuracy figures, which do not depend on the machine's load. The whole table takes
about 20 minutes on 2 cores, most of them the reference evaluator's:

    uv run python bench/runtime_parity.py
    uv run python bench/runtime_parity.py --runtimes onnxruntime_web --images 32
    uv run python bench/runtime_parity.py --runtimes mnn --forms fast-portable
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np
import onnx
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # for tests.unit.test_runtimes

from tests.unit import test_runtimes as t
from visionpipe import runtimes
from visionpipe.models import to_input


def cell(runtime: str, case: str, form: str, folder: Path) -> str:
    path, expected = t._exported(folder, case, form)
    reasons = runtimes.problems(onnx.load(str(path)).graph).get(runtime)
    if reasons:
        return f"cannot: {reasons[0]}"
    outcome = t.RUNNERS[runtime](path, np.load(folder / "images.npy"))
    if outcome.logits is None:
        return f"FAILED: {outcome.error}"
    agree = (outcome.logits.argmax(1) == expected.argmax(1)).mean()
    return f"{agree:.0%} / {np.abs(outcome.logits - expected).max():.1e}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=256)
    parser.add_argument("--runtimes", nargs="+", default=list(runtimes.RUNTIMES))
    forms = [f"{case}-{form}" for case, form in t.FORMS]
    parser.add_argument("--forms", nargs="+", default=forms, choices=forms, metavar="CASE-FORM")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        generator = torch.Generator().manual_seed(1)
        shape = (args.images, 3, t.SIZE, t.SIZE)
        images = torch.randint(0, 256, shape, dtype=torch.uint8, generator=generator)
        np.save(folder / "images.npy", to_input(images).numpy())
        print("| model (form) | " + " | ".join(args.runtimes) + " |")
        for case, form in t.FORMS:
            if f"{case}-{form}" not in args.forms:
                continue
            cells = [cell(r, case, form, folder) for r in args.runtimes]
            print(f"| {case} ({form}) | " + " | ".join(cells) + " |", flush=True)


if __name__ == "__main__":
    main()
