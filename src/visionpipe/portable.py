"""The portable export form: the same model, written with ONNX graphs every runtime we test reads.

`portable_model` returns a copy of a `Classifier` that computes the same function (to float
rounding) but exports differently where a runtime cannot read the default graph:

- the exact GELU as `0.5 * (x * (1 + erf(x / sqrt 2)))`: OpenCV DNN (4.x and 5.x) crashes with
  SIGSEGV when it fuses the exporter's `x * (0.5 * (1 + erf(x / sqrt 2)))` subgraph into its GELU
  layer; this association order is not fused and reads as plain elementwise layers;
- the TTA's mirror as a Gather of the columns in reverse order: OpenCV 4.x cannot read the
  default export's flip, a Slice with step -1.

The weights and their names are the model's own, so the parity check compares it like the default.
"""

from __future__ import annotations

import copy
import math

import torch
from torch import nn

from visionpipe.models import Classifier


class ErfGelu(nn.Module):
    """nn.GELU() (exact, erf-based), its multiplications in the order OpenCV DNN reads."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return 0.5 * (x * (1 + torch.erf(x / math.sqrt(2))))


class PortableClassifier(Classifier):
    """`Classifier` whose TTA mirror exports as a Gather rather than a negative-step Slice."""

    def mirror(self, x: torch.Tensor) -> torch.Tensor:
        columns = torch.arange(x.shape[-1] - 1, -1, -1, device=x.device)
        return x.index_select(-1, columns)


def portable_model(model: Classifier) -> PortableClassifier:
    """A copy of `model` in the portable form; `model` itself is left as it is."""
    if not isinstance(model, Classifier):
        raise TypeError(f"portable_model takes a visionpipe Classifier, got {type(model).__name__}")
    net = copy.deepcopy(model.net)
    for parent in list(net.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, nn.GELU):
                if child.approximate != "none":
                    raise ValueError(f"portable_model: GELU {name!r} is not the exact (erf) one")
                setattr(parent, name, ErfGelu())
    normalize = copy.deepcopy(model.normalize)
    portable = PortableClassifier(net, None, model.tta)
    portable.normalize = normalize
    return portable.train(model.training)
