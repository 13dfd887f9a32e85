"""What every model is wrapped in: input conversion, in-graph normalization, test-time augmentation.

Every model takes float RGB in [0, 1], NCHW; normalization (when on) lives inside the model, so the
exported ONNX graph takes the same input and callers never need mean/std.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn


def to_input(
    images: torch.Tensor, memory_format: torch.memory_format = torch.preserve_format
) -> torch.Tensor:
    """uint8 NCHW pixels -> the float RGB in [0, 1] every model takes, in `memory_format`.

    One copy converts the dtype and the layout together (not a float copy, then a
    channels_last copy of it).
    """
    return images.to(torch.float32, memory_format=memory_format).div_(255)


class Normalize(nn.Module):
    """(x - mean) / std per channel; buffers so they travel with the state_dict and the ONNX."""

    def __init__(self, mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


class Classifier(nn.Module):
    """`net` behind an optional in-graph normalization, with optional test-time augmentation.

    TTA lives in the eval-mode forward, so evaluation, the ONNX export and predict see the same
    logits. Level 1 averages the image and its mirror; level 2 gives those half the weight and
    the mirrored one-pixel shifts up-left and down-right (reflect-padded) the other half, as
    airbench does. All views go through the net as one batch.
    """

    def __init__(self, net: nn.Module, normalize: Normalize | None, tta: int = 0) -> None:
        super().__init__()
        self.normalize = normalize if normalize is not None else nn.Identity()
        self.net = net
        self.tta = tta

    def prepare(self, images: torch.Tensor) -> None:
        """Let the net initialise itself from the uint8 training images, if it does that."""
        prepare = getattr(self.net, "prepare", None)
        if prepare is not None:
            prepare(images, self.normalize)

    def lr_stops(self) -> dict[str, tuple[list[nn.Parameter], int]]:
        """Parameters the net trains for a set number of epochs only: {name: (params, epochs)}."""
        stops = getattr(self.net, "lr_stops", None)
        return stops() if stops is not None else {}

    @property
    def views(self) -> int:
        """Images the net sees per input image in eval mode (1 without TTA)."""
        return {0: 1, 1: 2, 2: 6}[self.tta]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training or self.tta == 0:
            return self.net(self.normalize(x))
        views = [x]
        weights = [0.5]
        if self.tta == 2:
            h, w = x.shape[-2:]
            padded = F.pad(x, (1, 1, 1, 1), mode="reflect")
            views += [padded[..., :h, :w], padded[..., 2:, 2:]]
            weights = [0.25, 0.125, 0.125]
        views += [v.flip(-1) for v in views]
        logits = self.net(self.normalize(torch.cat(views)))
        logits = logits.view(len(views), x.shape[0], logits.shape[-1])
        return sum(w * logits[i] for i, w in enumerate(weights * 2))
