"""A visionpipe-shaped ONNX model built in milliseconds, without torch or training.

The graph averages each colour channel and scales the means into logits, so class k wins on an
image brightest in channel k (the tiny datasets' rule) and the probabilities vary from image to
image. It carries the metadata an export carries, so `onnxrt.open_exported` takes it as one.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

CLASSES = ["cat", "dog", "frog"]


def write_tiny_onnx(
    path: Path, classes: list[str] = CLASSES, size: int = 16, diverged: bool = False
) -> Path:
    """model.onnx at `path`: float [batch, 3, size, size] images to [batch, len(classes)] logits
    (with `diverged`, NaN logits, as a model whose training diverged gives)."""
    weights = np.zeros((3, len(classes)), np.float32)
    for k in range(len(classes)):
        weights[k % 3, k] = 8.0  # channel means in [0, 1] -> logits that differ by a few units
    bias = np.linspace(-0.5, 0.5, len(classes), dtype=np.float32)
    if diverged:
        bias[:] = np.nan
    graph = helper.make_graph(
        [
            helper.make_node("GlobalAveragePool", ["image"], ["pooled"]),
            helper.make_node("Flatten", ["pooled"], ["means"], axis=1),
            helper.make_node("Gemm", ["means", "weights", "bias"], ["logits"]),
        ],
        "tiny",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["batch", 3, size, size])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", len(classes)])],
        [numpy_helper.from_array(weights, "weights"), numpy_helper.from_array(bias, "bias")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8  # readable by every onnxruntime the lock allows
    helper.set_model_props(model, {"classes": json.dumps(classes), "image_size": str(size)})
    onnx.checker.check_model(model)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return path
