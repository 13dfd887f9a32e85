"""Optimisation: parameter groups, the optimizer, learning-rate schedules and lookahead."""

from __future__ import annotations

import logging
import math
from typing import Any

import torch
from torch import nn

from visionpipe.config.train import TrainConfig
from visionpipe.models import Classifier, unwrap, with_batch_norm
from visionpipe.weights import classifier_name

log = logging.getLogger(__name__)


def param_groups(model: nn.Module, cfg: TrainConfig) -> list[dict[str, Any]]:
    """The optimizer's parameter groups, each with a `name`.

    "default": every trainable parameter not named below; "norm_bias": BatchNorm biases, at
    lr * bias_lr_scale and weight_decay / bias_lr_scale (the same decay per step); then the
    groups the model trains for a set number of epochs only (`Classifier.lr_stops`, e.g.
    FastNet's "whiten_bias"), each with its `stop_epoch`. With a backbone_lr_scale below 1,
    the classifier (the net's last Linear, with any layer model.weights left fresh:
    `Classifier.head`) is a group of its own, first, at lr, and the other groups' lr is
    multiplied by the scale.
    """
    bare = unwrap(model)
    norm_biases = {
        id(m.bias)
        for m in bare.modules()
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.bias is not None
    }
    stops = bare.lr_stops() if isinstance(bare, Classifier) else {}
    stopped = {id(p): name for name, (params, _) in stops.items() for p in params}
    head: set[int] = set()
    if cfg.backbone_lr_scale != 1.0 and isinstance(bare, Classifier):
        head = {id(p) for p in bare.head()}
    elif cfg.backbone_lr_scale != 1.0:
        head = {id(p) for p in bare.get_submodule(classifier_name(bare)).parameters()}
    groups: dict[str, list[nn.Parameter]] = {"classifier": [], "default": [], "norm_bias": []}
    groups.update({name: [] for name in stops})
    for param in bare.parameters():
        if not param.requires_grad:
            continue
        if id(param) in head:
            groups["classifier"].append(param)
        elif id(param) in stopped:
            groups[stopped[id(param)]].append(param)
        elif id(param) in norm_biases:
            groups["norm_bias"].append(param)
        else:
            groups["default"].append(param)
    warn_if_no_norm_bias(cfg, groups["norm_bias"])
    scale = {"norm_bias": cfg.bias_lr_scale}
    backbone = cfg.backbone_lr_scale
    return [
        {
            "name": name,
            "params": params,
            "lr": cfg.lr * scale.get(name, 1.0) * (1.0 if name == "classifier" else backbone),
            "weight_decay": cfg.weight_decay / scale.get(name, 1.0),
            **({"stop_epoch": stops[name][1]} if name in stops else {}),
        }
        for name, params in groups.items()
        if params
    ]


def warn_if_no_norm_bias(cfg: TrainConfig, norm_biases: list[nn.Parameter]) -> None:
    """Say when train.bias_lr_scale has no BatchNorm bias to scale: it then changes nothing."""
    if cfg.bias_lr_scale == 1.0 or norm_biases:
        return
    log.warning(
        "train.bias_lr_scale %g multiplies the lr of BatchNorm biases, and this model trains "
        "none (it has no BatchNorm layer, or train.backbone_lr_scale 0 froze them): it "
        "changes nothing; set train.bias_lr_scale=1, or use a model with BatchNorm (%s)",
        cfg.bias_lr_scale,
        ", ".join(with_batch_norm()),
    )


def make_optimizer(
    model: nn.Module, cfg: TrainConfig, lr_device: torch.device | None = None
) -> torch.optim.Optimizer:
    """The optimizer over `param_groups`. With `lr_device` (a step captured as a CUDA graph),
    the fused implementation with each group's lr in a tensor on that device (`lr_tensors`): a
    graph reads the lr the scheduler writes there, where a Python float would be frozen in."""
    groups = param_groups(model, cfg)
    fused = {"fused": True} if lr_device is not None else {}
    if cfg.optimizer == "sgd":
        optimizer: torch.optim.Optimizer = torch.optim.SGD(
            groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov, **fused
        )
    elif cfg.optimizer == "adamw":
        # Adam's step count must live on the device too: torch refuses to capture it otherwise.
        capturable = {"capturable": True} if lr_device is not None else {}
        optimizer = torch.optim.AdamW(groups, lr=cfg.lr, **fused, **capturable)
    else:
        raise ValueError(f"Invalid optimizer '{cfg.optimizer}'. Only sgd and adamw are supported.")
    if lr_device is not None:
        lr_tensors(optimizer, lr_device)
    return optimizer


def lr_tensors(optimizer: torch.optim.Optimizer, device: torch.device) -> None:
    """Each group's lr as a tensor of its own on `device`, its schedule base (`initial_lr`, when
    set) as a float; also after a checkpoint's state is loaded, which replaces both.

    A float base keeps the scheduler's arithmetic on the host: it then fills the tensor in place
    with a float, one small kernel and no read back from the GPU.
    """
    for group in optimizer.param_groups:
        group["lr"] = torch.tensor(float(group["lr"]), device=device)
        if "initial_lr" in group:
            group["initial_lr"] = float(group["initial_lr"])


def lr_factor(step: int, total: int, warmup: int, schedule: str) -> float:
    """Multiplier of the base lr at optimizer step `step` (0-based) of `total`."""
    if schedule == "onecycle" and warmup == 0:
        warmup = max(1, total // 4)
    if schedule == "triangle":
        # airbench94's: 0.2x at the start, 1x at 23% of the run (or after the warmup), 0.07x at
        # the end, linear in between.
        peak = warmup if warmup > 0 else max(1, int(total * 0.23))  # a run of under 5 steps
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


def warn_if_no_warmup(cfg: TrainConfig, steps_per_epoch: int) -> None:
    """Say when a warmup asked for (train.warmup_epochs, or onecycle's quarter of the run) spans
    one step or none: its ramp (step + 1) / warmup then starts at the peak lr."""
    total = steps_per_epoch * cfg.epochs
    warmup = round(cfg.warmup_epochs * steps_per_epoch)
    if cfg.schedule == "triangle":
        return  # it starts at 0.2x whatever its warmup
    if cfg.schedule == "onecycle" and warmup == 0:
        warmup, asked = max(1, total // 4), "onecycle's warmup (a quarter of the run)"
    elif cfg.warmup_epochs > 0:
        asked = f"train.warmup_epochs {cfg.warmup_epochs:g}"
    else:
        return
    if warmup > 1:
        return
    log.warning(
        "%s is %d of this run's %d optimizer steps (%d per epoch), so training starts at the peak "
        "train.lr %g without a warmup; for one, set train.warmup_epochs to %g or more (2 steps) "
        "or take more steps (a smaller train.batch_size, more epochs)",
        asked,
        warmup,
        total,
        steps_per_epoch,
        cfg.lr,
        2 / steps_per_epoch,
    )


def make_scheduler(
    optimizer: torch.optim.Optimizer, cfg: TrainConfig, steps_per_epoch: int
) -> torch.optim.lr_scheduler.LambdaLR:
    """The schedule per group; a group with a `stop_epoch` gets lr 0 from that epoch on."""
    total = steps_per_epoch * cfg.epochs
    warmup = round(cfg.warmup_epochs * steps_per_epoch)
    warn_if_no_warmup(cfg, steps_per_epoch)

    def factor(step: int) -> float:
        return lr_factor(step, total, warmup, cfg.schedule)

    def stopping_at(stop_step: int):
        # lr 0 leaves the parameters exactly where they are, whatever momentum and decay hold.
        return lambda step: factor(step) if step < stop_step else 0.0

    lambdas = [
        stopping_at(g["stop_epoch"] * steps_per_epoch) if "stop_epoch" in g else factor
        for g in optimizer.param_groups
    ]
    for group in optimizer.param_groups:  # see lr_tensors: the base stays a float
        group.setdefault("initial_lr", float(group["lr"]))
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
        if total_steps < self.EVERY:
            log.warning(
                "train.lookahead: this run takes %d optimizer steps, fewer than the %d after "
                "which lookahead first moves its slow weights, so it ends on the weights it "
                "started from and learns nothing; take more steps (more train.epochs, a smaller "
                "train.batch_size) or set train.lookahead: false",
                total_steps,
                self.EVERY,
            )
        # The model's own tensors, looked up once: state_dict() shares their storage, and
        # training and resuming only ever write into them in place.
        self.live = {k: v for k, v in unwrap(model).state_dict().items() if v.is_floating_point()}
        self.slow = {k: v.detach().clone() for k, v in self.live.items()}
        # The same tensors as lists, in one order, for the multi-tensor (_foreach) ops: one
        # call over all of them instead of two small kernels per tensor.
        self._live, self._slow = list(self.live.values()), list(self.slow.values())

    @torch.no_grad()
    def after_step(self, step: int) -> None:
        """Call after optimizer step number `step` (1-based)."""
        if step % self.EVERY == 0:
            self._update(0.95**5 * (step / self.total) ** 3)
        if step == self.total:
            self._update(1.0)

    def _update(self, decay: float) -> None:
        torch._foreach_lerp_(self._slow, self._live, 1.0 - decay)
        torch._foreach_copy_(self._live, self._slow)
