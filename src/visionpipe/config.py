"""The one loader of params.yaml: typed, frozen, strict; and its composition from conf/.

Every stage reads its configuration through `load_params`. An unknown key (a typo such as
`train.lr_rate`, which `dvc exp run -S +train.lr_rate=...` adds silently) or an invalid value fails
here, before any download or training work, with a message naming the key, the value and what is
allowed.

params.yaml is composed by DVC's Hydra support on `dvc exp run -S ...` from conf/config.yaml, the
recipe (conf/recipe/<name>.yaml) and the -S values; `dvc repro` runs it as it is. `load_params`
says so when params.yaml holds values conf/ would not give it (a hand edit, or conf/ edited since),
because the next `dvc exp run -S` would drop them.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

DEFAULT_PARAMS = Path("params.yaml")
CONF_DIR = Path("conf")  # Hydra's config dir (`dvc config hydra`): config.yaml, recipe/, local/

# The model zoo's names (visionpipe.models builds them) and the model.* keys each one takes
# besides the ones every model takes (name, normalize, weights, tta).
ARCHS = ("tutorial_cnn", "alexnet", "vgg16", "resnet18", "fast")
MODEL_KEYS: dict[str, tuple[str, ...]] = {
    "tutorial_cnn": ("activation", "batch_norm"),
    "alexnet": (),
    "vgg16": ("pretrained",),
    "resnet18": ("pretrained",),
    "fast": (),
}
COMMON_MODEL_KEYS = ("name", "normalize", "weights", "tta")
# The named recipes: conf/recipe/<name>.yaml each (tests/test_recipes.py keeps them in step).
RECIPES = ("tutorial", "fast", "resnet18", "alexnet", "vgg16", "hymenoptera")


class ConfigError(ValueError):
    """params.yaml is missing, unreadable or holds a bad key or value."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=False)


class DataConfig(_Section):
    dataset: Literal["cifar10", "hymenoptera", "imagefolder"] = "cifar10"
    # null: the dataset's official archive (via DATA_MIRROR first, when set). Otherwise a local path
    # or URL of that archive, or of an image-folder export (directory, .zip, .tar.gz, .tgz, .tar).
    source: str | None = None
    # Optional hex SHA-256 of `source`; checked like the official MD5 is for the official archive.
    sha256: str | None = Field(default=None, pattern=r"^[0-9a-fA-F]{64}$")
    # Share of a flat image folder (<class>/<image>, no split folders) held out for testing;
    # null: 0.2. Only for such folders: datasets with their own test split refuse a number.
    test_fraction: float | None = Field(default=None, gt=0.0, lt=1.0)
    val_fraction: float = Field(default=0.1, ge=0.0, lt=1.0)  # share of train held out for val
    seed: int = 0  # seeds the train/val split (and a flat folder's test split)
    on_bad_image: Literal["skip", "fail"] = "skip"  # undecodable images: skip and report, or stop

    @model_validator(mode="after")
    def _imagefolder_needs_source(self) -> DataConfig:
        if self.dataset == "imagefolder" and not self.source:
            raise ValueError(
                "data.dataset 'imagefolder' has no official archive: set data.source to a"
                " directory, .zip, .tar.gz or URL of class folders (<class>/<image>, or"
                " train/<class>/<image> plus test/ or val/); see README 'Your own photos'"
            )
        if self.dataset != "imagefolder" and self.test_fraction is not None:
            raise ValueError(
                f"data.test_fraction = {self.test_fraction} applies to flat image folders only;"
                f" {self.dataset} has its own test split. Set data.test_fraction back to null"
            )
        return self


class PreprocessConfig(_Section):
    # Side of the square images in pixels (shorter side resized, then center crop);
    # null: the dataset's default (32 for cifar10, 64 otherwise).
    image_size: int | None = Field(default=None, ge=8, le=1024)


class ModelConfig(_Section):
    name: Literal[ARCHS] = "tutorial_cnn"  # type: ignore[valid-type]
    activation: Literal["none", "relu"] = "none"  # tutorial_cnn only: the seeds' net has none
    batch_norm: bool = False  # tutorial_cnn only
    # Normalize inputs with the train split's mean/std inside the model. Off by default: the
    # tutorial feeds ToTensor's [0, 1] pixels straight in.
    normalize: bool = False
    pretrained: bool = False  # vgg16/resnet18: ImageNet weights from the torch hub cache
    weights: str | None = None  # path of a local weights file (torchvision or exported model.pt)
    # Test-time augmentation inside the model's eval forward (so evaluate, the ONNX export and
    # predict all agree): 0 none, 1 mean logits of the image and its mirror, 2 also of the
    # one-pixel shifts up-left and down-right (airbench's levels).
    tta: int = Field(default=0, ge=0, le=2)

    @model_validator(mode="after")
    def _keys_fit_the_model(self) -> ModelConfig:
        # Every key is always in params.yaml, so "set" means changed from its default: the
        # tutorial CNN's relu on fast would otherwise be silently ignored.
        specific = sorted({k for keys in MODEL_KEYS.values() for k in keys})
        for key in [k for k in specific if k not in MODEL_KEYS[self.name]]:
            default = type(self).model_fields[key].default
            if getattr(self, key) != default:
                applies = ", ".join((*COMMON_MODEL_KEYS, *MODEL_KEYS[self.name]))
                raise ValueError(
                    f"model.{key} = {json.dumps(getattr(self, key))} does not apply to model "
                    f"'{self.name}' (only to {_models_taking(key)}); the keys for "
                    f"'{self.name}' are {applies}. Set model.{key} back to {json.dumps(default)}"
                )
        return self


class AugmentConfig(_Section):
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


class TrainConfig(_Section):
    epochs: int = Field(default=10, ge=1, le=10_000)
    batch_size: int = Field(default=64, ge=1, le=65_536)
    optimizer: Literal["sgd", "adamw"] = "sgd"
    lr: float = Field(default=0.01, gt=0.0, le=100.0)
    momentum: float = Field(default=0.0, ge=0.0, lt=1.0)
    nesterov: bool = False
    weight_decay: float = Field(default=0.0, ge=0.0)
    # constant | cosine | onecycle (linear up to the peak, linear down to 0) | triangle
    # (airbench: 0.2x -> 1x over the warmup, 23% of the run unless warmup_epochs is set, -> 0.07x)
    schedule: Literal["constant", "cosine", "onecycle", "triangle"] = "constant"
    warmup_epochs: float = Field(default=0.0, ge=0.0)
    # Learning rate multiplier for BatchNorm biases, weight decay divided by it so the decay
    # stays the same (airbench uses 64).
    bias_lr_scale: float = Field(default=1.0, gt=0.0, le=1024.0)
    # airbench's lookahead: every 5 steps the slow weights move toward the trained ones (more
    # slowly as training ends) and training restarts from them; the run ends on the slow weights.
    lookahead: bool = False
    label_smoothing: float = Field(default=0.0, ge=0.0, lt=1.0)
    augment: AugmentConfig = AugmentConfig()
    seed: int = 0
    log_every: int = Field(default=100, ge=1)  # train loss to TensorBoard/plots every N steps
    patience: int = Field(default=0, ge=0)  # early stopping on val loss; 0 = off
    deterministic: bool = False  # force deterministic algorithms on GPU
    compile: bool = False  # torch.compile the model
    # bf16 autocast where the hardware computes in bf16 natively: CUDA, and CPUs with
    # AVX512-BF16 or AMX (about 1.7x faster train steps on such a CPU). false: fp32 everywhere.
    amp: bool = True
    channels_last: bool = True  # channels-last memory format (much faster on CPU and GPU)

    @model_validator(mode="after")
    def _nesterov_needs_momentum(self) -> TrainConfig:
        if self.nesterov and self.momentum == 0.0:
            raise ValueError("train.nesterov: true needs train.momentum > 0")
        return self


class LaunchConfig(_Section):
    """Where and how training runs, never what it means: no stage depends on these, so changing
    them never re-runs anything, and every machine of a multi-node run writes the same dvc.lock."""

    device: Literal["auto", "cpu", "cuda", "mps"] = "auto"
    # Processes per node and nodes for DistributedDataParallel through torchrun; batch_size stays
    # the global batch, so results keep their meaning whatever the process count.
    nproc: int = Field(default=1, ge=1, le=1024)
    nnodes: int = Field(default=1, ge=1)
    node_rank: int = Field(default=0, ge=0)  # this machine's rank; 0 on master_addr
    master_addr: str = "127.0.0.1"  # rendezvous host (node 0) when nnodes > 1
    master_port: int = Field(default=29500, ge=1, le=65535)

    @model_validator(mode="after")
    def _rank_fits(self) -> LaunchConfig:
        if self.node_rank >= self.nnodes:
            raise ValueError(f"launch.node_rank {self.node_rank} must be below launch.nnodes")
        return self


class ExportConfig(_Section):
    opset: int = Field(default=18, ge=17, le=23)  # ONNX opset the export is pinned to
    parity_images: int = Field(default=256, ge=1)  # test images compared with onnxruntime
    # Largest allowed logit difference, times the largest |logit| when that is above 1.
    max_abs_diff: float = Field(default=1e-4, gt=0.0)


class PredictConfig(_Section):
    # Extra images to classify besides the per-class samples: files, folders or globs.
    inputs: list[str] = []
    topk: int = Field(default=3, ge=1)


class Params(_Section):
    # Which recipe (conf/recipe/<name>.yaml) the values below were composed from: a label that
    # `dvc exp run -S recipe=fast` sets together with the recipe's values.
    recipe: Literal[RECIPES] = "tutorial"  # type: ignore[valid-type]
    about: str = ""  # params.yaml's own note: where it comes from
    data: DataConfig = DataConfig()
    preprocess: PreprocessConfig = PreprocessConfig()
    model: ModelConfig = ModelConfig()
    train: TrainConfig = TrainConfig()
    export: ExportConfig = ExportConfig()
    predict: PredictConfig = PredictConfig()
    launch: LaunchConfig = LaunchConfig()

    @model_validator(mode="after")
    def _batch_fits_processes(self) -> Params:
        processes = self.launch.nproc * self.launch.nnodes
        if self.train.batch_size < processes:
            raise ValueError(
                f"train.batch_size {self.train.batch_size} (the global batch) must be at least "
                f"launch.nproc * launch.nnodes = {processes}"
            )
        return self

    def image_size(self) -> int:
        if self.preprocess.image_size is not None:
            return self.preprocess.image_size
        return 32 if self.data.dataset == "cifar10" else 64

    def as_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")

    def run_dict(self) -> dict[str, Any]:
        """What a run means: every section but the launch settings and params.yaml's note."""
        return {k: v for k, v in self.as_dict().items() if k not in ("launch", "about")}


def _models_taking(key: str) -> str:
    return ", ".join(name for name, keys in MODEL_KEYS.items() if key in keys)


def _describe(err: dict[str, Any], raw: Any) -> str:
    key = ".".join(str(p) for p in err["loc"])
    if err["type"] == "value_error":  # a check across keys: its message names them
        return str(err["msg"]).removeprefix("Value error, ")
    if err["type"] == "extra_forbidden":
        section: Any = Params
        for part in err["loc"][:-1]:
            field = section.model_fields.get(str(part))
            section = field.annotation if field is not None else None
        valid = sorted(section.model_fields) if isinstance(section, type) else []
        return f"unknown key '{key}'; valid keys here: {', '.join(valid)}"
    value = raw
    for part in err["loc"]:
        value = value.get(part) if isinstance(value, dict) else None
    where = f"'{key}'" if key else "params"
    return f"{where} = {value!r}: {err['msg']}"


def parse_params(raw: Any, origin: str = "params") -> Params:
    """Validate a parsed mapping into `Params`; ConfigError names each problem."""
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{origin}: expected a mapping of sections, got {type(raw).__name__}")
    try:
        return Params.model_validate(raw)
    except ValidationError as exc:
        lines = [_describe(e, raw) for e in exc.errors()]
        raise ConfigError(f"{origin} is invalid:\n  - " + "\n  - ".join(lines)) from None


def compose_yaml(overrides: list[str], conf_dir: Path = CONF_DIR) -> str:
    """conf/ composed with Hydra override strings (`train.lr=0.1`, `recipe=fast`): the text
    `dvc exp run -S` writes to params.yaml, made the same way (DVC's compose_and_dump)."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from omegaconf import OmegaConf

    with initialize_config_dir(str(conf_dir.resolve()), version_base=None):
        cfg = hydra_compose(config_name="config", overrides=overrides)
    OmegaConf.resolve(cfg)
    return OmegaConf.to_yaml(cfg)


def compose(overrides: list[str], conf_dir: Path = CONF_DIR) -> dict[str, Any]:
    """conf/ composed with Hydra override strings, as a plain mapping."""
    return yaml.safe_load(compose_yaml(overrides, conf_dir))


def drift(raw: dict[str, Any], conf_dir: Path = CONF_DIR) -> list[str]:
    """The dotted keys where params.yaml differs from conf/ composed with its recipe, but for the
    launch settings (machine-local by design)."""
    recipe = raw.get("recipe", "tutorial")
    composed = compose([f"recipe={recipe}"], conf_dir)
    return [k for k in diff_keys(raw, composed) if not k.startswith("launch.")]


def diff_keys(a: Any, b: Any, prefix: str = "") -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        keys = [*a, *(k for k in b if k not in a)]
        return [d for k in keys for d in diff_keys(a.get(k), b.get(k), f"{prefix}{k}.")]
    return [] if a == b else [prefix.rstrip(".")]


def _warn_drift(raw: dict[str, Any], path: Path) -> None:
    """Say which values params.yaml holds that conf/ does not give it (outside `dvc exp run`,
    whose -S values are exactly such values)."""
    import logging
    import os

    if os.environ.get("DVC_EXP_BASELINE_REV") or not (CONF_DIR / "config.yaml").is_file():
        return
    if path.resolve() != DEFAULT_PARAMS.resolve():
        return
    keys = drift(raw)
    if keys:
        logging.getLogger(__name__).warning(
            "%s differs from conf/ in %s (a hand edit, the last experiment's -S values, or "
            "conf/ changed since params.yaml was composed). Running %s as it is; the next "
            "`dvc exp run -S ...` rebuilds it from conf/ and drops these values: to keep them, "
            "put them in conf/config.yaml",
            path,
            ", ".join(keys[:8]) + (" ..." if len(keys) > 8 else ""),
            path,
        )


def load_params(path: Path | str = DEFAULT_PARAMS) -> Params:
    """Read and validate params.yaml."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{path} not found: run from the project root") from None
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path} is not valid YAML: {exc}") from None
    params = parse_params(raw, origin=str(path))
    _warn_drift(raw, path)
    return params
