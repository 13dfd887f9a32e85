"""Prediction latency on CPU: onnxruntime vs PyTorch eager for the tutorial CNN, and the CLI.

Times one forward call per sample, batch 1 and batch 256, for each backend in one run; the
backends take turns in rounds so a load spike hits them alike. Uses the trained model when
models/model.onnx and models/model.pt exist, else a freshly initialised tutorial CNN exported the
way the export stage does it (visionpipe.export.export_onnx) into a temporary folder.

    uv run python bench/predict_latency.py --iters 2000
"""

from __future__ import annotations

import argparse
import copy
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import torch
from benchlib import (
    DEFAULT_CIFAR_ZIP,
    REPO_ROOT,
    announce_machine,
    busy_note,
    fresh_export,
    load_cifar_jpegs,
    machine_line,
    png_bytes,
    summarize,
    update_results_md,
    write_json_result,
)

from visionpipe.cifar_pickle import CLASSES
from visionpipe.modelfile import load_model

NAME = "predict_latency"
ORT_B1_MEDIAN_MS = 0.25  # target: onnxruntime batch-1 median latency, at most
ORT_B1_SPEEDUP = 3.0  # target: eager / onnxruntime batch-1 median, at least
CLI_SECONDS = 1.0  # target: `visionpipe predict <one image>` end to end, below


def get_model(model_dir: Path, tmp: Path) -> tuple[torch.nn.Module, Path, str]:
    """(eager model, ONNX path, where they came from)."""
    onnx_path, pt_path = model_dir / "model.onnx", model_dir / "model.pt"
    if onnx_path.is_file() and pt_path.is_file():
        model, _ = load_model(pt_path)
        return model, onnx_path, f"trained model in {model_dir}"
    onnx_path = tmp / "model.onnx"
    model = fresh_export("tutorial_cnn", onnx_path, list(CLASSES))
    return model, onnx_path, "freshly initialised tutorial CNN, exported to a temp dir"


def make_backends(model: torch.nn.Module, onnx_path: Path) -> dict[str, Callable]:
    """name -> f(float32 NCHW numpy batch) -> logits numpy, as a predictor would call it."""
    model_cl = copy.deepcopy(model).to(memory_format=torch.channels_last)

    def eager(x: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return model(torch.from_numpy(x)).numpy()

    def eager_cl(x: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            xt = torch.from_numpy(x).contiguous(memory_format=torch.channels_last)
            return model_cl(xt).numpy()

    def session(threads: int | None) -> Callable[[np.ndarray], np.ndarray]:
        opts = ort.SessionOptions()
        if threads is not None:
            opts.intra_op_num_threads = threads
        sess = ort.InferenceSession(str(onnx_path), opts, providers=["CPUExecutionProvider"])
        name = sess.get_inputs()[0].name
        return lambda x: sess.run(None, {name: x})[0]

    return {
        "eager": eager,
        "eager_channels_last": eager_cl,
        "ort": session(None),
        "ort_1thread": session(1),
    }


def time_backends(
    backends: dict[str, Callable], x: np.ndarray, iters: int, warmup: int, rounds: int
) -> dict[str, list[float]]:
    """Per-call seconds of each backend on `x`; backends alternate in `rounds` blocks."""
    for fn in backends.values():
        for _ in range(warmup):
            fn(x)
    names = list(backends)
    per_round = max(1, iters // rounds)
    samples: dict[str, list[float]] = {name: [] for name in names}
    for r in range(rounds):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            fn, out = backends[name], samples[name]
            for _ in range(per_round):
                t0 = time.perf_counter()
                fn(x)
                out.append(time.perf_counter() - t0)
    return samples


def one_png(tmp: Path, zip_path: Path) -> tuple[Path, str]:
    """(PNG, what it is): a sample the pipeline wrote, else a CIFAR-10 test image, else noise."""
    samples = sorted((REPO_ROOT / "data" / "samples").glob("*.png"))
    if samples:
        return samples[0], str(samples[0].relative_to(REPO_ROOT))
    path = tmp / "one.png"
    if zip_path.is_file():
        chw, what = load_cifar_jpegs(zip_path, "test", 1)[0][0], "a CIFAR-10 test image"
    else:
        chw = np.random.default_rng(0).integers(0, 256, (3, 32, 32), dtype=np.uint8)
        what = "random noise"
    path.write_bytes(png_bytes(chw))
    return path, f"{what}, 32x32 PNG in a temp dir"


def time_cli(png: Path, png_what: str, onnx_path: Path, runs: int) -> dict[str, Any]:
    """Wall seconds of `visionpipe predict <png>` as a user runs it, and whether torch loads."""
    exe = Path(sys.executable).parent / "visionpipe"
    extra = [] if onnx_path == REPO_ROOT / "models" / "model.onnx" else ["--model", str(onnx_path)]
    commands = {"visionpipe predict": [str(exe), "predict", str(png), *extra]}
    uv = subprocess.run(["uv", "--version"], capture_output=True).returncode == 0
    if uv:
        commands["uv run visionpipe predict"] = [
            "uv",
            "run",
            "visionpipe",
            "predict",
            str(png),
            *extra,
        ]
    result: dict[str, Any] = {"image": png_what, "model": str(onnx_path), "runs": runs}
    for label, cmd in commands.items():
        subprocess.run(cmd, cwd=REPO_ROOT, capture_output=True, check=True)  # warm page cache
        seconds = []
        for _ in range(runs):
            t0 = time.perf_counter()
            subprocess.run(cmd, cwd=REPO_ROOT, capture_output=True, check=True)
            seconds.append(time.perf_counter() - t0)
        result[label] = {
            "command": " ".join(cmd),
            "seconds": seconds,
            "median": statistics.median(seconds),
        }
    probe = (
        "import sys; from visionpipe.cli import main; main(sys.argv[1:]); "
        "print('TORCH_IMPORTED', 'torch' in sys.modules)"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe, "predict", str(png), *extra],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    result["imports_torch"] = "TORCH_IMPORTED True" in out
    return result


def report(
    info: dict[str, Any],
    args: argparse.Namespace,
    source: str,
    latency: dict[int, dict[str, Any]],
    diff: float,
    cli: dict[str, Any] | None,
) -> str:
    lines = [
        f"## Prediction latency: onnxruntime vs PyTorch eager (`bench/{NAME}.py`)",
        "",
        f"Machine: {machine_line(info)}.",
        f"Command: `uv run python bench/{NAME}.py --iters {args.iters} --iters-256 "
        f"{args.iters_256} --warmup {args.warmup} --rounds {args.rounds} "
        f"--cli-runs {args.cli_runs}`",
        "",
        f"Model: {source}. Input: uniform random float32 RGB in [0, 1], NCHW, 32x32. Timed: one "
        "call from a numpy batch to numpy logits (eager: `torch.from_numpy`, the model in eval "
        "mode under `torch.inference_mode()`, `.numpy()`; onnxruntime: `InferenceSession.run` "
        "with CPUExecutionProvider). Threads as default unless named. Backends take turns in "
        f"{args.rounds} rounds after {args.warmup} warm-up calls each. *eager_channels_last* is "
        "for reference only; the CLI's torch backend runs plain NCHW.",
        "",
        "| batch | backend | median ms | p90 ms | images/s | eager median / this |",
        "|---:|---|---:|---:|---:|---:|",
    ]
    for batch, res in latency.items():
        eager_med = res["eager"]["median"]
        for name, s in res.items():
            lines.append(
                f"| {batch} | {name} | {s['median'] * 1e3:.3f} | {s['p90'] * 1e3:.3f} | "
                f"{s['images_per_second']:.0f} | {eager_med / s['median']:.2f}x |"
            )
    b1 = latency.get(1)
    if b1:
        ort_med = b1["ort"]["median"] * 1e3
        speedup = b1["eager"]["median"] / b1["ort"]["median"]
        lines += [
            "",
            "Targets (batch 1, onnxruntime default options):",
            f"- median ≤ {ORT_B1_MEDIAN_MS} ms: {ort_med:.3f} ms, "
            f"{'met' if ort_med <= ORT_B1_MEDIAN_MS else 'NOT met'}",
            f"- ≥ {ORT_B1_SPEEDUP:g}x eager: {speedup:.2f}x, "
            f"{'met' if speedup >= ORT_B1_SPEEDUP else 'NOT met'}",
        ]
    lines += [
        "",
        f"Largest |logit difference| onnxruntime vs eager at batch {max(latency)}: {diff:.2e}.",
    ]
    if cli:
        lines += cli_lines(cli)
    lines += busy_note(info)
    return "\n".join(lines)


def cli_lines(cli: dict[str, Any]) -> list[str]:
    """The CLI's end-to-end times against their target."""
    lines = [
        "",
        f"CLI end to end, one image ({cli['image']}), median of {cli['runs']} runs "
        "after one untimed run:",
    ]
    for label in ("visionpipe predict", "uv run visionpipe predict"):
        if label in cli:
            med = cli[label]["median"]
            lines.append(
                f"- `{label}`: {med:.3f} s (target < {CLI_SECONDS:g} s: "
                f"{'met' if med < CLI_SECONDS else 'NOT met'})"
            )
    lines.append(f"- imports torch: {'yes' if cli['imports_torch'] else 'no'}")
    return lines


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iters", type=int, default=2000, help="timed calls at batch 1")
    parser.add_argument("--iters-256", type=int, default=100, help="timed calls at batch 256")
    parser.add_argument("--warmup", type=int, default=50, help="untimed calls per backend")
    parser.add_argument("--rounds", type=int, default=10, help="turns the backends take")
    parser.add_argument("--cli-runs", type=int, default=5, help="timed CLI runs; 0 skips the CLI")
    parser.add_argument(
        "--model-dir",
        type=Path,
        default=REPO_ROOT / "models",
        help="folder with model.onnx and model.pt",
    )
    parser.add_argument(
        "--zip",
        type=Path,
        default=DEFAULT_CIFAR_ZIP,
        help="cifar10-jpeg.zip, for a real test image when data/samples is empty",
    )
    parser.add_argument(
        "--no-write", action="store_true", help="print only; leave RESULTS.md and results/ alone"
    )
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    info = announce_machine()
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        model, onnx_path, source = get_model(args.model_dir, tmp)
        print(f"model: {source}")
        backends = make_backends(model, onnx_path)
        rng = np.random.default_rng(0)
        latency: dict[int, dict[str, Any]] = {}
        for batch, iters in ((1, args.iters), (256, args.iters_256)):
            x = rng.random((batch, 3, 32, 32), dtype=np.float32)
            samples = time_backends(backends, x, iters, args.warmup, args.rounds)
            latency[batch] = {}
            for name, secs in samples.items():
                latency[batch][name] = {
                    **summarize(secs),
                    "images_per_second": batch * len(secs) / sum(secs),
                }
            print(
                f"  batch {batch}: "
                + ", ".join(f"{n} {s['median'] * 1e3:.3f} ms" for n, s in latency[batch].items())
            )
        diff = float(np.abs(backends["ort"](x) - backends["eager"](x)).max())
        cli = time_cli(*one_png(tmp, args.zip), onnx_path, args.cli_runs) if args.cli_runs else None

    body = report(info, args, source, latency, diff, cli)
    print("\n" + "=" * 72 + "\n" + body + "\n" + "=" * 72)
    if not args.no_write:
        payload = {
            "benchmark": NAME,
            "machine": info,
            "args": {**vars(args), "model_dir": str(args.model_dir), "zip": str(args.zip)},
            "model": source,
            "latency_seconds": {str(b): r for b, r in latency.items()},
            "max_abs_logit_diff": diff,
            "cli": cli,
        }
        print(f"wrote {write_json_result(NAME, payload)} and {update_results_md(NAME, body)}")


if __name__ == "__main__":
    main()
