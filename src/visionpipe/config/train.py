"""The train section: how the model is fitted."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from visionpipe.config import Section, Seed


class AugmentConfig(Section):
    crop_padding: int = Field(default=0, ge=0, le=16)  # random crop after this much padding
    padding_mode: Literal["zeros", "reflect"] = "zeros"  # how crop_padding pads
    # Horizontal flip: false, true (each image, each epoch, at random) or "alternate" (airbench:
    # a random half flipped in even epochs, the other half in odd ones; more distinct views).
    flip: Literal[False, True, "alternate"] = False

    @model_validator(mode="after")
    def _reflect_fits(self) -> AugmentConfig:
        if self.padding_mode == "reflect" and self.crop_padding == 0:
            raise ValueError("train.augment.padding_mode 'reflect' needs crop_padding > 0")
        return self


class TrainConfig(Section):
    epochs: int = Field(default=10, ge=1, le=10_000)
    batch_size: int = Field(default=64, ge=1, le=65_536)
    optimizer: Literal["sgd", "adamw"] = "sgd"
    lr: float = Field(default=0.01, gt=0.0, le=100.0)
    momentum: float = Field(default=0.0, ge=0.0, lt=1.0)
    nesterov: bool = False
    weight_decay: float = Field(default=0.0, ge=0.0)
    # constant | cosine | onecycle (linear up to the peak over the warmup, a quarter of the run
    # unless warmup_epochs is set, then linear down to 0) | triangle (airbench: 0.2x -> 1x over
    # the warmup, 23% of the run unless warmup_epochs is set, -> 0.07x). A warmup of one step or
    # none starts at the peak (optim.warn_if_no_warmup says so): docs/training.md.
    schedule: Literal["constant", "cosine", "onecycle", "triangle"] = "constant"
    warmup_epochs: float = Field(default=0.0, ge=0.0)
    # Learning rate multiplier for BatchNorm biases, weight decay divided by it so the decay
    # stays the same (airbench uses 64).
    bias_lr_scale: float = Field(default=1.0, gt=0.0, le=1024.0)
    # Fine-tuning: lr multiplier for every layer but the classifier (the net's last Linear);
    # 0 freezes them (no gradients, BatchNorm statistics kept): the classifier trains alone.
    backbone_lr_scale: float = Field(default=1.0, ge=0.0, le=1.0)
    # airbench's lookahead: every 5 steps the slow weights move toward the trained ones (more
    # slowly as training ends) and training restarts from them; the run ends on the slow weights.
    lookahead: bool = False
    label_smoothing: float = Field(default=0.0, ge=0.0, lt=1.0)
    augment: AugmentConfig = AugmentConfig()
    seed: Seed = 0
    log_every: int = Field(default=100, ge=1)  # train loss to TensorBoard/plots every N steps
    patience: int = Field(default=0, ge=0)  # early stopping on val loss; 0 = off
    # How much the val loss must fall for an epoch to count as a gain (Keras' min_delta).
    min_delta: float = Field(default=0.0, ge=0.0, allow_inf_nan=False)
    deterministic: bool = False  # force deterministic algorithms on GPU
    compile: bool = False  # torch.compile the model
    # The whole train step as one CUDA graph (steps.py): on a GPU, one launch instead of one per
    # kernel; needs CUDA, one process, no compile, no fp16. Elsewhere the steps run eagerly.
    cuda_graph: bool = False
    # bf16 autocast where the hardware computes bf16 faster than fp32: CUDA 8.0+, CPUs with AMX
    # (2.2x the tutorial's fp32 steps) and AMD's with AVX512-BF16. false: fp32 everywhere.
    amp: bool = True
    channels_last: bool = True  # channels-last memory format (much faster on CPU and GPU)

    @model_validator(mode="after")
    def _nesterov_needs_momentum(self) -> TrainConfig:
        if self.nesterov and self.momentum == 0.0:
            raise ValueError("train.nesterov: true needs train.momentum > 0")
        return self

    @model_validator(mode="after")
    def _momentum_is_sgds(self) -> TrainConfig:
        # AdamW keeps its own momentum (beta1 0.9): these two would be read by nothing.
        set_here = [f"train.momentum {self.momentum:g}"] if self.momentum != 0.0 else []
        set_here += ["train.nesterov true"] if self.nesterov else []
        if self.optimizer != "sgd" and set_here:
            raise ValueError(
                f"{' and '.join(set_here)}: momentum applies to train.optimizer sgd only; "
                f"'{self.optimizer}' keeps its own (beta1 0.9) and would ignore it. Set "
                "train.momentum: 0 and train.nesterov: false, or train.optimizer: sgd"
            )
        return self

    @model_validator(mode="after")
    def _warmup_fits_the_run(self) -> TrainConfig:
        # The ramp is (step + 1) / warmup steps: a warmup longer than the run never reaches
        # train.lr, and the schedule's decay never starts.
        if self.warmup_epochs > self.epochs:
            raise ValueError(
                f"train.warmup_epochs {self.warmup_epochs:g} is longer than the run "
                f"(train.epochs {self.epochs}), so the lr would never reach train.lr: set "
                f"train.warmup_epochs to at most {self.epochs}"
            )
        return self
