"""models/model.onnx against its int8 form (ONNX Runtime's static quantization, as docs/deploy.md
does it): file size, CPU time, top-1 agreement, accuracy and the largest probability difference on
the test split, side by side in one run.

Run it in a project that has trained and exported (data/processed and models/model.onnx):

    uv run python bench/quantize.py --project /path/to/project --images 2000 --repeats 3
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
from benchlib import machine_info, machine_line, result_name, update_results_md, write_json_result
from onnxruntime.quantization import CalibrationDataReader, quantize_dynamic, quantize_static
from onnxruntime.quantization.shape_inference import quant_pre_process

NAME = "quantize"
BATCH = 100


class Calibration(CalibrationDataReader):
    def __init__(self, images: np.ndarray) -> None:
        self.batches = iter([{"image": images[i : i + 32]} for i in range(0, len(images), 32)])

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self.batches, None)


def score(
    path: Path, images: np.ndarray, repeats: int, threads: int = 0
) -> tuple[np.ndarray, float]:
    """Softmax probabilities over `images` and the median seconds of one pass (batches of 100);
    `threads` 0: onnxruntime's default."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = options.inter_op_num_threads = threads
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    seconds = []
    for _ in range(repeats):
        started = time.perf_counter()
        logits = np.concatenate(
            [
                session.run(None, {"image": images[i : i + BATCH]})[0]
                for i in range(0, len(images), BATCH)
            ]
        )
        seconds.append(time.perf_counter() - started)
    e = np.exp(logits - logits.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True), statistics.median(seconds)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--project", type=Path, default=Path("."))
    parser.add_argument("--images", type=int, default=2000, help="test images scored, spread")
    parser.add_argument("--calibration", type=int, default=256, help="train images, spread")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=0, help="onnxruntime's; 0: its default")
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    bench = Path(__file__).resolve().parent
    os.chdir(args.project)
    sys.path.insert(0, "src")
    from visionpipe.split_tensors import load_split

    info = machine_info()
    from visionpipe.export import spread

    # Both splits are stored class by class: picks spread over them hold every class.
    train_x = load_split("train", in_memory=False)[0]
    train = train_x[spread(len(train_x), args.calibration)].numpy().astype(np.float32) / 255
    test_x, test_y = load_split("test", in_memory=False)
    picks = spread(len(test_x), args.images)
    images = test_x[picks].numpy().astype(np.float32) / 255
    labels = test_y[picks].numpy()
    fp32 = Path("models/model.onnx")
    with tempfile.TemporaryDirectory() as tmp:
        pre, int8, tensor, dynamic = (
            Path(tmp) / f"{n}.onnx" for n in ("pre", "int8", "tensor", "dynamic")
        )
        quant_pre_process(str(fp32), str(pre), skip_optimization=True)  # as docs/deploy.md
        quantize_static(str(pre), str(int8), Calibration(train), per_channel=True)
        quantize_static(str(pre), str(tensor), Calibration(train))  # one scale per weight tensor
        quantize_dynamic(str(pre), str(dynamic))  # weights only: no calibration
        rows = {}
        for label, path in (
            ("fp32", fp32),
            ("int8", int8),
            ("int8 per tensor", tensor),
            ("int8 dynamic", dynamic),
        ):
            probs, seconds = score(path, images, args.repeats, args.threads)
            rows[label] = {"kib": path.stat().st_size / 1024, "seconds": seconds, "probs": probs}
    body = report(info, args, rows, labels)
    print("\n" + body)
    if not args.no_write:
        os.chdir(bench.parent)
        name = result_name(NAME, info)
        payload = {k: {m: v for m, v in r.items() if m != "probs"} for k, r in rows.items()}
        print(
            f"wrote {write_json_result(name, {'machine': info, **payload})} and "
            f"{update_results_md(name, body)}"
        )


def report(info: dict, args: argparse.Namespace, rows: dict, labels: np.ndarray) -> str:
    top = {k: r["probs"].argmax(1) for k, r in rows.items()}
    diff = np.abs(rows["fp32"]["probs"] - rows["int8"]["probs"]).max()
    lines = [
        f"## fp32 vs int8 ONNX (`bench/{NAME}.py`)",
        "",
        f"Machine: {machine_line(info)}.",
        f"Command: `uv run python bench/{NAME}.py --images {args.images} --calibration "
        f"{args.calibration} --repeats {args.repeats} --threads {args.threads}` in a project "
        "trained and exported on the "
        "CIFAR-10 copy; int8 by docs/deploy.md's static quantization (a scale per output channel), "
        "int8 per tensor the same with `per_channel=False`, int8 dynamic by "
        "`quantize_dynamic` (weights only, activations quantized at run time); test and "
        "calibration images spread evenly over their splits. Time: median of the "
        f"repeats, one pass over the images in batches of {BATCH}, one CPU session each.",
        "",
        "| model | size (KiB) | seconds | accuracy | same top-1 as fp32 |",
        "|---|---:|---:|---:|---:|",
    ]
    for k, r in rows.items():
        acc, same = (top[k] == labels).mean(), (top[k] == top["fp32"]).mean()
        lines.append(f"| {k} | {r['kib']:.0f} | {r['seconds']:.3f} | {acc:.2%} | {same:.2%} |")
    lines += ["", f"Largest probability difference, int8 vs fp32: {diff:.3f}."]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
