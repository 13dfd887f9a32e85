"""The cells of docs/deploy.md's "On a phone or a board" and "In Rust or back in PyTorch: tract,
onnx2torch" tables: top-1 agreement with PyTorch / largest logit difference, per model (form) of
tests/unit/test_runtimes.py, after onnx-simplifier, in MNN, ncnn and TFLite, in tract and through
onnx2torch, over `--images` random images (64 in the tables).

The models, their exports and PyTorch's logits are the runtime test's own, as in
bench/runtime_parity.py. Each runtime converts and runs the file in bench/edge_run.py, in an
environment uv builds with its pinned packages (the project's lock does not carry them; TFLite's
onnx2tf pins its own onnx and numpy, so it gets an environment without the project, as do tract
and onnx2torch, which a user runs without it). A converter or runtime that fails shows as FAILED,
or crashes, with its last line. MNN, which the test suite runs (tests/mnn_run.py), is here for
`--real`, which scores the trained model of this clone (models/model.pt, models/model.onnx, its
test split) instead. About 20 minutes on 2 cores, most of them onnx2tf's; the first run
downloads TensorFlow (600 MB):

    uv run python bench/edge_runtimes.py
    uv run python bench/edge_runtimes.py --runtimes mnn ncnn --images 16
    uv run python bench/edge_runtimes.py --runtimes tract_fixed tract onnx2torch
    uv run python bench/edge_runtimes.py --real --images 1000
"""

from __future__ import annotations

import argparse
import shutil
import signal
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # for tests.unit.test_runtimes

from tests.unit import test_runtimes as t  # noqa: E402
from visionpipe import paths  # noqa: E402
from visionpipe.export import spread  # noqa: E402
from visionpipe.modelfile import load_model  # noqa: E402
from visionpipe.models import to_input  # noqa: E402
from visionpipe.split_tensors import load_split  # noqa: E402


@dataclass(frozen=True)
class Edge:
    """An edge runtime: its label and the packages its converter and runtime come from."""

    label: str
    packages: tuple[str, ...]
    with_project: bool  # False: an environment of its own (pins that conflict with the lock)


EDGES = {
    "onnxsim": Edge("onnx-simplifier, then onnxruntime", ("onnxsim==0.8.1",), True),
    "mnn": Edge("MNN", ("MNN==3.6.1",), True),
    "ncnn": Edge("ncnn (converted by pnnx)", ("ncnn==1.0.20261020", "pnnx==20261020"), True),
    "tflite": Edge("TFLite (onnx2tf, ai-edge-litert)", ("onnx2tf==1.29.24",), False),
    "tract": Edge("tract, symbolic batch", ("tract==0.23.9",), False),
    "tract_fixed": Edge("tract, fixed batch", ("tract==0.23.9",), False),
    "onnx2torch": Edge("onnx2torch", ("onnx2torch==1.5.15",), False),
}


def run(runtime: str, model: Path, images: Path, work: Path) -> np.ndarray | str:
    """The runtime's logits for `model` on `images`, or why it gave none."""
    edge, logits = EDGES[runtime], work / "logits.npy"
    uv = shutil.which("uv")
    assert uv, "the bench needs uv on PATH to build each runtime's environment"
    env = [] if edge.with_project else ["--no-project", "--with", "numpy"]
    packages = [arg for package in edge.packages for arg in ("--with", package)]
    script = str(ROOT / "bench" / "edge_run.py")
    cmd = [uv, "run", *env, *packages, "python", script, runtime, str(model), str(images)]
    proc = subprocess.run([*cmd, str(logits), str(work)], capture_output=True, text=True)
    if proc.returncode:
        # Two lines: ncnn names the layer it lacks on the line before the runner's own.
        last = "; ".join(proc.stderr.strip().splitlines()[-2:]) or "(no output)"
        crashed = proc.returncode in (-signal.SIGSEGV, 128 + signal.SIGSEGV)
        return ("crashes (SIGSEGV)" if crashed else "FAILED") + f": {last[:200]}"
    return np.load(logits)


def cell(got: np.ndarray | str, expected: np.ndarray) -> str:
    if isinstance(got, str):
        return got
    agree = (got.argmax(1) == expected.argmax(1)).mean()
    return f"{agree:.0%} / {np.abs(got - expected).max():.1e}"


def zoo(runtimes: list[str], count: int, folder: Path) -> None:
    """One table row per model (form) of the runtime test."""
    generator = torch.Generator().manual_seed(1)
    shape = (count, 3, t.SIZE, t.SIZE)
    images = torch.randint(0, 256, shape, dtype=torch.uint8, generator=generator)
    np.save(folder / "images.npy", to_input(images).numpy())
    print("| model (form) | " + " | ".join(EDGES[r].label for r in runtimes) + " |")
    for case, form in t.FORMS:
        path, expected = t._exported(folder, case, form)
        cells = []
        for runtime in runtimes:
            work = folder / f"{case}-{form}-{runtime}"
            cells.append(cell(run(runtime, path, folder / "images.npy", work), expected))
        print(f"| {case} ({form}) | " + " | ".join(cells) + " |", flush=True)


def real(runtimes: list[str], count: int, folder: Path) -> None:
    """The trained model of this clone on `count` of its test images, each runtime against
    PyTorch, with the test accuracy each gives."""
    model, _ = load_model(paths.MODEL)
    images, labels = load_split("test", in_memory=False)
    pick = spread(len(images), count)  # an image folder's split is in class order
    x = to_input(images[pick])
    np.save(folder / "images.npy", x.numpy())
    with torch.no_grad():
        expected = model(x).numpy()
    truth = labels[pick].numpy()
    print(
        f"PyTorch: accuracy {(expected.argmax(1) == truth).mean():.1%} on {len(pick)} test images"
    )
    for runtime in runtimes:
        got = run(runtime, paths.ONNX_MODEL.resolve(), folder / "images.npy", folder / runtime)
        right = None if isinstance(got, str) else (got.argmax(1) == truth).mean()
        accuracy = "" if right is None else f", accuracy {right:.1%}"
        print(f"{EDGES[runtime].label}: {cell(got, expected)}{accuracy}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=64)
    parser.add_argument("--runtimes", nargs="+", default=list(EDGES), choices=list(EDGES))
    parser.add_argument("--real", action="store_true", help="score models/model.onnx instead")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        (real if args.real else zoo)(args.runtimes, args.images, Path(tmp))


if __name__ == "__main__":
    main()
