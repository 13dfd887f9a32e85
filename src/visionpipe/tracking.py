"""What a run records as it goes: TensorBoard, the per-epoch and per-step history, plot files."""

from __future__ import annotations

import logging
import shutil
import warnings
from dataclasses import asdict, dataclass, field, fields
from typing import Any

import torch
from torch import nn

from visionpipe import paths
from visionpipe.fsutil import write_text
from visionpipe.models import Classifier, to_input

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class EpochRecord:
    """One epoch's figures: the columns of metrics/plots/epochs.csv, in this order.

    TensorBoard logs each under its own name but `train_loss`, which it calls
    `epoch_train_loss` to keep it apart from the per-step train loss.
    """

    epoch: int
    train_loss: float = field(metadata={"csv": ".6f", "tb": "epoch_train_loss"})
    val_loss: float = field(metadata={"csv": ".6f"})
    val_accuracy: float = field(metadata={"csv": ".6f"})
    lr: float = field(metadata={"csv": ".6g"})


@dataclass
class History:
    epochs: list[dict[str, float]] = field(default_factory=list)  # EpochRecords, as dicts
    steps: list[dict[str, float]] = field(default_factory=list)  # train loss every log_every


def write_plots(history: History) -> None:
    columns = fields(EpochRecord)
    lines = [",".join(f.name for f in columns)]
    for r in history.epochs:
        lines.append(",".join(format(r[f.name], f.metadata.get("csv", "")) for f in columns))
    write_text(paths.PLOT_EPOCHS, "\n".join(lines) + "\n")
    lines = ["step,train_loss"] + [f"{r['step']},{r['train_loss']:.6f}" for r in history.steps]
    write_text(paths.PLOT_STEPS, "\n".join(lines) + "\n")


class Tracker:
    """TensorBoard and the history on rank 0; a silent stand-in on the other ranks.

    `fresh`: a run from epoch 0 clears the event files of any earlier run first; a resumed run
    appends to them.
    """

    def __init__(self, enabled: bool, history: History, fresh: bool) -> None:
        self.tb: Any = None
        self.history = history
        if enabled:
            from torch.utils.tensorboard import SummaryWriter

            if fresh:
                shutil.rmtree(paths.TB_DIR, ignore_errors=True)
            self.tb = SummaryWriter(str(paths.TB_DIR))

    def start(self, model: Classifier, sample: torch.Tensor) -> None:
        if self.tb is not None:
            log_model_start(self.tb, model, sample)

    def step(self, step: int, train_loss: float) -> None:
        self.history.steps.append({"step": step, "train_loss": train_loss})
        if self.tb is not None:
            self.tb.add_scalar("train_loss", train_loss, step)

    def epoch(self, record: EpochRecord) -> None:
        """Append one epoch's record and log it; rank 0 rewrites the plots."""
        self.history.epochs.append(asdict(record))
        if self.tb is None:
            return
        for f in fields(EpochRecord)[1:]:
            self.tb.add_scalar(f.metadata.get("tb", f.name), getattr(record, f.name), record.epoch)
        self.tb.flush()
        write_plots(self.history)

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()


def log_model_start(writer: Any, model: Classifier, sample: torch.Tensor) -> None:
    """Input grid, first-conv feature maps (the tutorial's conv lesson) and the model graph.

    `sample` (uint8 NCHW, on any device) runs through the model on the model's device; the
    images are brought back to the CPU for writing.
    """
    import torchvision

    sample = sample[:32].cpu()
    writer.add_image("inputs", torchvision.utils.make_grid(sample, nrow=8), 0)
    x = to_input(sample.to(next(model.parameters()).device))
    first_conv = next((m for m in model.modules() if isinstance(m, nn.Conv2d)), None)
    if first_conv is not None:
        with torch.no_grad():
            maps = first_conv(model.normalize(x[:4])).float().cpu()
        for i, fmap in enumerate(maps):
            fmap = fmap[:, None]  # one grey image per output channel
            lo, hi = fmap.amin(), fmap.amax()
            fmap = (fmap - lo) / (hi - lo + 1e-8)
            writer.add_image(
                f"conv1_feature_maps/{i}", torchvision.utils.make_grid(fmap, nrow=8), 0
            )
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # add_graph still uses jit.trace
            writer.add_graph(model, x[:1])
    except Exception as exc:  # tracing fails for some modules; the graph is a nicety, say so
        log.warning("TensorBoard model graph skipped: %s", exc)
