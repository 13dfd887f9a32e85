"""What torch's ONNX exporter spends rebuilding its ATen->ONNX table on every export.

`torch.onnx.export(dynamo=True)` builds `ONNXRegistry.from_torchlib()` anew for each call, from
the list of torchlib's functions that onnxscript makes anew too (parsing about 500 functions'
source to read their domain). This times the export stage's own call (`export.export_onnx` of the
tutorial CNN at 32 px) in one warmed process, alternating: as torch does it, and with the list
kept by `warm.keep_torchlib_ops`, which the warm process runs before its stages fork.

    uv run python bench/onnx_registry.py [--repeats 6] [--no-write]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from benchlib import (
    announce_machine,
    busy_note,
    fresh_export,
    publish,
    section_head,
)

NAME = "onnx_registry"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=6)
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    from torch.onnx._internal._lazy_import import onnxscript_apis

    from visionpipe import warm

    info = announce_machine()
    original = onnxscript_apis.get_torchlib_ops
    warm.keep_torchlib_ops()
    kept = onnxscript_apis.get_torchlib_ops
    times: dict[str, list[float]] = {"torch": [], "kept": []}
    with tempfile.TemporaryDirectory() as tmp:
        dest = Path(tmp) / "model.onnx"
        fresh_export("tutorial_cnn", dest, [str(i) for i in range(10)])  # warm-up, not timed
        for _ in range(args.repeats):
            for way, listing in (("torch", original), ("kept", kept)):
                onnxscript_apis.get_torchlib_ops = listing
                start = time.perf_counter()
                fresh_export("tutorial_cnn", dest, [str(i) for i in range(10)])
                times[way].append(time.perf_counter() - start)
                print(f"  {way}: {times[way][-1]:.2f} s", flush=True)
    onnxscript_apis.get_torchlib_ops = original
    torch_s, kept_s = (statistics.median(times[k]) for k in ("torch", "kept"))
    lines = [
        *section_head("The ONNX exporter's table, rebuilt per export", NAME, info),
        f"`export_onnx` of the tutorial CNN (32 px), one warmed process, {args.repeats} calls each,"
        f" alternating: as torch lists torchlib's functions, {torch_s:.2f} s (median); with the"
        f" list kept (`warm.keep_torchlib_ops`, what the warm process does before its export"
        f" stages fork), {kept_s:.2f} s ({kept_s - torch_s:+.2f} s a call). The exported bytes"
        " are the same (tests/unit/test_export.py).",
        *busy_note(info),
    ]
    payload = {"machine": info, "args": vars(args), "seconds": times}
    publish(NAME, "\n".join(lines), payload, not args.no_write)


if __name__ == "__main__":
    main()
