"""Batched inference over uint8 images, and the loss and accuracy of its logits."""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from visionpipe.models import Classifier, to_input
from visionpipe.precision import autocast, strict_fp32


def loss_figure(value: float) -> float:
    """A loss as the metric files keep it: 6 decimals (float32's 0.3333333432674408 is noise),
    and below 0.1 as many more as keep 6 significant digits, so that a loss near zero (1.45e-06,
    an overfitting run's) keeps its trend instead of flattening to 0.000001."""
    if not math.isfinite(value) or abs(value) >= 0.1:
        return round(value, 6)
    return float(f"{value:.6g}")


def loss_text(value: float, digits: int = 6) -> str:
    """A loss in the plot CSVs: `loss_figure`'s digits, in 0.000000 form from 0.1 up (and at 0),
    `digits` significant ones from a million up (a diverging run's); 4 for the console's."""
    short = f"{value:.{digits}g}"
    if math.isfinite(value) and abs(value) >= 1e6:  # a diverging run's 4.532e+25, not 26 digits
        return short
    if not math.isfinite(value) or abs(float(short)) >= 0.1 or value == 0:  # 0.099996 too
        return f"{value:.{digits}f}"
    return short


# On a CPU, images per forward pass beyond about a hundred only spill the caches: scoring
# batches of 1,024 took 1.3-1.5x as long as batches of 64-128 on a 2-core EPYC.
CPU_IMAGES_PER_PASS = 128


def eval_batch_size(train_batch_size: int, views: int, device: torch.device) -> int:
    """Images per inference batch: the model then sees at most `train_batch_size` at once
    (test-time augmentation multiplies each image into `views`), under the training memory,
    and on a CPU at most CPU_IMAGES_PER_PASS."""
    per_pass = (
        train_batch_size if device.type != "cpu" else min(train_batch_size, CPU_IMAGES_PER_PASS)
    )
    return max(1, per_pass // views)


@torch.no_grad()
def predict_logits(
    model: nn.Module,
    images: torch.Tensor,
    device: torch.device,
    batch_size: int,
    strict: bool = True,
    amp: torch.dtype | None = None,
) -> torch.Tensor:
    """Float32 logits on CPU for uint8 NCHW `images` (any device), in eval mode.

    fp32 by default, on every device: the figures then describe the exported fp32 ONNX model,
    and mean the same whatever GPU (or CPU) computed them. `strict=False` lets a GPU use TF32
    (see `strict_fp32`), for figures that need not match the CPU's to the last digits. `amp`
    (bf16 or fp16) autocasts the forward to it: about twice as fast where `autocast_dtype` picks
    it, and a little off the fp32 figures (docs/results.md#scoring-in-bf16).
    """
    model.eval()
    out = []
    with strict_fp32(device) if strict else contextlib.nullcontext(), autocast(device, amp):
        for i in range(0, len(images), batch_size):
            x = images[i : i + batch_size].to(device, non_blocking=True)
            out.append(model(to_input(x, torch.channels_last)).float().cpu())
    return torch.cat(out) if out else torch.empty(0)


def loss_and_accuracy(logits: torch.Tensor, labels: torch.Tensor) -> tuple[float, float]:
    """Mean cross-entropy and top-1 accuracy of CPU float32 `logits` against `labels`. A row
    with a non-finite logit (a diverged model) predicts nothing and counts as wrong: the argmax of
    NaN is class 0, which would score a NaN model at class 0's share of the split."""
    labels = labels.cpu()
    loss = F.cross_entropy(logits, labels).item()
    right = (logits.argmax(1) == labels) & torch.isfinite(logits).all(1)
    return loss, right.float().mean().item()


@dataclass
class Scores:
    loss: float  # mean cross-entropy
    accuracy: float
    preds: torch.Tensor  # predicted class per image, on the CPU


def evaluate_split(
    model: Classifier,
    images: torch.Tensor,
    labels: torch.Tensor,
    device: torch.device,
    train_batch_size: int,
) -> Scores:
    """Loss, accuracy and predictions over a split, in batches no larger than training's."""
    batch = eval_batch_size(train_batch_size, model.views, device)
    # A curve, not the score: the GPU's TF32 convolutions are allowed here (5x faster than
    # strict fp32 on an H100); the evaluate stage scores in strict fp32.
    logits = predict_logits(model, images, device, batch, strict=False)
    return Scores(*loss_and_accuracy(logits, labels), logits.argmax(1))
