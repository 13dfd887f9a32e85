"""The training run: build the model, step through epochs, validate, checkpoint, write outputs.

Everything a run depends on comes in through `TrainingParams`; the device is chosen once
(`devices.pick_device`) and passed down. `run` reads like a table of contents: each step is a
call into the module that owns that job (split_tensors, models, batches, optim, checkpoints,
tracking).
Each epoch ends with an atomic checkpoint, so a killed run resumes from the last complete epoch
and, on CPU, finishes with the same weights as a run never interrupted.
"""

from __future__ import annotations

import logging
import time
import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from visionpipe import (
    __version__,
    checkpoints,
    determinism,
    devices,
    distributed,
    logs,
    memory,
    paths,
    precision,
    split_tensors,
    steps,
)
from visionpipe.batches import Batch, Batches
from visionpipe.checkpoints import Checkpoint, Trainee
from visionpipe.config.train import TrainConfig
from visionpipe.config.training import TrainingParams
from visionpipe.distributed import all_reduce_sum
from visionpipe.fsutil import write_json
from visionpipe.inference import Scores, evaluate_split, loss_text
from visionpipe.modelfile import ModelInfo, save_model
from visionpipe.models import MIN_STD, Classifier, build_model, scaling_std
from visionpipe.optim import Lookahead, lr_tensors, make_optimizer, make_scheduler
from visionpipe.progress import Progress, diverged, log_why_stopped
from visionpipe.tracking import EpochRecord, Tracker, misclassified_grid
from visionpipe.weights import warn_if_other_split

log = logging.getLogger(__name__)


@dataclass
class Clock:
    """Wall-clock seconds of this run's epoch loop, by part (a resumed run counts its own)."""

    train: float = 0.0  # the steps: batches, forward, backward, optimizer, lookahead
    validation: float = 0.0  # per-epoch validation (no TTA) and its misclassified grid


@dataclass
class Loop:
    """What the epoch loop works on, set up once by `make_loop`."""

    cfg: TrainConfig
    model: Classifier  # the bare model: checkpoints, evaluation, lookahead
    step_model: nn.Module  # what the steps call: the model or its DDP / compiled wrapper
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    scaler: torch.amp.GradScaler  # loss scaling for fp16; a no-op otherwise
    criterion: nn.Module
    batches: Batches
    device: torch.device
    autocast_dtype: torch.dtype | None  # bf16 / fp16 autocast of the train steps, None: fp32
    lookahead: Lookahead | None
    step: Callable[[Batch], torch.Tensor] = field(init=False)  # steps.make_step's, set last
    progress: Progress = field(default_factory=Progress)
    global_step: int = 0
    clock: Clock = field(default_factory=Clock)

    @property
    def ddp(self) -> distributed.Dist:
        return self.batches.ddp

    def trainee(self) -> Trainee:
        """The objects whose state a checkpoint holds."""
        slow = self.lookahead.slow if self.lookahead is not None else None
        m, gen = self.model, self.batches.gen
        return Trainee(m, self.optimizer, self.scheduler, self.scaler, slow, gen, self.device)


def place_model(model: Classifier, device: torch.device, cfg: TrainConfig) -> Classifier:
    """The model on its device and memory format, in one move."""
    # channels_last pays on CPU too: 1.5x faster train steps for the tutorial CNN on 2 cores.
    fmt = torch.channels_last if cfg.channels_last else torch.preserve_format
    return model.to(device=device, memory_format=fmt)


def make_loop(
    model: Classifier,
    train_x: torch.Tensor,
    train_y: torch.Tensor,
    cfg: TrainConfig,
    device: torch.device,
    ddp: distributed.Dist | None = None,
    gen: torch.Generator | None = None,
    resume: Checkpoint | None = None,
) -> Loop:
    """Optimizer, schedule, loss, batches and wrappers for training `model` (already placed by
    `place_model`), restored from the checkpoint state `resume` when given.

    DistributedDataParallel wraps the model after the restore, so every rank starts from the
    restored weights (DDP broadcasts rank 0's weights when it wraps).
    """
    ddp = ddp or distributed.Dist()
    gen = gen if gen is not None else torch.Generator().manual_seed(cfg.seed)
    batches = Batches(train_x, train_y, cfg, device, gen, ddp)
    dtype = precision.autocast_dtype(device, cfg.amp)
    why_eager = steps.blocker(cfg.cuda_graph, device, ddp.world_size, cfg.compile, dtype)
    graphed = why_eager is None
    if cfg.cuda_graph and not graphed:
        log.info("train.cuda_graph: the train steps run eagerly: %s", why_eager)
    optimizer = make_optimizer(model, cfg, device if graphed else None)
    total_steps = batches.steps_per_epoch * cfg.epochs
    loop = Loop(
        cfg=cfg,
        model=model,
        step_model=model,
        optimizer=optimizer,
        scheduler=make_scheduler(optimizer, cfg, batches.steps_per_epoch),
        scaler=torch.amp.GradScaler(device.type, enabled=precision.needs_grad_scaler(dtype)),
        # Summed: steps.EagerStep divides it by the global batch length.
        criterion=nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing, reduction="sum"),
        batches=batches,
        device=device,
        autocast_dtype=dtype,
        lookahead=Lookahead(model, total_steps) if cfg.lookahead else None,
    )
    if resume is not None and checkpoints.restore(resume, loop.trainee()):
        loop.progress = resume.progress
        loop.global_step = resume.progress.epoch * batches.steps_per_epoch
        if graphed:  # the checkpoint's groups replaced the device lr tensors
            lr_tensors(optimizer, device)
    if ddp.enabled:
        loop.step_model = DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None
        )
    if cfg.compile:
        loop.step_model = torch.compile(loop.step_model)
    loop.step = steps.make_step(loop, ddp.world_size, graphed, cfg.batch_size)
    return loop


def train_epoch(
    loop: Loop,
    epoch: int,
    which: Iterable[int] | None = None,
    on_log: Callable[[int, float, int], None] | None = None,
) -> torch.Tensor:
    """One epoch (or the steps of it in `which`); the summed train loss, left on the device.

    `on_log(global_step, loss, images_so_far)` runs every train.log_every steps: the only host
    sync inside the loop.
    """
    loop.model.train()
    loss_sum = torch.zeros((), device=loop.device)
    with warnings.catch_warnings():  # here only, not in a notebook's own training
        # fp16's GradScaler skips the steps whose gradients overflowed (the first few, while it
        # finds its scale); the schedule steps on regardless, and torch warns of the order.
        warnings.filterwarnings("ignore", r"Detected call of `lr_scheduler\.step\(\)`", UserWarning)
        for batch in loop.batches.epoch(epoch, which):
            batch_loss = loop.step(batch)
            loop.scheduler.step()
            loop.global_step += 1
            if loop.lookahead is not None:
                loop.lookahead.after_step(loop.global_step)
            loss_sum += batch_loss.detach()
            if on_log is not None and loop.global_step % loop.cfg.log_every == 0:
                # A copy: the all-reduce works in place.
                value = all_reduce_sum(batch_loss.detach().clone(), loop.ddp).item() / batch.size
                on_log(loop.global_step, value, batch.seen)
    return loss_sum


def run(params: TrainingParams) -> dict[str, Any]:
    """Train per `params` on the preprocessed splits; write the model, metrics, plots, logs."""
    memory.keep_freed_memory()  # before the first large allocation, so every step reuses
    ddp, device = distributed.init(devices.pick_device(params.launch.device))
    try:
        distributed.check_same_params(params.run_dict(), ddp)
        return _run(params, ddp, device)
    finally:
        distributed.shutdown(ddp)


def _run(params: TrainingParams, ddp: distributed.Dist, device: torch.device) -> dict[str, Any]:
    cfg = params.train
    torch.manual_seed(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)  # shuffling and augmentation, on CPU
    # cudnn.benchmark stays off (PyTorch's default): on an H100 its tuning cost `fast` 1.5-7 s in
    # epoch 1 and 14 s in its first validation; the tutorial's 5% an epoch won back < its 2.7 s.
    splits = split_tensors.load_training_data(device)
    model = build_training_model(params, splits, device, ddp)
    fp = checkpoints.fingerprint(params)
    resume = checkpoints.resume_point(fp, ddp)
    loop = make_loop(model, splits.train_x, splits.train_y, cfg, device, ddp, gen, resume)
    check_batch_norm_batch(model, params, splits.meta["image_size"], loop.batches)
    start = loop.progress.epoch
    # A checkpoint of a run that ended (interrupted while writing its outputs): no epoch left.
    last = start if loop.progress.stopped else cfg.epochs
    if start and ddp.writes_outputs:  # every rank resumes; one line per machine says so
        log.info("resuming from %s after epoch %d of %d", checkpoints.CHECKPOINT, start, last)
    if ddp.writes_outputs:
        warn_if_no_step_logs(cfg, loop.batches.steps_per_epoch)
        warn_if_min_delta_unused(cfg)
    hparams = params.hparams(splits.meta["image_size"])
    tracker = Tracker(ddp.writes_outputs, loop.progress.history, hparams)
    distributed.barrier(ddp)  # no rank may overwrite the checkpoint before all have read it
    try:
        tracker.start(model, splits.train_x, splits.train_y, epoch=start)
        if start and start == last and ddp.writes_outputs:
            log_last_misclassified(loop, splits, tracker)

        t_start = time.perf_counter()
        for epoch in range(start, last):
            record = run_epoch(loop, epoch, splits, tracker)
            # Rank 0 decides for all: each rank's BatchNorm statistics, and so its val loss, can
            # differ, and a rank that stopped alone would leave the others waiting for it.
            stopped = distributed.broadcast_object(
                loop.progress.update(record, cfg.patience, cfg.min_delta), ddp
            )
            loop.progress.stopped = stopped
            if ddp.is_main:  # rank 0 alone writes; the others hold identical state
                checkpoints.save(fp, loop.progress, loop.trainee())
            if distributed.broadcast_object(ddp.is_main and logs.params_changed(), ddp):
                # Another run rewrote params.yaml: stop now, not after the last epoch, and keep the
                # checkpoint to resume from once the other run is done.
                then = checkpoints.resume_after_clash()
                logs.refuse_changed_params(
                    f"; the checkpoint after epoch {epoch + 1} is kept: {then}"
                )
            if stopped:
                # All ranks stop together; one line per machine says why the run ended early.
                if ddp.writes_outputs and (epoch + 1 < last or diverged(record)):
                    log_why_stopped(record, cfg.patience, cfg.lr, cfg.min_delta)
                break
        seconds = time.perf_counter() - t_start
        metrics = finish(params, loop, splits, seconds, start)
    except BaseException:  # Ctrl-C in a notebook's kernel, which lives on: flush the logs
        tracker.abandon()
        raise
    tracker.close(diverged=metrics["diverged"])
    if ddp.is_main:
        checkpoints.keep_finished(fp)
    return metrics


def warn_if_no_step_logs(cfg: TrainConfig, steps_per_epoch: int) -> None:
    """Say so when train.log_every is beyond the run's last step: the per-step train loss
    (TensorBoard's `train_loss`, metrics/plots/steps.csv) would be empty, and `dvc plots`
    leaves an empty plot out without a word."""
    total = steps_per_epoch * cfg.epochs
    if cfg.log_every > total:
        # Under twenty steps no value gives about ten points: 1 gives one per step.
        ten = f" ({total // 10} gives about ten points)" if total >= 20 else ""
        bound = "1" if total == 1 else f"{total} or less"
        log.warning(
            "train.log_every is %d but this run has %d step%s (%d per epoch): no per-step train "
            "loss in TensorBoard or %s; set train.log_every to %s to get one%s",
            cfg.log_every,
            total,
            "s" * (total != 1),
            steps_per_epoch,
            paths.PLOT_STEPS,
            bound,
            ten,
        )


def warn_if_min_delta_unused(cfg: TrainConfig) -> None:
    """Say so when train.min_delta is set without early stopping: it would change nothing."""
    if cfg.min_delta and not cfg.patience:
        log.warning(
            "train.min_delta is %g but train.patience is 0 (early stopping off): it changes "
            "nothing; set train.patience to the epochs without such a gain to stop after",
            cfg.min_delta,
        )


class BatchNormBatchError(ValueError):
    """Batches of one image for a model whose BatchNorm then sees one value per channel."""


def check_batch_norm_batch(
    model: nn.Module, params: TrainingParams, image_size: int, batches: Batches
) -> None:
    """Refuse batches of one image when a BatchNorm layer sees a 1x1 map (resnet18's last block
    at 32 px, fast's up to 16 px): it cannot train on one value per channel, which torch would
    say only from inside the first step. Under DDP each process normalises its own shard."""
    if 1 not in batches.shard_sizes:
        return
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    sides: list[int] = []
    hooks = [
        m.register_forward_pre_hook(lambda _, a: sides.append(a[0][0, 0].numel())) for m in norms
    ]
    device = next(model.parameters()).device
    try:
        with torch.no_grad():
            model.eval()(torch.zeros(1, 3, image_size, image_size, device=device))
    finally:
        for hook in hooks:
            hook.remove()
        model.train()
    if 1 in sides:
        n = len(batches.labels)
        raise BatchNormBatchError(
            f"train.batch_size {params.train.batch_size} with {n} training "
            f"image{'s' * (n != 1)}{_shared_by(batches)} leaves a batch of one image, and model "
            f"'{params.model.name}' at {image_size} px has a BatchNorm layer that sees a 1x1 "
            "map: BatchNorm cannot train on one value per channel. "
            + _fewest_images(batches.ddp.world_size, n)
        )


def _shared_by(batches: Batches) -> str:
    world = batches.ddp.world_size
    return f" shared by {world} processes (launch.nproc * launch.nnodes)" if world > 1 else ""


def _fewest_images(world: int, n: int) -> str:
    """How to fix a process's batch of one: rank r takes images r::world of every batch."""
    if n < 2 * world:
        return (
            "Add training images, or lower data.test_fraction or data.val_fraction to keep more"
            " of them for training (or a larger preprocess.image_size)"
        )
    if world == 1:
        return "Set train.batch_size to 2 or more (or a larger preprocess.image_size)"
    return (
        f"Every batch needs {2 * world} images or more, 2 per process: set train.batch_size and "
        "the training images so that the last batch has them too, or fewer processes (or a "
        "larger preprocess.image_size)"
    )


def warn_constant_channels(std: list[float]) -> None:
    """Name the channels model.normalize leaves unscaled, those the train split never varies."""
    flat = [
        f"{name} (std {s:g})"
        for name, s in zip(("red", "green", "blue"), std, strict=True)
        if s < MIN_STD
    ]
    if flat:
        log.warning(
            "model.normalize: %s of the train split hardly %s: left unscaled (dividing by its"
            " std would blow it up)", ", ".join(flat), "varies" if len(flat) == 1 else "vary",
        )  # fmt: skip


def build_training_model(
    params: TrainingParams,
    splits: split_tensors.TrainingData,
    device: torch.device,
    ddp: distributed.Dist,
) -> Classifier:
    """The model params describe, initialised from the data where it does that, on `device`."""
    mean, std = splits.meta["mean"], splits.meta["std"]
    if params.model.normalize:
        warn_constant_channels(std)
    model = build_model(
        params.model.name,
        len(splits.classes),
        splits.meta["image_size"],
        params.model.arch_params(),
        mean if params.model.normalize else None,
        std if params.model.normalize else None,
        splits.classes,
    )
    if params.train.deterministic:
        determinism.set_deterministic(model, params.model.name, device)
    # Weights from a file win over an init from the data: fast's whitening (and its trained
    # bias) would otherwise be recomputed under layers that were trained on the loaded one.
    if not params.model.weights:
        model.prepare(splits.train_x)
    if params.train.backbone_lr_scale == 0.0:
        model.freeze_backbone()
    warn_if_backbone_untrained(params)
    if params.model.weights:
        weights = paths.user_path(params.model.weights, "model.weights")
        data = params.data.model_dump(mode="json")
        warn_if_other_split(weights, data, splits.classes, splits.meta.get("layout", "flat"))
    model = place_model(model, device, params.train)
    return distributed.sync_batch_norm(model, device) if ddp.enabled else model


def warn_if_backbone_untrained(params: TrainingParams) -> None:
    """Say when train.backbone_lr_scale slows or freezes layers that start from random weights:
    it is for fine-tuning, where they come trained (model.pretrained, model.weights)."""
    scale = params.train.backbone_lr_scale
    if scale == 1.0 or params.model.weights or params.model.pretrained:
        return
    log.warning(
        "train.backbone_lr_scale %g %s every layer but the classifier, and model '%s' starts "
        "from random weights (no model.pretrained, no model.weights): it is for fine-tuning a "
        "trained net; set model.pretrained=true or model.weights=<file>, or "
        "train.backbone_lr_scale=1",
        scale,
        "freezes" if scale == 0.0 else "slows",
        params.model.name,
    )


def run_epoch(
    loop: Loop, epoch: int, splits: split_tensors.TrainingData, tracker: Tracker
) -> EpochRecord:
    """Train one epoch, then validate; log and return its record."""
    cfg, ddp = loop.cfg, loop.ddp
    bar = tqdm(
        range(loop.batches.steps_per_epoch),
        desc=f"epoch {epoch + 1}/{cfg.epochs}",
        unit="step",
        disable=None if ddp.writes_outputs else True,
        leave=False,
    )
    t_epoch = time.perf_counter()
    # Read before the steps: after them the scheduler already holds the next epoch's lr (0 at
    # the end of a cosine or one-cycle run), not the one this epoch trained with.
    lr = float(loop.optimizer.param_groups[0]["lr"])  # a tensor on the GPU under a CUDA graph

    def on_log(step: int, value: float, images: int) -> None:
        tracker.step(step, value)
        speed = images / (time.perf_counter() - t_epoch)
        bar.set_postfix(loss=f"{value:.3f}", img_s=f"{speed:.0f}")

    loss_sum = train_epoch(loop, epoch, bar, on_log)
    train_loss = all_reduce_sum(loss_sum, ddp).item() / len(splits.train_y)  # waits for the GPU
    t_val = time.perf_counter()
    loop.clock.train += t_val - t_epoch
    val = validate(loop, splits)
    record = EpochRecord(epoch + 1, train_loss, val.loss, val.accuracy, lr)
    wrong = None
    if ddp.writes_outputs:
        wrong = misclassified_grid(splits.val_x, splits.val_y, val.preds, splits.classes)
    loop.clock.validation += time.perf_counter() - t_val
    tracker.epoch(record, wrong)
    log.log(
        logging.INFO if ddp.writes_outputs else logging.DEBUG,
        "epoch %d/%d  train_loss %s  val_loss %s  val_acc %.4f  (%.1fs)",
        epoch + 1,
        cfg.epochs,
        loss_text(train_loss, 4),  # an overfitting run's 1.5e-05, not 0.0000
        loss_text(val.loss, 4),
        val.accuracy,
        time.perf_counter() - t_epoch,
    )
    return record


def validate(loop: Loop, splits: split_tensors.TrainingData) -> Scores:
    """The validation split scored by the model as it stands."""
    # Per-epoch validation skips test-time augmentation, as airbench does: TTA multiplies
    # its cost by up to 6 for a curve. The evaluate stage scores the model with its TTA.
    model = loop.model
    tta, model.tta = model.tta, 0
    try:
        return evaluate_split(model, splits.val_x, splits.val_y, loop.device, loop.cfg.batch_size)
    finally:
        model.tta = tta


def log_last_misclassified(
    loop: Loop, splits: split_tensors.TrainingData, tracker: Tracker
) -> None:
    """The last epoch's misclassified validation images, for a run resumed with no epoch left
    (stopped while writing its outputs): DVC deleted the stage's outputs before this run, that
    grid among them, and dvc.yaml declares it, while only an epoch that runs draws it. The
    checkpoint's model is the one that epoch validated."""
    val = validate(loop, splits)
    tracker.misclassified(misclassified_grid(splits.val_x, splits.val_y, val.preds, splits.classes))


def finish(
    params: TrainingParams,
    loop: Loop,
    splits: split_tensors.TrainingData,
    seconds: float,
    start_epoch: int,
) -> dict[str, Any]:
    """Write the model, metrics/train.json and the timings (local rank 0 of each machine: every
    node's DVC finds them); return the metrics."""
    progress = loop.progress
    metrics = progress.summary(params.train.epochs)
    if not loop.ddp.writes_outputs:
        return metrics
    save_model(paths.MODEL, loop.model, model_info(params, splits))
    write_json(paths.TRAIN_METRICS, metrics)
    images = (progress.epoch - start_epoch) * len(splits.train_y)
    train_s = loop.clock.train
    # train_seconds is the steps alone, what published train-only figures (airbench's) count;
    # epoch_loop_seconds adds validation, logging and checkpoints: the stage's whole loop.
    timings = {
        "device": devices.device_name(loop.device),
        "precision": precision.precision_name(loop.autocast_dtype),
        # With precision, what decides a CPU run's bits besides params and data (docs/training.md).
        "threads": torch.get_num_threads(),
        "train_seconds": round(train_s, 2),
        "validation_seconds": round(loop.clock.validation, 2),
        "epoch_loop_seconds": round(seconds, 2),
        "images_per_second": round(images / train_s, 1) if train_s else None,
        "resumed_from_epoch": start_epoch,
        "processes": loop.ddp.world_size,
    }
    write_json(paths.TRAIN_TIMINGS, timings)
    return metrics


def model_info(params: TrainingParams, splits: split_tensors.TrainingData) -> ModelInfo:
    """The plain values saved beside the weights: enough to rebuild and use the model."""
    return ModelInfo(
        arch=params.model.name,
        num_classes=len(splits.classes),
        image_size=splits.meta["image_size"],
        arch_params=params.model.arch_params(),
        normalize=params.model.normalize,
        mean=splits.meta["mean"],
        std=scaling_std(splits.meta["std"]),  # what the model divides by, for code outside it
        classes=splits.classes,
        params=params.run_dict(),
        visionpipe_version=__version__,
        torch_version=torch.__version__.split("+")[0],
    )
