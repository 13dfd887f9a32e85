"""The batch path: shuffle, slice, augment, shard and convert, as batched tensor ops on the device.

`Batches` is to visionpipe what airbench's loader is to airbench: everything between the uint8
training set and a model input happens in its `epoch` iterator, so the step loop only steps.
Augmentation draws come from one CPU generator (seeded by train.seed) in a fixed order, so a run
and a resumed run see the same batches, whatever the device.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from visionpipe.config.train import TrainConfig
from visionpipe.distributed import Dist
from visionpipe.models import to_input


def to_device(t: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A host tensor's copy on `device`, queued without waiting for the GPU.

    A blocking copy to a GPU waits until the GPU has finished everything queued before it, so the
    host could not prepare the next batch while the GPU trains on this one. From pageable memory
    the non-blocking copy is still safe: CUDA stages the bytes before the call returns.
    """
    return t.to(device, non_blocking=True)


def batch_crop(
    x: torch.Tensor, padding: int, gen: torch.Generator, mode: str = "zeros"
) -> torch.Tensor:
    """Random crops of a uint8 batch after zero or reflect padding, as one gather (no loop)."""
    b, c, h, w = x.shape
    pad_mode = "constant" if mode == "zeros" else mode
    padded = F.pad(x, (padding, padding, padding, padding), mode=pad_mode)
    dy = to_device(torch.randint(0, 2 * padding + 1, (b,), generator=gen), x.device)
    dx = to_device(torch.randint(0, 2 * padding + 1, (b,), generator=gen), x.device)
    rows = (dy[:, None] + torch.arange(h, device=x.device))[:, None, :, None]
    cols = (dx[:, None] + torch.arange(w, device=x.device))[:, None, None, :]
    bidx = torch.arange(b, device=x.device)[:, None, None, None]
    cidx = torch.arange(c, device=x.device)[None, :, None, None]
    return padded[bidx, cidx, rows, cols]


def batch_flip_lr(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    flip = to_device(torch.rand(x.shape[0], generator=gen) < 0.5, x.device)
    return flip_where(x, flip)


def flip_where(x: torch.Tensor, flip: torch.Tensor) -> torch.Tensor:
    """Mirror the images of a batch where the bool vector `flip` is true."""
    return torch.where(flip[:, None, None, None], x.flip(3), x)


def alternate_flip_mask(n: int, seed: int) -> torch.Tensor:
    """Which images are mirrored in even epochs under `flip: alternate` (the rest in odd ones).

    Drawn from its own generator seeded by train.seed, so a resumed run draws the same mask
    without storing it.
    """
    return torch.rand(n, generator=torch.Generator().manual_seed(seed + 1)) < 0.5


@dataclass
class Batch:
    x: torch.Tensor  # float [0, 1] model input on the device: this rank's shard
    y: torch.Tensor
    size: int  # images in the global batch (all ranks): what the loss is averaged over
    seen: int  # images of the epoch up to and including this batch


class Batches:
    """Batches of the uint8 training set, one epoch at a time."""

    def __init__(
        self,
        images: torch.Tensor,
        labels: torch.Tensor,
        cfg: TrainConfig,
        device: torch.device,
        gen: torch.Generator,
        ddp: Dist,
    ) -> None:
        self.images, self.labels = images, labels  # on the device when it fits, else host
        self.cfg, self.device, self.gen, self.ddp = cfg, device, gen, ddp
        n, bs = len(labels), cfg.batch_size
        # A last batch of one image joins the batch before it: BatchNorm cannot train on one
        # value per channel, which is what a 1x1 map gives (resnet18's last block at 32 px).
        self.steps_per_epoch = max(1, n // bs) if n % bs == 1 else -(-n // bs)
        smallest = min(bs, n - bs * (self.steps_per_epoch - 1))  # images in the least batch
        # Images one rank takes of a batch (rank r takes r::world), over the epoch's batch sizes.
        sizes = {smallest, bs} if self.steps_per_epoch > 1 else {smallest}
        world = ddp.world_size
        self.shard_sizes = {len(range(r, b, world)) for b in sizes for r in range(world)}
        self.flip_mask = None
        if cfg.augment.flip == "alternate":
            self.flip_mask = alternate_flip_mask(len(labels), cfg.seed).to(images.device)

    def epoch(self, epoch: int, steps: Iterable[int] | None = None) -> Iterator[Batch]:
        """The batches of epoch `epoch` (0-based); `steps` picks which (default: all)."""
        bs, last = self.cfg.batch_size, self.steps_per_epoch - 1
        perm = to_device(torch.randperm(len(self.labels), generator=self.gen), self.images.device)
        for i in steps if steps is not None else range(self.steps_per_epoch):
            idx = perm[i * bs :] if i == last else perm[i * bs : (i + 1) * bs]
            x = self._augment(to_device(self.images[idx], self.device), idx, epoch)
            y = to_device(self.labels[idx], self.device)
            # Every rank draws the same augmentation for the whole global batch, then keeps its
            # shard: the result does not depend on the process count.
            if self.ddp.enabled:
                rank, world = self.ddp.rank, self.ddp.world_size
                x, y = x[rank::world], y[rank::world]
            x = to_input(
                x, torch.channels_last if self.cfg.channels_last else torch.contiguous_format
            )
            yield Batch(x, y, len(idx), i * bs + len(idx))

    def _augment(self, x: torch.Tensor, idx: torch.Tensor, epoch: int) -> torch.Tensor:
        aug = self.cfg.augment
        if aug.crop_padding:
            x = batch_crop(x, aug.crop_padding, self.gen, aug.padding_mode)
        if self.flip_mask is not None:
            x = flip_where(x, to_device(self.flip_mask[idx] ^ bool(epoch % 2), self.device))
        elif aug.flip:
            x = batch_flip_lr(x, self.gen)
        return x
