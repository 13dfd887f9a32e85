"""The train step (zero the gradients, forward, loss, backward, optimizer step), run eagerly or
captured once as a CUDA graph and replayed.

A small model's step on a GPU is bound by the host, not the GPU: on an H100 the tutorial CNN's
batch-64 step computes in 0.35 ms while Python and the dispatcher need 2.5-3 ms to launch its
~63 kernels. A CUDA graph launches them all with one call. The graph is PyTorch's whole-network
capture (docs: "CUDA Graphs", torch.cuda.graph): a few eager steps on a side stream first, then
one capture over static input tensors; each later step copies its batch into them and replays.
What the graph needs, and why `blocker` declines:
- the same shapes every step: a last, smaller batch of an epoch steps eagerly;
- no host reads inside the step: the lr lives in a device tensor per group (the scheduler fills
  it between steps) and the optimizer is the fused one, which takes a tensor lr (AdamW also
  capturable: its step count on the device);
- no GradScaler (fp16 autocast): its inf check reads the GPU every step;
- one process (DDP's gradient hooks are not captured here) and no torch.compile (it makes graphs
  of its own with mode "reduce-overhead").
The scheduler, lookahead and loss bookkeeping stay outside the graph: they write the same
tensors in place, which the graph reads at their addresses.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Callable
from typing import Protocol

import torch
from torch import nn

from visionpipe.batches import Batch
from visionpipe.precision import autocast

log = logging.getLogger(__name__)

# Eager steps before the capture: the first ones allocate optimizer state and initialise
# cuBLAS/cuDNN, which must not happen inside a graph (PyTorch's recipe warms up 3 to 11).
WARMUP_STEPS = 3


def blocker(
    cuda_graph: bool,
    device: torch.device,
    processes: int,
    compiled: bool,
    dtype: torch.dtype | None,
) -> str | None:
    """Why the train step cannot be a CUDA graph here, or None when it can."""
    if not cuda_graph:
        return "train.cuda_graph is false"
    if device.type != "cuda":
        return f"CUDA graphs need a CUDA GPU and this run trains on {device.type}"
    if processes > 1:
        return "this run trains in several processes (DDP)"
    if compiled:
        return "train.compile is true (torch.compile makes graphs of its own)"
    if dtype == torch.float16:
        return "fp16 autocast needs a GradScaler, whose inf check reads the GPU every step"
    return None


class Parts(Protocol):
    """What a step works on: `train.Loop` has all of it."""

    step_model: nn.Module
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    criterion: nn.Module
    device: torch.device
    autocast_dtype: torch.dtype | None


class EagerStep:
    """One optimizer step per call, each op launched as Python reaches it."""

    def __init__(self, parts: Parts, world_size: int = 1, autocast_cache: bool = True) -> None:
        self.parts, self.world_size, self.cache = parts, world_size, autocast_cache

    def __call__(self, batch: Batch) -> torch.Tensor:
        """Train on `batch`; its loss summed over this rank's images, not detached."""
        return self.run(batch.x, batch.y, batch.size)

    def run(self, x: torch.Tensor, y: torch.Tensor, size: int) -> torch.Tensor:
        p = self.parts
        p.optimizer.zero_grad(set_to_none=True)
        with autocast(p.device, p.autocast_dtype, cache=self.cache):
            loss = p.criterion(p.step_model(x), y)
        # The summed loss over the global batch length: with several ranks DDP averages the
        # gradients, so each rank scales by world_size and the result is one process's mean.
        p.scaler.scale(loss * (self.world_size / size)).backward()
        p.scaler.step(p.optimizer)
        p.scaler.update()
        return loss


class Graphs:
    """The CUDA calls a graphed step makes; tests put a CPU stand-in in its place."""

    def warm_up(self, fn: Callable[[], torch.Tensor]) -> torch.Tensor:
        """Run `fn` on a side stream, as a step before a capture must run."""
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            out = fn()
        torch.cuda.current_stream().wait_stream(side)
        return out

    def capture(self, fn: Callable[[], None]) -> Callable[[], None]:
        """Record `fn`'s kernels (without running them); return what replays them."""
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            fn()
        return graph.replay


class GraphedStep:
    """The step as one CUDA graph: `WARMUP_STEPS` eager steps, one capture, then replays.

    The capture waits for a batch of `batch_size` images; a batch of another size (an epoch's
    last) steps eagerly with the same optimizer state. A capture that fails logs why and leaves
    every later step eager: the weights are untouched, since capturing runs no kernel.
    """

    def __init__(self, eager: EagerStep, batch_size: int, graphs: Graphs | None = None) -> None:
        self.eager, self.batch_size, self.graphs = eager, batch_size, graphs or Graphs()
        self.done = 0  # steps taken before the capture
        self.replay: Callable[[], None] | None = None
        self.failed = False
        self.static: tuple[torch.Tensor, torch.Tensor, int] | None = None
        self.loss = torch.zeros(())
        self.lrs: list[int] = []

    def __call__(self, batch: Batch) -> torch.Tensor:
        """Train on `batch`; its summed loss, valid until the next call."""
        if self.failed or len(batch.y) != self.batch_size:
            return self._eager(batch)
        if self.done < WARMUP_STEPS:
            self.done += 1
            return self.graphs.warm_up(lambda: self._eager(batch))
        if self.replay is None and not self._capture(batch):
            return self._eager(batch)
        self._check_lr_tensors()
        x, y, _ = self.static  # type: ignore[misc]
        x.copy_(batch.x)
        y.copy_(batch.y)
        self.replay()  # type: ignore[misc]
        return self.loss

    def _eager(self, batch: Batch) -> torch.Tensor:
        with warnings.catch_warnings():
            # AdamW built capturable for the graph says so on each step it takes outside one.
            warnings.filterwarnings("ignore", "This instance was constructed with capturable")
            return self.eager(batch).detach()

    def _check_lr_tensors(self) -> None:
        # A scheduler that assigned a new lr object instead of filling the captured tensor
        # would leave the graph training at a frozen lr, silently.
        groups = self.eager.parts.optimizer.param_groups
        if [id(g["lr"]) for g in groups] != self.lrs:
            raise RuntimeError(
                "train.cuda_graph: the optimizer's lr tensors were replaced after the capture, "
                "so the graph would not see the schedule; set train.cuda_graph: false"
            )

    def _capture(self, batch: Batch) -> bool:
        self.static = (batch.x.clone(), batch.y.clone(), batch.size)
        self.lrs = [id(g["lr"]) for g in self.eager.parts.optimizer.param_groups]
        self.loss = torch.zeros((), device=batch.x.device)
        self.eager.parts.optimizer.zero_grad(set_to_none=True)
        try:
            self.replay = self.graphs.capture(self._body)
        except Exception as error:  # any capture failure falls back the same way
            self.failed, self.static = True, None
            log.warning(
                "train.cuda_graph: could not capture the train step as a CUDA graph (%s: %s); "
                "every step runs eagerly instead (same results, more host time per step)",
                type(error).__name__,
                str(error).splitlines()[0] if str(error) else "",
            )
            return False
        log.info("train step captured as a CUDA graph after %d eager steps", self.done)
        return True

    def _body(self) -> None:
        x, y, size = self.static  # type: ignore[misc]
        self.loss.copy_(self.eager.run(x, y, size).detach())


def make_step(
    parts: Parts, world_size: int, graphed: bool, batch_size: int
) -> EagerStep | GraphedStep:
    """The step `train.train_epoch` calls; `graphed` from `blocker(...) is None`."""
    if not graphed:
        return EagerStep(parts, world_size)
    # Autocast's cache of cast weights must be off under capture (PyTorch's CUDA graph notes).
    return GraphedStep(EagerStep(parts, world_size, autocast_cache=False), batch_size)
