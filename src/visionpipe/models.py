"""The model table: every model name, its builder and its own model.* keys, in one place.

Adding a model is one entry in `MODELS` (and its line in conf/config.yaml, where users see the
keys): the params schema (visionpipe.config.model), `build_model` and the saved model's
metadata all read the table, as torchvision's `get_model` and timm's registry do.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from pydantic import Field
from torch import nn

from visionpipe import nets
from visionpipe.classifier import Classifier, Normalize


@dataclass(frozen=True)
class Key:
    """One model.* key: its type (a pydantic annotation), default and one-line meaning."""

    annotation: Any
    default: Any
    doc: str
    constraints: dict[str, Any] = field(default_factory=dict)  # pydantic Field limits

    def field(self) -> Any:
        return Field(default=self.default, description=self.doc, **self.constraints)


@dataclass(frozen=True)
class ModelSpec:
    """A model of the zoo: `build(num_classes, image_size, **own keys)` returns its net."""

    build: Callable[..., nn.Module]
    doc: str
    keys: dict[str, Key] = field(default_factory=dict)  # model.* keys only this model takes
    pretrained: bool = False  # ImageNet weights exist for it (model.pretrained)


MODELS: dict[str, ModelSpec] = {
    "tutorial_cnn": ModelSpec(
        nets.tutorial_cnn,
        "the tutorial's CNN: 3x (conv 5x5, max-pool), two linear layers",
        {
            # The seeds' net has no activation; relu shows what the non-linearity lesson buys.
            "activation": Key(Literal["none", "relu"], "none", "none (the tutorial's) | relu"),
            "batch_norm": Key(bool, False, "BatchNorm after each conv"),
        },
    ),
    "alexnet": ModelSpec(nets.alexnet, "the seeds' AlexNet homework, sized for small inputs"),
    "vgg16": ModelSpec(nets.vgg16, "torchvision's VGG16, last layer resized", pretrained=True),
    "resnet18": ModelSpec(nets.resnet18, "torchvision's ResNet-18, fc resized", pretrained=True),
    "fast": ModelSpec(nets.fast, "airbench94's CIFAR speed net (whitening, GELU, BatchNorm)"),
}

# The model.* keys every model takes, after `name` and the models' own keys, in params.yaml's
# order. `pretrained` applies to the models whose spec says so.
COMMON_KEYS: dict[str, Key] = {
    # Inputs normalized by the train split's mean/std inside the model. Off by default: the
    # tutorial feeds ToTensor's [0, 1] pixels straight in.
    "normalize": Key(bool, False, "normalize inputs by the train mean/std inside the model"),
    "pretrained": Key(bool, False, "ImageNet weights from the torch hub cache"),
    "weights": Key(str | None, None, "path of a local weights file to start from"),
    # Test-time augmentation inside the model's eval forward (so evaluate, the ONNX export and
    # predict all agree): 0 none, 1 mean logits of the image and its mirror, 2 also of the
    # one-pixel shifts up-left and down-right (airbench's levels).
    "tta": Key(int, 0, "0 none | 1 mirror | 2 mirror + 1-px shifts", {"ge": 0, "le": 2}),
}


def own_keys() -> dict[str, Key]:
    """Every model's own keys, each once, in table order (a key two models share must agree)."""
    keys: dict[str, Key] = {}
    for name, spec in MODELS.items():
        for key, value in spec.keys.items():
            if keys.setdefault(key, value) != value:
                raise TypeError(f"model key {key!r} of {name!r} differs from another model's")
    return keys


def keys_of(name: str) -> tuple[str, ...]:
    """The model.* keys model `name` takes."""
    spec = MODELS[name]
    common = [k for k in COMMON_KEYS if k != "pretrained" or spec.pretrained]
    return ("name", *spec.keys, *common)


def arch_params(name: str, values: dict[str, Any]) -> dict[str, Any]:
    """The switches `build_model` takes for model `name`, from the model.* values: its own keys,
    `pretrained` where it has such weights, `weights` and `tta`."""
    spec = MODELS[name]
    keys = [*spec.keys, *(["pretrained"] if spec.pretrained else []), "weights", "tta"]
    return {key: values[key] for key in keys}


def build_model(
    arch: str,
    num_classes: int,
    image_size: int,
    arch_params: dict[str, Any] | None = None,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
) -> Classifier:
    """Build `arch` for `num_classes` classes on `image_size` inputs.

    `arch_params` holds the model's own switches (see `arch_params`); missing ones take their
    defaults. With mean/std, normalization is part of the model.
    """
    spec = MODELS.get(arch)
    if spec is None:
        raise ValueError(f"Invalid model.name '{arch}'. Only {', '.join(MODELS)} are supported.")
    p = dict(arch_params or {})
    own = {key: p.get(key, k.default) for key, k in spec.keys.items()}
    if spec.pretrained:
        own["pretrained"] = p.get("pretrained", False)
    net = spec.build(num_classes, image_size, **own)
    if p.get("weights"):
        # Start from a local file (torchvision weights, or another run's models/model.pt):
        # tensors that fit are loaded, a classifier for another class count stays fresh.
        load_weights_file(net, Path(p["weights"]), strict=False)
    normalize = Normalize(mean, std) if mean is not None and std is not None else None
    return Classifier(net, normalize, tta=int(p.get("tta", 0)))


def load_weights_file(model: nn.Module, path: Path, strict: bool = True) -> None:
    """Load a state_dict file (plain, or an exported visionpipe model.pt) into `model`.

    Tensors whose shape differs (a classifier for another class count) are left as initialised.
    """
    if not path.is_file():
        raise FileNotFoundError(
            f"model.weights = '{path}' does not exist; give the path of a state_dict file "
            "(torchvision .pth, or a visionpipe models/model.pt), or set model.weights: null"
        )
    state = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(state, dict) and "state_dict" in state:
        state = state["state_dict"]
        # A visionpipe export wraps the net; strip that prefix to fit a bare net.
        state = {
            k.removeprefix("net."): v for k, v in state.items() if not k.startswith("normalize.")
        }
    own = model.state_dict()
    fitting = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
    if strict and len(fitting) != len(own):
        missing = sorted(set(own) - set(fitting))[:5]
        raise ValueError(f"{path} does not fit the model: missing or mismatched {missing} ...")
    model.load_state_dict(fitting, strict=False)


def unwrap(model: nn.Module) -> nn.Module:
    # torch.compile and DDP wrap the module; the state_dict of the original has the clean names.
    model = getattr(model, "_orig_mod", model)
    return getattr(model, "module", model)
