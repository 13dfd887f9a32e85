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
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from visionpipe import __version__, distributed, paths
from visionpipe.config import Params, TrainConfig
from visionpipe.distributed import all_reduce_sum
from visionpipe.fsutil import save_torch, write_json, write_text
from visionpipe.models import Classifier, _unwrap, build_model, init_whitening, save_model

log = logging.getLogger(__name__)

CHECKPOINT = paths.CHECKPOINT_DIR / "last.pt"


def pick_device(choice: str = "auto") -> torch.device:
    """CUDA, then MPS, then CPU; an explicit choice that is unavailable is an error."""
    if choice == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if choice == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("train.device = 'cuda' but no CUDA GPU is visible; use 'auto' or 'cpu'")
    if choice == "mps" and not torch.backends.mps.is_available():
        raise RuntimeError("train.device = 'mps' but MPS is not available; use 'auto' or 'cpu'")
    return torch.device(choice)


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


def resident_device(images: torch.Tensor, device: torch.device) -> torch.device:
    """Where the uint8 train set lives: on the GPU when it takes under half its free memory."""
    if device.type != "cuda":
        return device
    free, _ = torch.cuda.mem_get_info(device)
    size = images.numel() * images.element_size()
    if size < free // 2:
        return device
    log.warning(
        "train split is %.1f GiB, over half the GPU's free %.1f GiB: keeping it in host memory "
        "and copying each batch",
        size / 2**30,
        free / 2**30,
    )
    return torch.device("cpu")


def batch_crop(x: torch.Tensor, padding: int, gen: torch.Generator) -> torch.Tensor:
    """Random crops of a uint8 batch after zero padding, as one gather (no per-image loop)."""
    b, c, h, w = x.shape
    padded = F.pad(x, (padding, padding, padding, padding))
    dy = torch.randint(0, 2 * padding + 1, (b,), generator=gen).to(x.device)
    dx = torch.randint(0, 2 * padding + 1, (b,), generator=gen).to(x.device)
    rows = (dy[:, None] + torch.arange(h, device=x.device))[:, None, :, None]
    cols = (dx[:, None] + torch.arange(w, device=x.device))[:, None, None, :]
    bidx = torch.arange(b, device=x.device)[:, None, None, None]
    cidx = torch.arange(c, device=x.device)[None, :, None, None]
    return padded[bidx, cidx, rows, cols]


def batch_flip_lr(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    flip = (torch.rand(x.shape[0], generator=gen) < 0.5).to(x.device)
    return torch.where(flip[:, None, None, None], x.flip(3), x)


def lr_factor(step: int, total: int, warmup: int, schedule: str) -> float:
    """Multiplier of the base lr at optimizer step `step` (0-based) of `total`."""
    if schedule == "onecycle" and warmup == 0:
        warmup = max(1, total // 4)
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    if schedule == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * progress))
    if schedule == "onecycle":
        return max(0.0, 1.0 - progress)
    return 1.0


def make_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(
            model.parameters(),
            lr=cfg.lr,
            momentum=cfg.momentum,
            nesterov=cfg.nesterov,
            weight_decay=cfg.weight_decay,
        )
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    raise ValueError(f"Invalid optimizer '{cfg.optimizer}'. Only sgd and adamw are supported.")


@torch.no_grad()
def predict_logits(
    model: nn.Module, images: torch.Tensor, device: torch.device, batch_size: int = 1000
) -> torch.Tensor:
    """Float32 logits on CPU for uint8 NCHW `images` (any device), in eval mode."""
    model.eval()
    out = []
    for i in range(0, len(images), batch_size):
        x = images[i : i + batch_size].to(device, non_blocking=True).float().div_(255)
        x = x.contiguous(memory_format=torch.channels_last)
        with _autocast(device, enabled=device.type == "cuda"):
            out.append(model(x).float().cpu())
    return torch.cat(out) if out else torch.empty(0)


def _autocast(device: torch.device, enabled: bool):
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=enabled)


def evaluate_split(
    model: nn.Module, images: torch.Tensor, labels: torch.Tensor, device: torch.device
) -> tuple[float, float]:
    """(mean cross-entropy, accuracy) over a split."""
    logits = predict_logits(model, images, device)
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


def _rng_state(gen: torch.Generator) -> dict[str, Any]:
    state = {"torch": torch.get_rng_state(), "gen": gen.get_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any], gen: torch.Generator) -> None:
    torch.set_rng_state(state["torch"])
    gen.set_state(state["gen"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _log_tensorboard_start(writer: Any, model: Classifier, sample: torch.Tensor) -> None:
    """Input grid, first-conv feature maps (the tutorial's conv lesson) and the model graph."""
    import torchvision

    writer.add_image("inputs", torchvision.utils.make_grid(sample[:32], nrow=8), 0)
    first_conv = next((m for m in model.modules() if isinstance(m, nn.Conv2d)), None)
    if first_conv is not None:
        with torch.no_grad():
            maps = first_conv(model.normalize(sample[:4].float() / 255))
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
            writer.add_graph(model, sample[:1].float() / 255)
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


def run(params: Params) -> dict[str, Any]:
    """Train per `params` on the preprocessed splits; write the model, metrics, plots, logs."""
    cfg = params.train
    ddp, device = distributed.init(pick_device(cfg.device))
    try:
        return _run(params, ddp, device)
    finally:
        distributed.shutdown(ddp)


def _run(params: Params, ddp: distributed.Dist, device: torch.device) -> dict[str, Any]:
    cfg = params.train
    torch.manual_seed(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)  # shuffling and augmentation, on CPU
    if cfg.deterministic:
        torch.use_deterministic_algorithms(True, warn_only=False)
        torch.backends.cudnn.benchmark = False
    elif device.type == "cuda":
        torch.backends.cudnn.benchmark = True

    data_meta = read_data_meta()
    train_x, train_y = load_split("train")
    val_x, val_y = load_split("val")
    if len(val_y) == 0:
        log.warning("data.val_fraction is 0: validating on the test split, as the tutorial does")
        val_x, val_y = load_split("test")
    # Data lives on the device as uint8: 4x smaller than float, converted per batch.
    data_device = resident_device(train_x, device)
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
    if params.model.name == "fast":
        init_whitening(model.net.whiten, model.normalize(train_x[:5000].cpu().float() / 255))
        model.net.whiten.requires_grad_(False)
    model = model.to(device)
    use_cuda_tricks = device.type == "cuda"
    # channels_last pays on CPU too: 8x faster train steps for the tutorial CNN on 2 cores.
    if cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)

    n = len(train_y)
    steps_per_epoch = math.ceil(n / cfg.batch_size)
    total_steps = steps_per_epoch * cfg.epochs
    warmup_steps = round(cfg.warmup_epochs * steps_per_epoch)
    optimizer = make_optimizer(model, cfg)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: lr_factor(s, total_steps, warmup_steps, cfg.schedule)
    )
    # Summed, then divided by the global batch length: with several ranks DDP averages the
    # gradients, so each rank scales by world_size and the result equals one process's mean.
    criterion = nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing, reduction="sum")

    history = History()
    start_epoch, best_val, bad_epochs = 0, math.inf, 0
    fp = fingerprint(params)
    resumed = _try_resume(fp, model, optimizer, scheduler, gen)
    if resumed is not None:
        start_epoch, history, best_val, bad_epochs = resumed
        log.info("resuming from %s after epoch %d of %d", CHECKPOINT, start_epoch, cfg.epochs)
    elif ddp.is_main:
        shutil.rmtree(paths.TB_DIR, ignore_errors=True)
    distributed.barrier(ddp)  # no rank may overwrite the checkpoint before all have read it

    writer = _Writer(ddp.is_main)
    if start_epoch == 0:
        writer.start(_unwrap(model), train_x[:32].cpu())
    step_model: nn.Module = model
    if ddp.enabled:
        step_model = DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None
        )
    if cfg.compile:
        step_model = torch.compile(step_model)

    t_start = time.perf_counter()
    images_seen = 0
    stopped_early = False
    global_step = start_epoch * steps_per_epoch
    for epoch in range(start_epoch, cfg.epochs):
        model.train()
        perm = torch.randperm(n, generator=gen).to(data_device)
        loss_sum = torch.zeros((), device=device)
        bar = tqdm(
            range(steps_per_epoch),
            desc=f"epoch {epoch + 1}/{cfg.epochs}",
            unit="step",
            disable=None if ddp.is_main else True,
            leave=False,
        )
        t_epoch = time.perf_counter()
        for i in bar:
            idx = perm[i * cfg.batch_size : (i + 1) * cfg.batch_size]
            batch_len = len(idx)
            x = train_x[idx].to(device, non_blocking=True)
            y = train_y[idx].to(device, non_blocking=True)
            # Every rank draws the same augmentation for the whole global batch, then keeps its
            # shard: the result does not depend on the process count.
            if cfg.augment.crop_padding:
                x = batch_crop(x, cfg.augment.crop_padding, gen)
            if cfg.augment.flip:
                x = batch_flip_lr(x, gen)
            if ddp.enabled:
                x, y = x[ddp.rank :: ddp.world_size], y[ddp.rank :: ddp.world_size]
            x = x.float().div_(255)
            if cfg.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            with _autocast(device, enabled=use_cuda_tricks and cfg.amp):
                loss_sum_batch = criterion(step_model(x), y)
            loss = loss_sum_batch * (ddp.world_size / batch_len)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            global_step += 1
            loss_sum += loss_sum_batch.detach()
            if global_step % cfg.log_every == 0:
                # The only host sync in the loop, at logging steps.
                value = all_reduce_sum(loss_sum_batch.detach().clone(), ddp).item() / batch_len
                writer.add_scalar("train_loss", value, global_step)
                history.steps.append({"step": global_step, "train_loss": value})
                bar.set_postfix(
                    loss=f"{value:.3f}",
                    img_s=f"{(i + 1) * cfg.batch_size / (time.perf_counter() - t_epoch):.0f}",
                )
        images_seen += n
        train_loss = all_reduce_sum(loss_sum, ddp).item() / n
        # Every rank evaluates the same weights on the same val split, so all reach the same
        # early-stopping decision without another collective.
        val_loss, val_acc = evaluate_split(model, val_x, val_y, device)
        lr_now = optimizer.param_groups[0]["lr"]
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
            _save_checkpoint(
                fp,
                epoch + 1,
                done,
                model,
                optimizer,
                scheduler,
                gen,
                history,
                best_val,
                bad_epochs,
            )
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
            "device": _device_name(device),
            "train_seconds": round(seconds, 2),
            "images_per_second": round(images_seen / seconds, 1) if seconds else None,
            "resumed_from_epoch": start_epoch,
            "processes": ddp.world_size,
        },
    )
    return metrics


def _arch_params(params: Params) -> dict[str, Any]:
    m = params.model
    if m.name == "tutorial_cnn":
        return {"activation": m.activation, "batch_norm": m.batch_norm, "weights": m.weights}
    if m.name in ("vgg16", "resnet18"):
        return {"pretrained": m.pretrained, "weights": m.weights}
    return {"weights": m.weights}


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return device.type


def _save_checkpoint(
    fp: str,
    epoch: int,
    done: bool,
    model: nn.Module,
    optimizer: Any,
    scheduler: Any,
    gen: torch.Generator,
    history: History,
    best_val: float,
    bad_epochs: int,
) -> None:
    state = {
        "fingerprint": fp,
        "epoch": epoch,
        "done": done,
        "model": _unwrap(model).state_dict(),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "rng": _rng_state(gen),
        "history": {"epochs": history.epochs, "steps": history.steps},
        "best_val": best_val,
        "bad_epochs": bad_epochs,
    }
    save_torch(CHECKPOINT, state)


def _try_resume(
    fp: str, model: nn.Module, optimizer: Any, scheduler: Any, gen: torch.Generator
) -> tuple[int, History, float, int] | None:
    """Restore an interrupted run of the same params and data; None to start fresh.

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
    _unwrap(model).load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    _set_rng_state(state["rng"], gen)
    history = History(state["history"]["epochs"], state["history"]["steps"])
    return state["epoch"], history, state["best_val"], state["bad_epochs"]
