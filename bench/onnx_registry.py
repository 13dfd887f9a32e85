"""What torch's ONNX exporter spends rebuilding its ATen->ONNX table on every export.

`torch.onnx.export(dynamo=True)` builds `ONNXRegistry.from_torchlib()` anew for each call
(onnxscript parses about 500 functions' source to read their domain). This times the export stage's
own call (`export.export_onnx` of the tutorial CNN at 32 px) in one warmed process, alternating: as
torch does it, and with the table built once and copied per call (what the warm process could hand
its forked export stages). A decision aid: is caching it, a patch of torch internals, worth it?

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


def _cached_registry() -> tuple[object, object]:
    """torch's `from_torchlib`, and a stand-in that builds each opset's table once and copies."""
    from torch.onnx._internal.exporter import _registration

    cls = _registration.ONNXRegistry
    original = cls.__dict__["from_torchlib"]
    built: dict[int, object] = {}

    def cached(opset_version: int = 18) -> object:
        if opset_version not in built:
            built[opset_version] = original.__func__(cls, opset_version=opset_version)
        table, copy = built[opset_version], cls()
        copy._opset_version = table._opset_version
        copy.functions = {k: list(v) for k, v in table.functions.items()}
        return copy

    return original, staticmethod(cached)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=6)
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    from torch.onnx._internal.exporter import _registration

    info = announce_machine()
    original, cached = _cached_registry()
    times: dict[str, list[float]] = {"torch": [], "cached": []}
    with tempfile.TemporaryDirectory() as tmp:
        dest = Path(tmp) / "model.onnx"
        fresh_export("tutorial_cnn", dest, [str(i) for i in range(10)])  # warm-up, not timed
        for _ in range(args.repeats):
            for way, method in (("torch", original), ("cached", cached)):
                _registration.ONNXRegistry.from_torchlib = method
                start = time.perf_counter()
                fresh_export("tutorial_cnn", dest, [str(i) for i in range(10)])
                times[way].append(time.perf_counter() - start)
                print(f"  {way}: {times[way][-1]:.2f} s", flush=True)
    _registration.ONNXRegistry.from_torchlib = original
    torch_s, cached_s = (statistics.median(times[k]) for k in ("torch", "cached"))
    lines = [
        *section_head("The ONNX exporter's table, rebuilt per export", NAME, info),
        f"`export_onnx` of the tutorial CNN (32 px), one warmed process, {args.repeats} calls each,"
        f" alternating: as torch builds its table, {torch_s:.2f} s (median); with the table built"
        f" once and copied, {cached_s:.2f} s ({cached_s - torch_s:+.2f} s a call). Not adopted: it"
        " would patch a private torch API (`_registration.ONNXRegistry`) in the warm process,"
        " for a fifth to a quarter of an export stage of ~2.5 s; a candidate where export time"
        " counts.",
        *busy_note(info),
    ]
    payload = {"machine": info, "args": vars(args), "seconds": times}
    publish(NAME, "\n".join(lines), payload, not args.no_write)


if __name__ == "__main__":
    main()
