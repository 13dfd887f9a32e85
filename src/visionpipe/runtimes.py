"""The runtimes an export is checked in, and what in an ONNX graph each is known not to read.

`RUNTIMES` is the table: one entry per runtime, with the package and versions the test suite runs
every model of the zoo in (tests/unit/test_runtimes.py) and `problems`, which finds in a graph
what stops that runtime. The export stage logs the verdict, so a user learns there, not from a
crash on the robot, that OpenCV DNN needs `export.portable: true`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Runtime:
    """A runtime the exports are tested in."""

    label: str  # its name as users know it
    requirement: str  # the package (PyPI unless it says npm) and the versions the tests run
    problems: Callable[[onnx.GraphProto], list[str]]  # why it cannot run a graph; [] if none


def _constant(graph: onnx.GraphProto, name: str) -> np.ndarray | None:
    """The value of tensor `name` when it is an initializer or a Constant node's output."""
    for init in graph.initializer:
        if init.name == name:
            return numpy_helper.to_array(init)
    for node in graph.node:
        if node.op_type == "Constant" and node.output[0] == name:
            values = [a.t for a in node.attribute if a.name == "value"]
            return numpy_helper.to_array(values[0]) if values else None
    return None


def exporter_gelus(graph: onnx.GraphProto) -> list[str]:
    """The exact GELUs in the form torch's exporter writes, `x * (0.5 * (1 + erf(x / c)))`, by
    their last node's name: OpenCV DNN's readNetFromONNX crashes (SIGSEGV) on that subgraph."""
    producer = {out: node for node in graph.node for out in node.output}
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)

    def only_consumer(name: str, op: str) -> onnx.NodeProto | None:
        nodes = consumers.get(name, [])
        return nodes[0] if len(nodes) == 1 and nodes[0].op_type == op else None

    found = []
    for erf in (n for n in graph.node if n.op_type == "Erf"):
        div = producer.get(erf.input[0])
        add = only_consumer(erf.output[0], "Add")
        half = add and only_consumer(add.output[0], "Mul")
        last = half and only_consumer(half.output[0], "Mul")
        if div is not None and div.op_type == "Div" and last and div.input[0] in last.input:
            found.append(last.name)
    return found


def gated_hardsigmoids(graph: onnx.GraphProto) -> list[str]:
    """The HardSigmoids whose output a Mul takes, by name: how the exporter writes a
    squeeze-excitation gate (MobileNetV3's `x * hardsigmoid(...)`). OpenCV DNN 4.x and 5.x
    compute such a product wrongly, while reading a HardSigmoid with another consumer right."""
    multiplied = {name for node in graph.node if node.op_type == "Mul" for name in node.input}
    return [
        node.name
        for node in graph.node
        if node.op_type == "HardSigmoid" and node.output[0] in multiplied
    ]


def _no_known_problems(graph: onnx.GraphProto) -> list[str]:
    return []


def _opencv_problems(graph: onnx.GraphProto) -> list[str]:
    problems = []
    gelus = exporter_gelus(graph)
    if gelus:
        problems.append(
            f"its readNetFromONNX crashes (SIGSEGV) on the exact GELU written as "
            f"x * (0.5 * (1 + erf(x / sqrt 2))), first at node {gelus[0]!r}"
        )
    gates = gated_hardsigmoids(graph)
    if gates:
        problems.append(
            f"it gives wrong logits for a HardSigmoid whose output is multiplied (a "
            f"squeeze-excitation gate), first at node {gates[0]!r}"
        )
    return problems


def negative_step_slices(graph: onnx.GraphProto) -> list[str]:
    """The Slices with a negative step, by name: how the exporter writes `torch.flip` (the TTA's
    mirror)."""
    found = []
    for node in graph.node:
        steps = (
            _constant(graph, node.input[4])
            if node.op_type == "Slice" and len(node.input) > 4
            else None
        )
        if steps is not None and (steps < 0).any():
            found.append(node.name)
    return found


def _opencv4_problems(graph: onnx.GraphProto) -> list[str]:
    problems = _opencv_problems(graph)
    slices = negative_step_slices(graph)
    if slices:
        problems.append(f"it cannot read a Slice with a negative step (node {slices[0]!r})")
    # It stops at a BOOL constant ("Unsupported data type: BOOL") before it meets the
    # GatherND that an adaptive pool's mask feeds.
    flags = [t.name for t in graph.initializer if t.data_type == onnx.TensorProto.BOOL]
    if flags:
        problems.append(
            f"it reads no BOOL constant, 'Unsupported data type: BOOL' (constant {flags[0]!r})"
        )
    gathers = [n.name for n in graph.node if n.op_type == "GatherND"]
    if gathers:
        problems.append(f"it has no GatherND layer (node {gathers[0]!r})")
    return problems


def _mnn_problems(graph: onnx.GraphProto) -> list[str]:
    slices = negative_step_slices(graph)
    if not slices:
        return []
    return [
        f"the model its converter writes from a Slice with a negative step crashes (SIGSEGV) "
        f"or gives wrong logits on batches of more than a few images (node {slices[0]!r})"
    ]


RUNTIMES: dict[str, Runtime] = {
    "onnxruntime": Runtime("onnxruntime", "onnxruntime", _no_known_problems),
    # OpenVINO's CPU plugin computes in bf16 on CPUs that have it unless asked for f32.
    "openvino": Runtime(
        "OpenVINO (CPU, f32 precision hint)", "openvino>=2026.4", _no_known_problems
    ),
    "opencv5": Runtime("OpenCV DNN 5.x", "opencv-python-headless>=5.1,<6", _opencv_problems),
    "opencv4": Runtime("OpenCV DNN 4.x", "opencv-python-headless==4.14.0.94", _opencv4_problems),
    # The ONNX specification's own evaluator, in numpy: the operators as the spec defines them.
    "onnx_reference": Runtime("the ONNX reference evaluator", "onnx", _no_known_problems),
    # What a web page runs (browsers without WebGPU) and Node.js; pinned by tests/web/package.json.
    "onnxruntime_web": Runtime(
        "onnxruntime-web (WebAssembly)", "onnxruntime-web@1.31.1 (npm)", _no_known_problems
    ),
    # Alibaba's phone runtime; the file converted by the wheel's own MNNConvert, run in fp32
    # without Winograd convolutions (5e-4 off for 5x5 kernels).
    "mnn": Runtime("MNN (CPU, precision high, no Winograd)", "MNN>=3.6.1", _mnn_problems),
}


def problems(graph: onnx.GraphProto) -> dict[str, list[str]]:
    """{runtime name: why it cannot run `graph`} for the runtimes of `RUNTIMES` that cannot."""
    found = {name: runtime.problems(graph) for name, runtime in RUNTIMES.items()}
    return {name: reasons for name, reasons in found.items() if reasons}


def log_support(path: Path, portable: bool) -> dict[str, list[str]]:
    """Log in which runtimes the export at `path` has no layer known to fail, and why the
    others fail. Known from the layers alone: the zoo's models are run in each (test_runtimes);
    a model of one's own is run there by its own test cases."""
    found = problems(onnx.load(str(path), load_external_data=False).graph)
    runs = [RUNTIMES[name].label for name in RUNTIMES if name not in found]
    if runs:
        log.info("%s has no layer known to fail in %s", path, ", ".join(runs))
    else:
        log.info("%s has a layer known to fail in every tested runtime", path)
    fix = (
        "no export form of this model is known to load there"
        if portable
        else "set export.portable: true for a form it reads"
    )
    for name, reasons in found.items():
        log.warning("%s cannot run %s: %s; %s", RUNTIMES[name].label, path, "; ".join(reasons), fix)
    return found
