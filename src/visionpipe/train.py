"""The training loop: in-memory uint8 data on the device, batched augmentation, resumable epochs.

Everything a run depends on comes in through `Params`; the device is chosen once by `pick_device`
and passed down. Each epoch ends with an atomic checkpoint, so a killed run resumes from the last
complete epoch and, on CPU, finishes with the same weights as a run never interrupted.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import shutil
import time
import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from visionpipe import __version__, distributed, paths, runtime
from visionpipe.config import Params, TrainConfig
from visionpipe.distributed import all_reduce_sum
from visionpipe.fsutil import save_torch, write_json, write_text
from visionpipe.models import (
    Classifier,
    FastNet,
    _unwrap,
    build_model,
    init_whitening,
    save_model,
)
from visionpipe.runtime import autocast, eval_batch_size, predict_logits

log = logging.getLogger(__name__)

CHECKPOINT = paths.CHECKPOINT_DIR / "last.pt"


def load_split(split: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(images uint8 NCHW, labels int64) of a preprocessed split."""
    path = paths.split_file(split)
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: run 'uv run dvc repro preprocess' first")
    blob = torch.load(path, weights_only=True)
    return blob["images"], blob["labels"]


def read_data_meta() -> dict[str, Any]:
    path = paths.PROCESSED_DIR / "meta.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: run 'uv run dvc repro preprocess' first")
    return json.loads(path.read_text())


def batch_crop(
    x: torch.Tensor, padding: int, gen: torch.Generator, mode: str = "zeros"
) -> torch.Tensor:
    """Random crops of a uint8 batch after zero or reflect padding, as one gather (no loop)."""
    b, c, h, w = x.shape
    pad_mode = "constant" if mode == "zeros" else mode
    padded = F.pad(x, (padding, padding, padding, padding), mode=pad_mode)
    dy = torch.randint(0, 2 * padding + 1, (b,), generator=gen).to(x.device)
    dx = torch.randint(0, 2 * padding + 1, (b,), generator=gen).to(x.device)
    rows = (dy[:, None] + torch.arange(h, device=x.device))[:, None, :, None]
    cols = (dx[:, None] + torch.arange(w, device=x.device))[:, None, None, :]
    bidx = torch.arange(b, device=x.device)[:, None, None, None]
    cidx = torch.arange(c, device=x.device)[None, :, None, None]
    return padded[bidx, cidx, rows, cols]


def batch_flip_lr(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    flip = (torch.rand(x.shape[0], generator=gen) < 0.5).to(x.device)
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


def lr_factor(step: int, total: int, warmup: int, schedule: str) -> float:
    """Multiplier of the base lr at optimizer step `step` (0-based) of `total`."""
    if schedule == "onecycle" and warmup == 0:
        warmup = max(1, total // 4)
    if schedule == "triangle":
        # airbench94's: 0.2x at the start, 1x at 23% of the run (or after the warmup), 0.07x at
        # the end, linear in between.
        peak = warmup if warmup > 0 else int(total * 0.23)
        if step < peak:
            return 0.2 + 0.8 * step / peak
        return 1.0 - 0.93 * (step - peak) / max(1, total - peak)
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    if schedule == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * progress))
    if schedule == "onecycle":
        return max(0.0, 1.0 - progress)
    return 1.0


# airbench trains the whitening conv's bias for the first 3 epochs only, then freezes it.
WHITEN_BIAS_EPOCHS = 3


def param_groups(model: nn.Module, cfg: TrainConfig) -> list[dict[str, Any]]:
    """The optimizer's parameter groups, each with a `name`.

    "norm_bias": BatchNorm biases, at lr * bias_lr_scale and weight_decay / bias_lr_scale (the
    same decay per step); "whiten_bias": FastNet's whitening bias, frozen after
    WHITEN_BIAS_EPOCHS by the schedule; "default": every other trainable parameter.
    """
    bare = _unwrap(model)
    norm_biases = {
        id(m.bias)
        for m in bare.modules()
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.bias is not None
    }
    net = getattr(bare, "net", None)
    whiten_bias = net.whiten.bias if isinstance(net, FastNet) else None
    groups: dict[str, list[nn.Parameter]] = {"default": [], "norm_bias": [], "whiten_bias": []}
    for param in bare.parameters():
        if not param.requires_grad:
            continue
        if param is whiten_bias:
            groups["whiten_bias"].append(param)
        elif id(param) in norm_biases:
            groups["norm_bias"].append(param)
        else:
            groups["default"].append(param)
    scale = {"default": 1.0, "norm_bias": cfg.bias_lr_scale, "whiten_bias": 1.0}
    return [
        {
            "name": name,
            "params": params,
            "lr": cfg.lr * scale[name],
            "weight_decay": cfg.weight_decay / scale[name],
        }
        for name, params in groups.items()
        if params
    ]


def make_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    groups = param_groups(model, cfg)
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov)
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=cfg.lr)
    raise ValueError(f"Invalid optimizer '{cfg.optimizer}'. Only sgd and adamw are supported.")


def make_scheduler(
    optimizer: torch.optim.Optimizer, cfg: TrainConfig, steps_per_epoch: int
) -> torch.optim.lr_scheduler.LambdaLR:
    total = steps_per_epoch * cfg.epochs
    warmup = round(cfg.warmup_epochs * steps_per_epoch)
    freeze_at = WHITEN_BIAS_EPOCHS * steps_per_epoch

    def factor(step: int) -> float:
        return lr_factor(step, total, warmup, cfg.schedule)

    def whiten_factor(step: int) -> float:
        # lr 0 leaves the bias exactly where it is, whatever momentum and decay hold.
        return factor(step) if step < freeze_at else 0.0

    lambdas = [
        whiten_factor if g["name"] == "whiten_bias" else factor for g in optimizer.param_groups
    ]
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambdas)


class Lookahead:
    """airbench's lookahead (from hlb-CIFAR10): slow weights that training keeps returning to.

    Every EVERY steps the slow copy of the model's float state (weights and BatchNorm running
    stats) moves toward the current weights by 1 - decay, and the model restarts from it. decay
    grows as 0.95**5 * progress**3: early on the slow weights just follow, late in training
    they average over many steps. The last step ends on the slow weights.
    """

    EVERY = 5

    def __init__(self, model: nn.Module, total_steps: int) -> None:
        self.total = total_steps
        # The model's own tensors, looked up once: state_dict() shares their storage, and
        # training and resuming only ever write into them in place.
        self.live = {k: v for k, v in _unwrap(model).state_dict().items() if v.is_floating_point()}
        self.slow = {k: v.detach().clone() for k, v in self.live.items()}

    @torch.no_grad()
    def after_step(self, step: int) -> None:
        """Call after optimizer step number `step` (1-based)."""
        if step % self.EVERY == 0:
            self._update(0.95**5 * (step / self.total) ** 3)
        if step == self.total:
            self._update(1.0)

    def _update(self, decay: float) -> None:
        for name, slow in self.slow.items():
            slow.lerp_(self.live[name], 1.0 - decay)
            self.live[name].copy_(slow)


def evaluate_split(
    model: Classifier,
    images: torch.Tensor,
    labels: torch.Tensor,
    device: torch.device,
    train_batch_size: int,
) -> tuple[float, float]:
    """(mean cross-entropy, accuracy) over a split, in batches no larger than training's."""
    batch = eval_batch_size(train_batch_size, model.views)
    logits = predict_logits(model, images, device, batch)
    labels = labels.cpu()
    loss = F.cross_entropy(logits, labels).item()
    acc = (logits.argmax(1) == labels).float().mean().item()
    return loss, acc


def fingerprint(params: Params) -> str:
    """What a checkpoint must match to be resumed: params that shape training, and the data."""
    relevant = {k: params.as_dict()[k] for k in ("data", "preprocess", "model", "train")}
    h = hashlib.sha256(json.dumps(relevant, sort_keys=True).encode())
    for split in ("train", "val"):
        with open(paths.split_file(split), "rb") as f:
            h.update(hashlib.file_digest(f, "sha256").digest())
    return h.hexdigest()


@dataclass
class History:
    epochs: list[dict[str, float]] = field(default_factory=list)
    steps: list[dict[str, float]] = field(default_factory=list)


def write_plots(history: History) -> None:
    lines = ["epoch,train_loss,val_loss,val_accuracy,lr"]
    lines += [
        f"{r['epoch']},{r['train_loss']:.6f},{r['val_loss']:.6f},{r['val_accuracy']:.6f},{r['lr']:.6g}"
        for r in history.epochs
    ]
    write_text(paths.PLOT_EPOCHS, "\n".join(lines) + "\n")
    lines = ["step,train_loss"] + [f"{r['step']},{r['train_loss']:.6f}" for r in history.steps]
    write_text(paths.PLOT_STEPS, "\n".join(lines) + "\n")


def _log_tensorboard_start(writer: Any, model: Classifier, sample: torch.Tensor) -> None:
    """Input grid, first-conv feature maps (the tutorial's conv lesson) and the model graph.

    `sample` (uint8 NCHW, on any device) runs through the model on the model's device; the
    images are brought back to the CPU for writing.
    """
    import torchvision

    sample = sample[:32].cpu()
    writer.add_image("inputs", torchvision.utils.make_grid(sample, nrow=8), 0)
    device = next(model.parameters()).device
    x = sample.to(device).float() / 255
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


class _Writer:
    """TensorBoard on rank 0; a silent stand-in on the other ranks."""

    def __init__(self, enabled: bool) -> None:
        self.tb: Any = None
        if enabled:
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(str(paths.TB_DIR))

    def start(self, model: Classifier, sample: torch.Tensor) -> None:
        if self.tb is not None:
            _log_tensorboard_start(self.tb, model, sample)

    def add_scalar(self, name: str, value: float, step: int) -> None:
        if self.tb is not None:
            self.tb.add_scalar(name, value, step)

    def flush(self) -> None:
        if self.tb is not None:
            self.tb.flush()

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()


@dataclass
class Progress:
    """Where a run stands after its last complete epoch: what a resume restores."""

    epoch: int = 0
    history: History = field(default_factory=History)
    best_val: float = math.inf
    bad_epochs: int = 0


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
    train_x: torch.Tensor  # uint8 NCHW, on the device when it fits
    train_y: torch.Tensor
    device: torch.device
    gen: torch.Generator  # shuffling and augmentation, on CPU
    ddp: distributed.Dist
    autocast_dtype: torch.dtype | None  # bf16 / fp16 autocast of the train steps, None: fp32
    steps_per_epoch: int
    flip_mask: torch.Tensor | None  # flip: alternate, images mirrored in even epochs
    lookahead: Lookahead | None
    progress: Progress = field(default_factory=Progress)
    global_step: int = 0


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
    resume: dict[str, Any] | None = None,
) -> Loop:
    """Optimizer, schedule, loss, wrappers and augmentation state for training `model` (already
    placed by `place_model`), restored from the checkpoint state `resume` when given.

    DistributedDataParallel wraps the model after the restore, so every rank starts from the
    restored weights (DDP broadcasts rank 0's weights when it wraps).
    """
    ddp = ddp or distributed.Dist()
    steps_per_epoch = math.ceil(len(train_y) / cfg.batch_size)
    optimizer = make_optimizer(model, cfg)
    dtype = runtime.autocast_dtype(device, cfg.amp)
    flip_mask = None
    if cfg.augment.flip == "alternate":
        flip_mask = alternate_flip_mask(len(train_y), cfg.seed).to(train_x.device)
    loop = Loop(
        cfg=cfg,
        model=model,
        step_model=model,
        optimizer=optimizer,
        scheduler=make_scheduler(optimizer, cfg, steps_per_epoch),
        scaler=torch.amp.GradScaler(device.type, enabled=runtime.needs_grad_scaler(dtype)),
        # Summed, then divided by the global batch length: with several ranks DDP averages the
        # gradients, so each rank scales by world_size and the result equals one process's mean.
        criterion=nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing, reduction="sum"),
        train_x=train_x,
        train_y=train_y,
        device=device,
        gen=gen if gen is not None else torch.Generator().manual_seed(cfg.seed),
        ddp=ddp,
        autocast_dtype=dtype,
        steps_per_epoch=steps_per_epoch,
        flip_mask=flip_mask,
        lookahead=Lookahead(model, steps_per_epoch * cfg.epochs) if cfg.lookahead else None,
    )
    if resume is not None:
        _restore(loop, resume)
    if ddp.enabled:
        loop.step_model = DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None
        )
    if cfg.compile:
        loop.step_model = torch.compile(loop.step_model)
    return loop


def train_epoch(
    loop: Loop,
    epoch: int,
    steps: Iterable[int] | None = None,
    on_log: Callable[[int, float, int], None] | None = None,
) -> torch.Tensor:
    """One epoch (or the steps of it in `steps`); the summed train loss, left on the device.

    `on_log(global_step, loss, images_so_far)` runs every train.log_every steps: the only host
    sync inside the loop.
    """
    cfg, device, gen, ddp = loop.cfg, loop.device, loop.gen, loop.ddp
    aug = cfg.augment
    loop.model.train()
    n = len(loop.train_y)
    perm = torch.randperm(n, generator=gen).to(loop.train_x.device)
    loss_sum = torch.zeros((), device=device)
    for i in steps if steps is not None else range(loop.steps_per_epoch):
        idx = perm[i * cfg.batch_size : (i + 1) * cfg.batch_size]
        batch_len = len(idx)
        x = loop.train_x[idx].to(device, non_blocking=True)
        y = loop.train_y[idx].to(device, non_blocking=True)
        # Every rank draws the same augmentation for the whole global batch, then keeps its
        # shard: the result does not depend on the process count.
        if aug.crop_padding:
            x = batch_crop(x, aug.crop_padding, gen, aug.padding_mode)
        if loop.flip_mask is not None:
            x = flip_where(x, (loop.flip_mask[idx] ^ bool(epoch % 2)).to(device))
        elif aug.flip:
            x = batch_flip_lr(x, gen)
        if ddp.enabled:
            x, y = x[ddp.rank :: ddp.world_size], y[ddp.rank :: ddp.world_size]
        x = x.float().div_(255)
        if cfg.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with autocast(device, loop.autocast_dtype):
            loss_sum_batch = loop.criterion(loop.step_model(x), y)
        loss = loss_sum_batch * (ddp.world_size / batch_len)
        loop.optimizer.zero_grad(set_to_none=True)
        loop.scaler.scale(loss).backward()
        loop.scaler.step(loop.optimizer)
        loop.scaler.update()
        loop.scheduler.step()
        loop.global_step += 1
        if loop.lookahead is not None:
            loop.lookahead.after_step(loop.global_step)
        loss_sum += loss_sum_batch.detach()
        if on_log is not None and loop.global_step % cfg.log_every == 0:
            # A copy: the all-reduce works in place.
            value = all_reduce_sum(loss_sum_batch.detach().clone(), ddp).item() / batch_len
            on_log(loop.global_step, value, (i + 1) * cfg.batch_size)
    return loss_sum


def run(params: Params) -> dict[str, Any]:
    """Train per `params` on the preprocessed splits; write the model, metrics, plots, logs."""
    cfg = params.train
    ddp, device = distributed.init(runtime.pick_device(cfg.device))
    try:
        return _run(params, ddp, device)
    finally:
        distributed.shutdown(ddp)


def _run(params: Params, ddp: distributed.Dist, device: torch.device) -> dict[str, Any]:
    cfg = params.train
    torch.manual_seed(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)  # shuffling and augmentation, on CPU
    if device.type == "cuda" and not cfg.deterministic:
        torch.backends.cudnn.benchmark = True

    data_meta = read_data_meta()
    train_x, train_y = load_split("train")
    val_x, val_y = load_split("val")
    if len(val_y) == 0:
        log.warning("data.val_fraction is 0: validating on the test split, as the tutorial does")
        val_x, val_y = load_split("test")
    # Data lives on the device as uint8: 4x smaller than float, converted per batch.
    data_device = runtime.resident_device(train_x, device)
    train_x, train_y = train_x.to(data_device), train_y.to(data_device)
    classes = data_meta["classes"]
    image_size = data_meta["image_size"]

    arch_params = _arch_params(params)
    model = build_model(
        params.model.name,
        len(classes),
        image_size,
        arch_params,
        data_meta["mean"] if params.model.normalize else None,
        data_meta["std"] if params.model.normalize else None,
    )
    if cfg.deterministic:
        runtime.set_deterministic(model, params.model.name, device)
    if params.model.name == "fast":
        init_whitening(model.net.whiten, model.normalize(train_x[:5000].cpu().float() / 255))
        # The whitening filters stay as computed; only their bias trains (for 3 epochs).
        model.net.whiten.weight.requires_grad_(False)
    model = place_model(model, device, cfg)
    if ddp.enabled:
        model = distributed.sync_batch_norm(model, device)
    fp = fingerprint(params)
    loop = make_loop(model, train_x, train_y, cfg, device, ddp, gen, _resume_point(fp, ddp))
    progress = loop.progress
    start_epoch, history = progress.epoch, progress.history
    if start_epoch:
        log.info("resuming from %s after epoch %d of %d", CHECKPOINT, start_epoch, cfg.epochs)
    elif ddp.is_main:
        shutil.rmtree(paths.TB_DIR, ignore_errors=True)
    distributed.barrier(ddp)  # no rank may overwrite the checkpoint before all have read it

    writer = _Writer(ddp.is_main)
    if start_epoch == 0:
        writer.start(model, train_x[:32])

    t_start = time.perf_counter()
    images_seen = 0
    stopped_early = False
    n = len(train_y)
    best_val, bad_epochs = progress.best_val, progress.bad_epochs
    for epoch in range(start_epoch, cfg.epochs):
        bar = tqdm(
            range(loop.steps_per_epoch),
            desc=f"epoch {epoch + 1}/{cfg.epochs}",
            unit="step",
            disable=None if ddp.is_main else True,
            leave=False,
        )
        t_epoch = time.perf_counter()

        def on_log(
            step: int, value: float, images: int, bar: Any = bar, t_epoch: float = t_epoch
        ) -> None:
            writer.add_scalar("train_loss", value, step)
            history.steps.append({"step": step, "train_loss": value})
            bar.set_postfix(
                loss=f"{value:.3f}",
                img_s=f"{images / (time.perf_counter() - t_epoch):.0f}",
            )

        loss_sum = train_epoch(loop, epoch, bar, on_log)
        images_seen += n
        train_loss = all_reduce_sum(loss_sum, ddp).item() / n
        # Every rank evaluates the same weights on the same val split, so all reach the same
        # early-stopping decision without another collective.
        # Per-epoch validation skips test-time augmentation, as airbench does: TTA multiplies
        # its cost by up to 6 for a curve. The evaluate stage scores the model with its TTA.
        tta, model.tta = model.tta, 0
        try:
            val_loss, val_acc = evaluate_split(model, val_x, val_y, device, cfg.batch_size)
        finally:
            model.tta = tta
        lr_now = loop.optimizer.param_groups[0]["lr"]
        history.epochs.append(
            {
                "epoch": epoch + 1,
                "train_loss": train_loss,
                "val_loss": val_loss,
                "val_accuracy": val_acc,
                "lr": lr_now,
            }
        )
        for name, value in (
            ("epoch_train_loss", train_loss),
            ("val_loss", val_loss),
            ("val_accuracy", val_acc),
            ("lr", lr_now),
        ):
            writer.add_scalar(name, value, epoch + 1)
        writer.flush()
        log.log(
            logging.INFO if ddp.is_main else logging.DEBUG,
            "epoch %d/%d  train_loss %.4f  val_loss %.4f  val_acc %.4f  (%.1fs)",
            epoch + 1,
            cfg.epochs,
            train_loss,
            val_loss,
            val_acc,
            time.perf_counter() - t_epoch,
        )
        if val_loss < best_val:
            best_val, bad_epochs = val_loss, 0
        else:
            bad_epochs += 1
        diverged = not math.isfinite(train_loss)
        stopped_early = diverged or (cfg.patience > 0 and bad_epochs >= cfg.patience)
        done = stopped_early or epoch + 1 == cfg.epochs
        if ddp.is_main:  # rank 0 alone writes; the others hold identical state
            _save_checkpoint(fp, epoch + 1, done, loop, history, best_val, bad_epochs)
            write_plots(history)
        if diverged:
            log.error(
                "training diverged: train loss is %s after epoch %d; stopping. Lower train.lr "
                "(now %g) or add warmup (train.warmup_epochs)",
                train_loss,
                epoch + 1,
                cfg.lr,
            )
            break
        if stopped_early:
            log.info("early stopping: val loss has not improved for %d epochs", cfg.patience)
            break
    writer.close()
    seconds = time.perf_counter() - t_start

    meta = {
        "arch": params.model.name,
        "num_classes": len(classes),
        "image_size": image_size,
        "arch_params": arch_params,
        "normalize": params.model.normalize,
        "mean": data_meta["mean"],
        "std": data_meta["std"],
        "classes": classes,
        "params": params.as_dict(),
        "visionpipe_version": __version__,
        "torch_version": torch.__version__.split("+")[0],
    }
    last = history.epochs[-1]
    metrics = {
        "epochs_run": len(history.epochs),
        "stopped_early": stopped_early,
        "diverged": not math.isfinite(last["train_loss"]),
        "train_loss": round(last["train_loss"], 6),
        "val_loss": round(last["val_loss"], 6),
        "val_accuracy": round(last["val_accuracy"], 6),
        "best_val_loss": round(best_val, 6),
    }
    if not ddp.is_main:
        return metrics
    save_model(paths.MODEL, model, meta)
    write_json(paths.TRAIN_METRICS, metrics)
    write_json(
        paths.TRAIN_TIMINGS,
        {
            "device": runtime.device_name(device),
            "precision": runtime.precision_name(loop.autocast_dtype),
            "train_seconds": round(seconds, 2),
            "images_per_second": round(images_seen / seconds, 1) if seconds else None,
            "resumed_from_epoch": start_epoch,
            "processes": ddp.world_size,
        },
    )
    return metrics


def _arch_params(params: Params) -> dict[str, Any]:
    m = params.model
    common = {"weights": m.weights, "tta": m.tta}
    if m.name == "tutorial_cnn":
        return {"activation": m.activation, "batch_norm": m.batch_norm, **common}
    if m.name in ("vgg16", "resnet18"):
        return {"pretrained": m.pretrained, **common}
    return common


def _save_checkpoint(
    fp: str,
    epoch: int,
    done: bool,
    loop: Loop,
    history: History,
    best_val: float,
    bad_epochs: int,
) -> None:
    state = {
        "fingerprint": fp,
        "epoch": epoch,
        "done": done,
        "model": loop.model.state_dict(),
        "optimizer": loop.optimizer.state_dict(),
        "scheduler": loop.scheduler.state_dict(),
        "scaler": loop.scaler.state_dict(),
        "lookahead": loop.lookahead.slow if loop.lookahead is not None else None,
        "rng": runtime.rng_state(loop.gen, loop.device),
        "history": {"epochs": history.epochs, "steps": history.steps},
        "best_val": best_val,
        "bad_epochs": bad_epochs,
    }
    save_torch(CHECKPOINT, state)


def _resume_point(fp: str, ddp: distributed.Dist) -> dict[str, Any] | None:
    """The checkpoint state to resume from, or None to start fresh; the same on every rank.

    Only global rank 0 writes checkpoints, so only it reads one, and broadcasts what it read:
    on several machines the other nodes have no checkpoint of their own.
    """
    state = _read_checkpoint(fp) if ddp.is_main else None
    return distributed.broadcast_object(state, ddp)


def _read_checkpoint(fp: str) -> dict[str, Any] | None:
    """An interrupted run's state of the same params and data; None to start fresh.

    A finished run's checkpoint is not a resume point: `dvc repro -f` must really retrain.
    """
    if not CHECKPOINT.is_file():
        return None
    try:
        state = torch.load(CHECKPOINT, map_location="cpu", weights_only=True)
    except Exception as exc:  # a corrupt file from an older version: start fresh, but say so
        log.warning("ignoring unreadable checkpoint %s: %s", CHECKPOINT, exc)
        return None
    if state.get("fingerprint") != fp:
        log.info("checkpoint %s is from other params or data: starting fresh", CHECKPOINT)
        return None
    if state.get("done"):
        return None
    return state


def _restore(loop: Loop, state: dict[str, Any]) -> None:
    """Load a checkpoint into the loop's objects; a state that does not fit leaves them fresh."""
    own = loop.model.state_dict()
    theirs = state.get("model", {})
    if own.keys() != theirs.keys() or any(own[k].shape != theirs[k].shape for k in own):
        # Checked first: a half-loaded model would not be a fresh start.
        log.warning("checkpoint %s holds another model layout: starting fresh", CHECKPOINT)
        return
    try:
        # The optimizer checks its layout before it changes anything.
        loop.optimizer.load_state_dict(state["optimizer"])
        loop.scheduler.load_state_dict(state["scheduler"])
        loop.model.load_state_dict(theirs)
        if loop.lookahead is not None:
            for name, slow in loop.lookahead.slow.items():
                slow.copy_(state["lookahead"][name])
        if loop.scaler.is_enabled() and state.get("scaler"):
            loop.scaler.load_state_dict(state["scaler"])
    except (KeyError, TypeError, ValueError, RuntimeError) as exc:
        # Written by another visionpipe version with another optimizer layout: the weights
        # might load but the run would not continue as it began, so begin again.
        log.warning("checkpoint %s does not fit this version (%s): starting fresh", CHECKPOINT, exc)
        return
    runtime.set_rng_state(state["rng"], loop.gen, loop.device)
    loop.global_step = state["epoch"] * loop.steps_per_epoch
    history = History(state["history"]["epochs"], state["history"]["steps"])
    loop.progress = Progress(state["epoch"], history, state["best_val"], state["bad_epochs"])
