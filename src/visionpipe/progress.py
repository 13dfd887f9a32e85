"""Where a run stands after its last complete epoch, and whether it should stop early."""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from typing import Any

from visionpipe.inference import loss_figure, loss_text
from visionpipe.tracking import EpochRecord, History

log = logging.getLogger(__name__)


@dataclass
class Progress:
    """What a resume restores besides the weights: epochs done, their history, early stopping."""

    epoch: int = 0  # epochs done
    history: History = field(default_factory=History)
    best_val: float = math.inf  # the val loss of the last epoch that improved on the ones before
    bad_epochs: int = 0  # epochs since it last improved
    stopped: bool = False  # ended before its last epoch (diverged, or early stopping)

    def update(self, record: EpochRecord, patience: int, min_delta: float = 0.0) -> bool:
        """Count a finished epoch; True when training should stop (diverged or no progress).
        An epoch improves when its val loss is below the best one by more than `min_delta`:
        a loss creeping down by 1e-6 a time is no progress worth waiting for."""
        self.epoch = record.epoch
        if record.val_loss < self.best_val - min_delta:
            self.best_val, self.bad_epochs = record.val_loss, 0
        else:
            self.bad_epochs += 1
        return diverged(record) or (patience > 0 and self.bad_epochs >= patience)

    def summary(self, epochs: int) -> dict[str, Any]:
        """metrics/train.json: how the run of `epochs` ended, and its last epoch's figures. A
        stop at the last epoch (a divergence there) is none before the end."""
        last = EpochRecord.from_row(self.history.epochs[-1])
        return {
            "epochs_run": len(self.history.epochs),
            "stopped_early": self.stopped and len(self.history.epochs) < epochs,
            "diverged": diverged(last),
            "train_loss": loss_figure(last.train_loss),
            "val_loss": loss_figure(last.val_loss),
            "val_accuracy": round(last.val_accuracy, 6),
            "best_val_loss": loss_figure(self.lowest_val()),
        }

    def lowest_val(self) -> float:
        """The lowest val loss of the epochs run (best_val is that only without a min_delta)."""
        losses = [EpochRecord.from_row(row).val_loss for row in self.history.epochs]
        return min((v for v in losses if math.isfinite(v)), default=math.inf)


def diverged(record: EpochRecord) -> bool:
    """Whether training diverged by the end of the epoch: its mean train loss is not finite, or
    its val loss (the weights after its last step: an epoch's mean can still be finite when a
    late step made them NaN)."""
    return not (math.isfinite(record.train_loss) and math.isfinite(record.val_loss))


def log_why_stopped(record: EpochRecord, patience: int, lr: float, min_delta: float = 0.0) -> None:
    """Say why a run stopped before its last epoch: it diverged, or stopped improving."""
    if diverged(record):
        log.error(
            "training diverged: train loss %s, val loss %s after epoch %d; stopping. Lower"
            " train.lr (now %g) or add warmup (train.warmup_epochs)",
            loss_text(record.train_loss, 4),  # 1.177e+34, not 26 digits
            loss_text(record.val_loss, 4),
            record.epoch,
            lr,
        )
    else:
        epochs = "epoch" if patience == 1 else "epochs"
        by = f" by more than {min_delta:g} (train.min_delta)" if min_delta else ""
        log.info("early stopping: val loss has not improved%s for %d %s", by, patience, epochs)
