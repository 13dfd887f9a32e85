"""The portable export form: the same model, written with ONNX graphs every runtime we test reads.

`portable_model` returns a copy of a `Classifier` that computes the same function (to float
rounding) but exports differently where a runtime cannot read the default graph:

- the exact GELU as `(0.5 * x) * (1 + erf(x / sqrt 2))`: OpenCV DNN (4.x and 5.x) crashes with
  SIGSEGV in readNetFromONNX on the exporter's `x * (0.5 * (1 + erf(x / sqrt 2)))`, and reads
  this order; so does MNN, whose converter turns `0.5 * (x * (1 + erf(x / sqrt 2)))` (OpenCV's
  own fusion pattern) into its tanh-approximate GELU, 5e-4 off;
- the TTA's mirror as a Gather of the columns in reverse order: OpenCV 4.x cannot read the
  default export's flip, a Slice with step -1;
- an adaptive average pool whose input side is not a multiple of its output side (VGG16's 7x7
  pool on the 1x1 map of a 32-pixel image) as two matrix products with the pooling weights:
  the exporter writes that pool as GatherND, which OpenCV 4.x has no layer for;
- the hard sigmoid (MobileNetV3's squeeze-excitation gate) as `clamp(x + 3, 0, 6) / 6`: OpenCV
  DNN (4.x and 5.x) gives wrong values for the exporter's HardSigmoid when a Mul takes its
  output, and reads this form right.

The weights and their names are the model's own, so the parity check compares it like the default.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass

import torch
from torch import nn

from visionpipe.models import Classifier, Normalize


class ErfGelu(nn.Module):
    """nn.GELU() (exact, erf-based), its multiplications in the order OpenCV DNN and MNN read."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (0.5 * x) * (1 + torch.erf(x / math.sqrt(2)))


class ClipHardsigmoid(nn.Module):
    """nn.Hardsigmoid() as `clamp(x + 3, 0, 6) / 6`, which exports as Add, Clip, Div."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.clamp(x + 3, 0, 6) / 6


class MatrixAdaptiveAvgPool(nn.Module):
    """nn.AdaptiveAvgPool2d for one input size, as `rows @ x @ cols.T` (each row of `rows` and
    `cols` averages one output cell's window, PyTorch's floor/ceil windows)."""

    def __init__(self, in_size: tuple[int, int], out_size: tuple[int, int]) -> None:
        super().__init__()
        self.register_buffer("rows", _pool_matrix(in_size[0], out_size[0]))
        self.register_buffer("cols", _pool_matrix(in_size[1], out_size[1]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.matmul(torch.matmul(self.rows, x), self.cols.T)


def _pool_matrix(size: int, out: int) -> torch.Tensor:
    weights = torch.zeros(out, size)
    for i in range(out):
        start, end = (i * size) // out, -(-((i + 1) * size) // out)
        weights[i, start:end] = 1 / (end - start)
    return weights


class PortableClassifier(Classifier):
    """`Classifier` whose TTA mirror exports as a Gather rather than a negative-step Slice."""

    def mirror(self, x: torch.Tensor) -> torch.Tensor:
        columns = torch.arange(x.shape[-1] - 1, -1, -1, device=x.device)
        return x.index_select(-1, columns)


@dataclass(frozen=True)
class PortableForm:
    """The model to export, and what the portable form rewrote (empty: nothing needed it, and
    `model` is the original, so the export is the default one byte for byte)."""

    model: Classifier
    rewrites: list[str]


def portable_model(model: Classifier, image_size: int) -> PortableForm:
    """`model`, which takes `image_size`-pixel images, in the portable form: a copy where
    anything needs rewriting; `model` itself is left as it is."""
    if not isinstance(model, Classifier):
        raise TypeError(f"portable_model takes a visionpipe Classifier, got {type(model).__name__}")
    net = copy.deepcopy(model.net)
    pool_inputs = _pool_input_sizes(net, image_size)
    rewrites: list[str] = []
    for parent in list(net.modules()):
        for name, child in list(parent.named_children()):
            # The tanh approximation exports without Erf, which no runtime here trips on.
            if isinstance(child, nn.GELU) and child.approximate == "none":
                setattr(parent, name, ErfGelu())
                rewrites.append("GELU as (0.5 * x) * (1 + erf(x / sqrt 2))")
            elif isinstance(child, nn.Hardsigmoid):
                setattr(parent, name, ClipHardsigmoid())
                rewrites.append("HardSigmoid as clamp(x + 3, 0, 6) / 6")
            elif isinstance(child, nn.AdaptiveAvgPool2d):
                out = _pair(child.output_size, pool_inputs[child])
                if any(i % o for i, o in zip(pool_inputs[child], out, strict=True)):
                    setattr(parent, name, MatrixAdaptiveAvgPool(pool_inputs[child], out))
                    rewrites.append(f"adaptive average pool {pool_inputs[child]}->{out} as MatMul")
    if model.tta:
        rewrites.append("TTA mirror as Gather")
    if not rewrites:
        return PortableForm(model, [])
    normalize = model.normalize if isinstance(model.normalize, Normalize) else None
    portable = PortableClassifier(net, copy.deepcopy(normalize), model.tta)
    return PortableForm(portable.train(model.training), sorted(set(rewrites)))


def _pool_input_sizes(net: nn.Module, image_size: int) -> dict[nn.Module, tuple[int, int]]:
    """The (height, width) each adaptive average pool of `net` sees on an `image_size` image."""
    sizes: dict[nn.Module, tuple[int, int]] = {}
    pools = [m for m in net.modules() if isinstance(m, nn.AdaptiveAvgPool2d)]

    def record(pool: nn.Module, args: tuple[torch.Tensor, ...], _: torch.Tensor) -> None:
        sizes[pool] = (args[0].shape[-2], args[0].shape[-1])

    hooks = [pool.register_forward_hook(record) for pool in pools]
    try:
        with torch.no_grad():
            net.eval()(torch.zeros(1, 3, image_size, image_size))
    finally:
        for hook in hooks:
            hook.remove()
    return sizes


def _pair(size: int | tuple[int | None, int | None], in_size: tuple[int, int]) -> tuple[int, int]:
    """An adaptive pool's output size as (height, width); None keeps the input's side."""
    pair = (size, size) if isinstance(size, int) else size
    return tuple(i if o is None else o for o, i in zip(pair, in_size, strict=True))
