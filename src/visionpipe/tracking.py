"""What a run records as it goes: DVCLive (live in `dvc exp show`, `dvc plots`, VS Code),
TensorBoard (the tutorial's lesson), and the per-epoch and per-step history with its CSV files.

The history is the source of truth: it lives in the checkpoint, and a resumed run replays it into
fresh DVCLive and TensorBoard logs, so its curves have every epoch once.
"""

from __future__ import annotations

import itertools
import json
import logging
import shutil
import time
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields
from typing import Any

import torch
from PIL import Image
from torch import nn

from visionpipe import paths
from visionpipe.fsutil import write_text
from visionpipe.grids import Layout, captioned_grid
from visionpipe.inference import loss_figure, loss_text
from visionpipe.models import Classifier, to_input

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class EpochRecord:
    """One epoch's figures: the columns of metrics/plots/epochs.csv, in this order.

    `live` fields are DVCLive curves too (under that name), and `summary` ones also a column of
    `dvc exp show` (kept to the headline, with short names, so a sweep's table fits 120 columns:
    the losses stay curves). TensorBoard logs each under its own name but
    `train_loss`, which it calls `epoch_train_loss` to keep it apart from the per-step one.
    """

    epoch: int
    train_loss: float = field(
        metadata={"csv": loss_text, "tb": "epoch_train_loss", "live": "train_loss"}
    )
    val_loss: float = field(metadata={"csv": loss_text, "live": "val_loss"})
    val_accuracy: float = field(metadata={"csv": ".6f", "live": "val_acc", "summary": True})
    # The lr the epoch started with (as Lightning's LearningRateMonitor logs it per epoch);
    # it follows from the params: a curve, not a metric.
    lr: float = field(metadata={"csv": ".6g"})

    @classmethod
    def from_row(cls, row: dict[str, float]) -> EpochRecord:
        """A History row as the record it was made from (the row also holds its wall time)."""
        return cls(**{f.name: row[f.name] for f in fields(cls)})


@dataclass
class History:
    """What a run logged, each row with its `wall_time` (seconds since the epoch): a resumed run
    replays the rows into TensorBoard at the times they were first logged."""

    epochs: list[dict[str, float]] = field(default_factory=list)  # EpochRecords, as dicts
    steps: list[dict[str, float]] = field(default_factory=list)  # train loss every log_every


MISCLASSIFIED_LAYOUT = Layout(cell=96, cols=6, lines=2, font_size=11)


def write_plots(history: History) -> None:
    columns = fields(EpochRecord)
    lines = [",".join(f.name for f in columns)]
    for r in history.epochs:
        lines.append(",".join(_csv(r[f.name], f.metadata.get("csv", "")) for f in columns))
    write_text(paths.PLOT_EPOCHS, "\n".join(lines) + "\n")
    lines = ["step,train_loss"]
    lines += [f"{r['step']},{loss_text(r['train_loss'])}" for r in history.steps]
    write_text(paths.PLOT_STEPS, "\n".join(lines) + "\n")


def _csv(value: float, spec: str | Callable[[float], str]) -> str:
    return spec(value) if callable(spec) else format(value, spec)


class Tracker:
    """DVCLive, TensorBoard and the plot files where this process writes outputs; on other
    ranks only the history (which every rank keeps alike) is recorded.

    Each run starts from empty logs; a resumed run writes the epochs it resumes after again from
    the history (`replay`), so the logs never depend on what an interrupted run left. `run`, the
    params that shaped the run (`TrainingParams.hparams`), goes to TensorBoard's HParams tab.
    """

    def __init__(self, enabled: bool, history: History, run: dict[str, Any] | None = None) -> None:
        self.history = history
        self.tb: Any = None
        self.live: Any = None
        if enabled:
            from dvclive import Live
            from torch.utils.tensorboard import SummaryWriter

            shutil.rmtree(paths.TB_DIR, ignore_errors=True)
            self.tb = SummaryWriter(str(paths.TB_DIR))
            # No dvc.yaml of its own (ours declares its files), no HTML report (it would load
            # vega from a CDN), no experiment of its own (the stage runs inside DVC's).
            self.live = Live(str(paths.LIVE_TRAIN), dvcyaml=None, save_dvc_exp=False, report=None)
            if run is not None:
                log_hparams(self.tb, run)
            self.replay()
            if not self.history.epochs:
                self._before_the_first_epoch()

    def replay(self) -> None:
        """Log the history a resumed run starts from, as the interrupted run had."""
        for row in self.history.steps:
            self.tb.add_scalar(
                "train_loss", row["train_loss"], row["step"], walltime=row["wall_time"]
            )
        for row in self.history.epochs:
            self._log_epoch(EpochRecord.from_row(row), row["wall_time"])
        if self.history.epochs:
            write_plots(self.history)

    def _before_the_first_epoch(self) -> None:
        """Empty curves, an empty summary and a sheet saying no epoch has ended. DVC deletes
        the outputs as the stage starts (they are not persistent); until the first epoch ends,
        `dvc plots show` and `dvc exp show` (and VS Code's and Studio's views of them) would
        show each missing file as an error."""
        for f in fields(EpochRecord):
            if name := f.metadata.get("live"):  # DVCLive appends its rows under this header
                write_text(
                    paths.LIVE_TRAIN / "plots" / "metrics" / f"{name}.tsv", f"step\t{name}\n"
                )
        self.live.make_summary()
        self.misclassified(
            captioned_grid([], [], MISCLASSIFIED_LAYOUT, empty="no epoch has ended yet")
        )
        write_plots(self.history)

    def start(
        self, model: Classifier, images: torch.Tensor, labels: torch.Tensor, epoch: int
    ) -> None:
        """The input grid, first-conv feature maps and graph, logged at `epoch` (0: untrained).

        The grid takes a few images of every class (`spread_over_classes`): the first 32 of a
        split in class order, as an image folder's is, would all be of its first class.
        """
        if self.tb is not None:
            shown = spread_over_classes(list(range(len(labels))), labels.tolist(), 32)
            log_model_start(self.tb, model, images[shown], epoch)

    def step(self, step: int, train_loss: float) -> None:
        now = time.time()
        self.history.steps.append({"step": step, "train_loss": train_loss, "wall_time": now})
        if self.tb is not None:
            self.tb.add_scalar("train_loss", train_loss, step, walltime=now)

    def epoch(self, record: EpochRecord, misclassified: Image.Image | None = None) -> None:
        """Record one epoch; where outputs are written, log it everywhere and rewrite the plots."""
        now = time.time()
        self.history.epochs.append({**asdict(record), "wall_time": now})
        if self.tb is None:
            return
        if misclassified is not None:
            self.misclassified(misclassified)
        self._log_epoch(record, now)
        write_plots(self.history)

    def misclassified(self, image: Image.Image) -> None:
        """The grid of misclassified validation images (DVCLive's `misclassified.png`)."""
        if self.live is not None:
            self.live.log_image(paths.LIVE_MISCLASSIFIED_NAME, image)

    def _log_epoch(self, record: EpochRecord, wall_time: float | None) -> None:
        self.live.step = record.epoch
        for f in fields(EpochRecord)[1:]:
            value = getattr(record, f.name)
            self.tb.add_scalar(
                f.metadata.get("tb", f.name), value, record.epoch, walltime=wall_time
            )
            name = f.metadata.get("live")
            if name:  # as the other files: float32's 0.3333333432674408 is noise
                shown = loss_figure(value) if "loss" in f.name else round(value, 6)
                self.live.log_metric(name, shown)
                if not f.metadata.get("summary"):
                    self.live.summary.pop(name)  # a curve, not an `exp show` column
        # Writes metrics.json, which `dvc exp show` reads while the run goes on, and tells DVC's
        # VS Code extension that a step is done.
        self.live.next_step()
        self.tb.flush()

    def abandon(self) -> None:
        """Flush and close the TensorBoard log of a run that stops with an error or a Ctrl-C:
        a stage's process exits anyway, a notebook's kernel keeps the writer's thread."""
        if self.tb is not None:
            self.tb.close()

    def close(self, diverged: bool = False) -> None:
        """End the logs. How the run ended (stopped early, diverged) is in metrics/train.json:
        as `exp show` columns they would push the test metrics out of a 120-column table. The
        HParams tab's status says it too: a diverged run failed, any other finished."""
        if self.tb is not None:
            end_hparams_session(self.tb, failed=diverged)
            self.tb.close()
            self.live.end()


def log_hparams(writer: Any, run: dict[str, Any]) -> None:
    """The params that shaped the run (`TrainingParams.hparams`), flattened to `train.lr`-style
    names, for TensorBoard's HParams tab: runs side by side there make a table of params and final
    scalars. Written into the run itself, not the subfolder `add_hparams` makes."""
    from torch.utils.tensorboard.summary import hparams

    # The session start alone. An experiment summary in each run would be taken from one run
    # only (TensorBoard expects one for the whole log folder), its params all marked as the
    # same, and the tab would open on the first five alphabetically; without one, TensorBoard
    # works out from every run's start which params differ, and shows those first. The third
    # summary ends the session as a success: `end_hparams_session` writes the end when the run
    # has one, so a run still training (or killed) is not listed as succeeded.
    _, start, _ = hparams(flat_hparams(run), {})
    writer.file_writer.add_summary(start)


def end_hparams_session(writer: Any, failed: bool) -> None:
    """The HParams tab's status of the run: STATUS_FAILURE for a diverged run, else SUCCESS."""
    from tensorboard.compat.proto.summary_pb2 import Summary, SummaryMetadata
    from tensorboard.plugins.hparams import api_pb2, metadata, plugin_data_pb2

    status = api_pb2.STATUS_FAILURE if failed else api_pb2.STATUS_SUCCESS
    content = plugin_data_pb2.HParamsPluginData(
        session_end_info=plugin_data_pb2.SessionEndInfo(status=status),
        version=metadata.PLUGIN_DATA_VERSION,
    )
    plugin = SummaryMetadata.PluginData(
        plugin_name=metadata.PLUGIN_NAME, content=content.SerializeToString()
    )
    tag = metadata.SESSION_END_INFO_TAG
    value = Summary.Value(tag=tag, metadata=SummaryMetadata(plugin_data=plugin))
    writer.file_writer.add_summary(Summary(value=[value]))


def flat_hparams(values: dict[str, Any], prefix: str = "") -> dict[str, float | str]:
    """Nested params as `section.key` -> a number or a string; null, bools and lists are
    spelled as params.yaml spells them (HParams takes numbers and strings only)."""
    flat: dict[str, float | str] = {}
    for key, value in values.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flat_hparams(value, f"{name}."))
        elif isinstance(value, int | float) and not isinstance(value, bool):
            flat[name] = value
        else:
            flat[name] = value if isinstance(value, str) else json.dumps(value)
    return flat


def log_model_start(writer: Any, model: Classifier, sample: torch.Tensor, step: int) -> None:
    """Input grid, first-conv feature maps (the tutorial's conv lesson) and the model graph.

    `sample` (uint8 NCHW, on any device) runs through the model on the model's device; the
    images are brought back to the CPU for writing.
    """
    sample = sample[:32].cpu()
    writer.add_image("inputs", make_grid(sample), step)
    x = to_input(sample.to(next(model.parameters()).device))
    first_conv = next((m for m in model.modules() if isinstance(m, nn.Conv2d)), None)
    if first_conv is not None:
        with torch.no_grad():
            maps = first_conv(model.normalize(x[:4])).float().cpu()
        for i, fmap in enumerate(maps):
            fmap = fmap[:, None]  # one grey image per output channel
            lo, hi = fmap.amin(), fmap.amax()
            # A diverged model's maps are NaN: drawn black, not cast to garbage with a warning.
            fmap = torch.nan_to_num((fmap - lo) / (hi - lo + 1e-8))
            writer.add_image(f"conv1_feature_maps/{i}", make_grid(fmap), step)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # add_graph still uses jit.trace
            writer.add_graph(model, x[:1])
    except Exception as exc:  # tracing fails for some modules; the graph is a nicety, say so
        log.warning("TensorBoard model graph skipped: %s", exc)


def make_grid(images: torch.Tensor, nrow: int = 8, padding: int = 2) -> torch.Tensor:
    """NCHW images (1 or 3 channels) tiled `nrow` to a row, 2 px apart: one CHW image, as
    torchvision.utils.make_grid lays them out. Here because importing torchvision costs this
    stage about 5 s (it loads torch._dynamo)."""
    n, c, h, w = images.shape
    rows = -(-n // nrow)
    cols = min(n, nrow)
    grid = images.new_zeros(c, rows * (h + padding) + padding, cols * (w + padding) + padding)
    for k in range(n):
        y, x = (k // nrow) * (h + padding) + padding, (k % nrow) * (w + padding) + padding
        grid[:, y : y + h, x : x + w] = images[k]
    return grid.expand(3, -1, -1) if c == 1 else grid


def misclassified_grid(
    images: torch.Tensor,
    labels: torch.Tensor,
    preds: torch.Tensor,
    classes: list[str],
    limit: int = 24,
) -> Image.Image:
    """Up to `limit` validation images the model gets wrong, a few of each true class (see
    `spread_over_classes`), each captioned with the prediction and, below, "(actual)". The sheet
    says so when there are none: the file always exists."""
    wrong = torch.nonzero(preds != labels).flatten()
    shown = spread_over_classes(wrong.tolist(), labels[wrong].tolist(), limit)
    pictures = (Image.fromarray(images[i].permute(1, 2, 0).numpy()) for i in shown)
    captions = [[(classes[preds[i]], "black"), (f"({classes[labels[i]]})", "gray")] for i in shown]
    return captioned_grid(
        pictures, captions, MISCLASSIFIED_LAYOUT, empty="no misclassified validation images"
    )


def spread_over_classes(indices: list[int], classes: list[int], limit: int) -> list[int]:
    """Up to `limit` of `indices`, taken in turn from each class (`classes[k]` is that of
    `indices[k]`): the first of every class in class order, then the second of every class...

    A split in class order would otherwise show only its first class. Order within a class is
    kept, and no randomness: reruns draw the same grid.
    """
    by_class: dict[int, list[int]] = {}
    for i, c in zip(indices, classes, strict=True):
        by_class.setdefault(c, []).append(i)
    rounds = itertools.zip_longest(*(by_class[c] for c in sorted(by_class)))
    taken = (i for one_round in rounds for i in one_round if i is not None)
    return list(itertools.islice(taken, limit))
