"""The model zoo: the networks, the wrapper every model runs in, and the table that names them.

Every model takes float RGB in [0, 1], NCHW; normalization (when on) lives inside the model
(`Classifier`), so the exported ONNX graph takes the same input and callers never need mean/std.
`MODELS` is the one table of models: each entry's builder and its own model.* keys. Adding a
model is one entry: the params schema (visionpipe.config.model), `build_model`, the saved model's
metadata and the tests all read the table, as torchvision's `get_model` and timm's registry do;
tests/unit/test_zoo_docs.py names the lines users read (conf/config.yaml, docs) that it needs
(docs/development.md, "Adding a model").
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from visionpipe import paths
from visionpipe.weights import WeightsError, classifier_name, load_weights_file

log = logging.getLogger(__name__)


def to_input(
    images: torch.Tensor, memory_format: torch.memory_format = torch.preserve_format
) -> torch.Tensor:
    """uint8 NCHW pixels -> the float RGB in [0, 1] every model takes, in `memory_format`.

    One copy converts the dtype and the layout together (not a float copy, then a
    channels_last copy of it), and the division is done in that copy.
    """
    if not isinstance(images, torch.Tensor):
        raise TypeError(
            f"to_input takes a torch tensor, not a {type(images).__name__}: torch.from_numpy(array)"
        )
    if images.dtype != torch.uint8:  # a float tensor would come back divided again, in place
        raise TypeError(
            f"to_input takes uint8 pixels (0-255, as images.load_array gives), not {images.dtype}:"
            " a float tensor already in [0, 1] (torchvision's ToTensor) goes to the model as it is"
        )
    return images.to(torch.float32, memory_format=memory_format).div_(255)


# A channel whose std is below one grey level carries no information to amplify: it is not
# scaled (its std taken as 1). Dividing by its std, 0 where a channel never varies (blue in a
# red/green heat map), would make every input NaN, and a photo with some blue in it explode.
MIN_STD = 1 / 255


def scaling_std(std: Sequence[float]) -> list[float]:
    """The std each channel is divided by: its own, or 1 under MIN_STD."""
    return [s if s >= MIN_STD else 1.0 for s in std]


class Normalize(nn.Module):
    """(x - mean) / std per channel; buffers so they travel with the state_dict and the ONNX."""

    def __init__(self, mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        scale = scaling_std(std)
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(scale, dtype=torch.float32).view(1, -1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


class Classifier(nn.Module):
    """`net` behind an optional in-graph normalization, with optional test-time augmentation.

    TTA lives in the eval-mode forward, so evaluation, the ONNX export and predict see the same
    logits. Level 1 averages the image and its mirror; level 2 gives those half the weight and
    the mirrored one-pixel shifts up-left and down-right (reflect-padded) the other half, as
    airbench does. All views go through the net as one batch.
    """

    def __init__(
        self,
        net: nn.Module,
        normalize: Normalize | None,
        tta: int = 0,
        fresh: Sequence[str] = (),
        num_classes: int | None = None,
        head: str | None = None,
        image_size: int | None = None,
    ) -> None:
        super().__init__()
        # What tells the classifier among the net's Linears (`classifier_name`).
        self.num_classes, self.head_name, self.image_size = num_classes, head, image_size
        self.normalize = normalize if normalize is not None else nn.Identity()
        self.net = net
        self.tta = tta
        self.fresh = tuple(fresh)  # the net's tensors model.weights left as initialised
        self.backbone_frozen = False

    def prepare(self, images: torch.Tensor) -> None:
        """Let the net initialise itself from the uint8 training images, if it does that."""
        prepare = getattr(self.net, "prepare", None)
        if prepare is not None:
            prepare(images, self.normalize)

    def head(self) -> list[nn.Parameter]:
        """The classifier's parameters (`classifier_name`), and those of layers model.weights
        left fresh (a layer sized by the input, at another image size): trained from random
        values, they train at train.lr whatever train.backbone_lr_scale says of the rest."""
        head = list(
            self.net.get_submodule(
                classifier_name(self.net, self.num_classes, self.head_name, self.image_size)
            ).parameters()
        )
        taken = {id(p) for p in head}
        named = dict(self.net.named_parameters())
        return head + [named[n] for n in self.fresh if n in named and id(named[n]) not in taken]

    def freeze_backbone(self) -> None:
        """Train the head (`head`) alone, on fixed features: every other parameter stops taking
        gradients (so backward stops at the head) and every BatchNorm keeps its running
        statistics (eval mode in training too, as Keras freezes), so the layers below compute
        the same features from the first step to the last."""
        head = {id(p) for p in self.head()}
        for param in self.parameters():
            if id(param) not in head:
                param.requires_grad_(False)
        self.backbone_frozen = True

    def train(self, mode: bool = True) -> Classifier:
        super().train(mode)
        if mode and self.backbone_frozen:
            for module in self.modules():
                if isinstance(module, nn.modules.batchnorm._BatchNorm):
                    module.eval()
        return self

    def lr_stops(self) -> dict[str, tuple[list[nn.Parameter], int]]:
        """Parameters the net trains for a set number of epochs only: {name: (params, epochs)}."""
        stops = getattr(self.net, "lr_stops", None)
        return stops() if stops is not None else {}

    @property
    def views(self) -> int:
        """Images the net sees per input image in eval mode (1 without TTA)."""
        return {0: 1, 1: 2, 2: 6}[self.tta]

    def mirror(self, x: torch.Tensor) -> torch.Tensor:
        """`x` flipped left-right (the TTA's mirrored view)."""
        return x.flip(-1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training or self.tta == 0:
            return self.net(self.normalize(x))
        views = [x]
        weights = [0.5]
        if self.tta == 2:
            h, w = x.shape[-2:]
            padded = F.pad(x, (1, 1, 1, 1), mode="reflect")
            views += [padded[..., :h, :w], padded[..., 2:, 2:]]
            weights = [0.25, 0.125, 0.125]
        views += [self.mirror(v) for v in views]
        logits = self.net(self.normalize(torch.cat(views)))
        logits = logits.view(len(views), x.shape[0], logits.shape[-1])
        return sum(w * logits[i] for i, w in enumerate(weights * 2))


def tutorial_cnn(
    num_classes: int, image_size: int, activation: str = "none", batch_norm: bool = False
) -> nn.Sequential:
    """The tutorial's CIFAR-10 net: 3x (Conv 5x5 pad 2, MaxPool 2), Flatten, Linear 64, Linear.

    With the defaults (no activation, no BatchNorm) it is exactly the seeds' model; `activation`
    and `batch_norm` show what the tutorial's lesson on non-linearities buys.
    """
    if activation not in ("none", "relu"):  # model.activation's choices, for a direct caller
        raise ValueError(f"tutorial_cnn's activation is 'none' or 'relu', not {activation!r}")
    layers: list[nn.Module] = []
    channels = [3, 32, 32, 64]
    for cin, cout in itertools.pairwise(channels):
        layers.append(nn.Conv2d(cin, cout, 5, padding=2))
        if batch_norm:
            layers.append(nn.BatchNorm2d(cout))
        if activation == "relu":
            layers.append(nn.ReLU(inplace=True))
        layers.append(nn.MaxPool2d(2))
    side = image_size // 2 // 2 // 2
    if side < 1:
        raise ValueError(f"tutorial_cnn needs inputs of at least 8 pixels, got {image_size}")
    layers += [nn.Flatten(), nn.Linear(64 * side * side, 64)]
    if activation == "relu":
        layers.append(nn.ReLU(inplace=True))
    layers.append(nn.Linear(64, num_classes))
    return nn.Sequential(*layers)


def alexnet(num_classes: int, image_size: int) -> nn.Sequential:
    """The seeds' AlexNet homework (3->48 k5 s4, 128/192/192/128 convs, Linear 2048/1024).

    Small inputs use stride 1 in the first conv, and an adaptive pool before the classifier, so it
    runs on 32-pixel CIFAR images as well as on photos.
    """
    stride = 4 if image_size >= 128 else 1
    return nn.Sequential(
        nn.Conv2d(3, 48, 5, stride=stride, padding=2),
        nn.ReLU(inplace=True),
        nn.MaxPool2d(2),
        nn.Conv2d(48, 128, 5, padding=2),
        nn.ReLU(inplace=True),
        nn.MaxPool2d(2),
        nn.Conv2d(128, 192, 3, padding=1),
        nn.ReLU(inplace=True),
        nn.Conv2d(192, 192, 3, padding=1),
        nn.ReLU(inplace=True),
        nn.Conv2d(192, 128, 3, padding=1),
        nn.ReLU(inplace=True),
        nn.MaxPool2d(2),
        nn.AdaptiveAvgPool2d(2),
        nn.Flatten(),
        nn.Dropout(0.5),
        nn.Linear(128 * 2 * 2, 2048),
        nn.ReLU(inplace=True),
        nn.Dropout(0.5),
        nn.Linear(2048, 1024),
        nn.ReLU(inplace=True),
        nn.Linear(1024, num_classes),
    )


def _fast_conv(cin: int, cout: int) -> nn.Conv2d:
    """3x3 conv without bias whose first `cin` filters start as the identity (airbench's dirac
    init): each block begins close to passing its input through, which trains faster."""
    conv = nn.Conv2d(cin, cout, 3, padding=1, bias=False)
    with torch.no_grad():
        nn.init.dirac_(conv.weight[: min(cin, cout)])
    return conv


def _fast_norm(channels: int) -> nn.BatchNorm2d:
    # airbench: running stats follow fast (momentum 0.4 in PyTorch's convention) and no trainable
    # scale: the next conv can rescale, and fewer parameters train faster. eps stays PyTorch's
    # 1e-5, not airbench's 1e-12: under bf16 autocast a channel that is nearly constant over the
    # batch rounds to zero variance, and 1e-12 turns that into a 1e6 gain and NaNs.
    norm = nn.BatchNorm2d(channels, momentum=0.4)
    norm.weight.requires_grad_(False)
    return norm


class _ConvGroup(nn.Module):
    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.conv1 = _fast_conv(cin, cout)
        self.pool = nn.MaxPool2d(2)
        self.norm1 = _fast_norm(cout)
        self.conv2 = _fast_conv(cout, cout)
        self.norm2 = _fast_norm(cout)
        self.act = nn.GELU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act(self.norm1(self.pool(self.conv1(x))))
        return self.act(self.norm2(self.conv2(x)))


class GlobalMaxPool(nn.Module):
    """The max of each feature map: airbench's AdaptiveMaxPool2d(1), as a max pool whose window
    is the whole map. Same values and gradients (the first maximum takes a tie's gradient in
    both), but torch 2.11's ONNX exporter has no AdaptiveMaxPool2d and CUDA has no deterministic
    backward for it; plain max pooling has both."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.max_pool2d(x, kernel_size=x.shape[-2:])


class FastNet(nn.Module):
    """airbench94's CIFAR speed net: 2x2 whitening conv, three conv groups, GELU, BN.

    `prepare` sets `whiten.weight` (never trained) from the training images' patch covariance;
    the whitening bias trains for the first WHITEN_BIAS_EPOCHS only. The logits are scaled
    down by 9, as in airbench.
    """

    WHITEN_BIAS_EPOCHS = 3  # airbench trains the whitening bias for the first 3 epochs only
    WHITEN_IMAGES = 5000  # training images whose patches set the whitening

    def __init__(self, num_classes: int, widths: Sequence[int] = (64, 256, 256)) -> None:
        super().__init__()
        self.whiten = nn.Conv2d(3, 24, 2, padding=0, bias=True)
        self.whiten.weight.requires_grad_(False)  # set by `prepare` or model.weights, not trained
        self.act = nn.GELU()
        self.layers = nn.Sequential(
            _ConvGroup(24, widths[0]),
            _ConvGroup(widths[0], widths[1]),
            _ConvGroup(widths[1], widths[2]),
        )
        self.pool = GlobalMaxPool()
        self.head = nn.Linear(widths[2], num_classes, bias=False)
        self.scale = 1 / 9

    def prepare(self, images: torch.Tensor, normalize: nn.Module) -> None:
        x = normalize(to_input(images[: self.WHITEN_IMAGES].cpu()))
        init_whitening(self.whiten, x)

    def lr_stops(self) -> dict[str, tuple[list[nn.Parameter], int]]:
        return {"whiten_bias": ([self.whiten.bias], self.WHITEN_BIAS_EPOCHS)}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.layers(self.act(self.whiten(x)))
        return self.head(torch.flatten(self.pool(x), 1)) * self.scale


@torch.no_grad()
def init_whitening(layer: nn.Conv2d, images: torch.Tensor, eps: float = 5e-4) -> None:
    """Set a 2x2 conv to ZCA-style whitening of the patches of `images` (float NCHW)."""
    c, h, w = layer.in_channels, *layer.kernel_size
    patches = images.unfold(2, h, 1).unfold(3, w, 1).transpose(1, 3).reshape(-1, c, h, w).float()
    flat = patches.reshape(len(patches), -1)
    flat = flat - flat.mean(0, keepdim=True)
    cov = flat.T @ flat / len(flat)
    eigvals, eigvecs = torch.linalg.eigh(cov)
    eigvals, eigvecs = eigvals.flip(0), eigvecs.T.flip(0)
    filters = eigvecs.reshape(-1, c, h, w) / torch.sqrt(eigvals + eps).view(-1, 1, 1, 1)
    half = layer.out_channels // 2
    layer.weight.copy_(torch.cat([filters[:half], -filters[:half]]))
    layer.bias.zero_()


def fast(num_classes: int, image_size: int) -> FastNet:
    """airbench94's net; its global max pool takes any input size."""
    return FastNet(num_classes)


def torchvision_classifier(name: str) -> Callable[..., nn.Module]:
    """A builder of torchvision's model `name` whose last Linear layer is resized for the classes.

    The layer keeps its name (resnet18's `fc`, vgg16's `classifier.6`), so the state_dict is the
    one `torchvision.models.get_model(name, num_classes=...)` takes.
    """

    def build(num_classes: int, image_size: int, pretrained: bool = False) -> nn.Module:
        model = _torchvision_model(name, pretrained)
        try:
            path = classifier_name(model)
        except WeightsError:
            raise WeightsError(
                f"torchvision's {name} classifies with a convolution, not a Linear layer: "
                "torchvision_classifier resizes a Linear head only; give it a builder of its own"
                " in src/visionpipe/models.py (docs/development.md, 'Adding a model')"
            ) from None
        last = model.get_submodule(path)
        parent, _, attr = path.rpartition(".")
        resized = nn.Linear(last.in_features, num_classes, bias=last.bias is not None)
        setattr(model.get_submodule(parent), attr, resized)
        if pretrained:
            log.info(
                "model.pretrained: ImageNet weights for %s loaded; classifier '%s' starts fresh "
                "for %d classes (ImageNet's has %d)",
                name,
                path,
                num_classes,
                last.out_features,
            )
        return model

    build.__name__ = build.__qualname__ = name
    return build


def _torchvision_model(name: str, pretrained: bool) -> nn.Module:
    import torchvision

    builder = getattr(torchvision.models, name)
    try:
        return builder(weights="DEFAULT" if pretrained else None)
    except Exception as exc:  # torchvision raises URLError/RuntimeError/etc. when offline
        # A WeightsError, so the stage prints this advice alone, not under a traceback; the
        # file name, so the user knows what to fetch on a machine that is online.
        url = torchvision.models.get_model_weights(name).DEFAULT.url
        file = url.rsplit("/", 1)[-1]
        cached = Path(torch.hub.get_dir()) / "checkpoints" / file
        where = (
            f"The torch hub cache's {cached} is not that file (cut short, or another model's): "
            f"delete it and put the real one (from {url}) there"
            if cached.is_file()
            else f"Offline, either put {file} (from {url}) in the torch hub cache ({cached.parent})"
        )
        raise WeightsError(
            f"model.pretrained: true could not load ImageNet weights for {name} ({exc}). "
            f"{where}, or set model.weights to a local weights file (and model.pretrained: "
            "false)."
        ) from None


@dataclass(frozen=True)
class Key:
    """One model.* key: its type (a pydantic annotation), default and one-line meaning."""

    annotation: Any
    default: Any
    doc: str
    constraints: dict[str, Any] = field(default_factory=dict)  # pydantic Field limits

    def pydantic_field(self) -> Any:
        # Imported here: building a model from models/model.pt (docs/deploy.md) needs torch
        # alone, not the pipeline's config packages.
        from pydantic import Field

        return Field(default=self.default, description=self.doc, **self.constraints)


@dataclass(frozen=True)
class ModelSpec:
    """A model of the zoo: `build(num_classes, image_size, **own keys)` returns its net."""

    build: Callable[..., nn.Module]
    doc: str
    keys: dict[str, Key] = field(default_factory=dict)  # model.* keys only this model takes
    pretrained: bool = False  # ImageNet weights exist for it (model.pretrained)
    # The smallest preprocess.image_size its poolings leave at least one pixel of.
    min_image_size: int = 8
    # Its classifier's module name, where its Linears leave it unclear (`classifier_name`).
    head: str | None = None

    def __post_init__(self) -> None:
        if self.min_image_size < 8:  # preprocess.image_size's own floor
            raise ValueError(
                f"ModelSpec {self.doc!r}: min_image_size {self.min_image_size} is below 8, the "
                "smallest preprocess.image_size there is; leave it out (8 is the default)"
            )


MODELS: dict[str, ModelSpec] = {
    "tutorial_cnn": ModelSpec(
        tutorial_cnn,
        "the tutorial's CNN: 3x (conv 5x5, max-pool), two linear layers",
        {
            # The seeds' net has no activation; relu shows what the non-linearity lesson buys.
            "activation": Key(Literal["none", "relu"], "none", "none (the tutorial's) | relu"),
            "batch_norm": Key(bool, False, "BatchNorm after each conv"),
        },
    ),
    "alexnet": ModelSpec(alexnet, "the seeds' AlexNet homework, sized for small inputs"),
    # torchvision's models: `torchvision_classifier(name)` and pretrained=True are all one needs.
    "vgg16": ModelSpec(
        torchvision_classifier("vgg16"),
        "torchvision's VGG16, last layer resized",
        pretrained=True,
        min_image_size=32,  # five 2x max-pools
    ),
    "resnet18": ModelSpec(
        torchvision_classifier("resnet18"), "torchvision's ResNet-18, fc resized", pretrained=True
    ),
    "fast": ModelSpec(
        fast,
        "airbench94's CIFAR speed net (whitening, GELU, BatchNorm)",
        min_image_size=9,  # a 2x2 whitening conv without padding, then three 2x max-pools
    ),
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
    owner: dict[str, str] = {}
    for name, spec in MODELS.items():
        for key, value in spec.keys.items():
            if keys.setdefault(key, value) != value:
                raise TypeError(_clash(key, (owner[key], keys[key]), (name, value)))
            owner.setdefault(key, name)
    return keys


def _clash(key: str, first: tuple[str, Key], second: tuple[str, Key]) -> str:
    # params.yaml has one model.<key> for every model: models sharing a key name share the key.
    fields = ("annotation", "default", "doc", "constraints")
    differ = [f for f in fields if getattr(first[1], f) != getattr(second[1], f)]
    return (
        f"model key {key!r} of {second[0]!r} differs from the one of {first[0]!r} in its "
        f"{' and '.join(differ)} ({', '.join(repr(getattr(first[1], f)) for f in differ)} vs "
        f"{', '.join(repr(getattr(second[1], f)) for f in differ)}): params.yaml holds one "
        f"model.{key} for every model, so declare it alike in both or rename one"
    )


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
    classes: Sequence[str] | None = None,
) -> Classifier:
    """Build `arch` for `num_classes` classes on `image_size` inputs.

    `arch_params` holds the model's own switches (see `arch_params`); missing ones take their
    defaults. With mean/std, normalization is part of the model. `classes`, the class names,
    decide which rows of a model.weights file's classifier are kept (`match_classifier`).
    """
    spec = MODELS.get(arch)
    if spec is None:
        raise ValueError(f"Invalid model.name '{arch}'. Only {', '.join(MODELS)} are supported.")
    p = dict(arch_params or {})
    own = {key: p.get(key, k.default) for key, k in spec.keys.items()}
    if spec.pretrained:
        own["pretrained"] = p.get("pretrained", False)
    net = spec.build(num_classes, image_size, **own)
    normalize = Normalize(mean, std) if mean is not None and std is not None else None
    if own.get("pretrained") and normalize is None:
        log.warning(
            "model.pretrained: ImageNet's weights were trained on normalized inputs, and this "
            "model feeds them raw pixels in [0, 1]: set model.normalize: true (the recipes do)"
        )
    fresh: list[str] = []
    if p.get("weights"):
        # Start from a local file (torchvision weights, or another run's models/model.pt):
        # layers that fit are loaded, a classifier for other classes stays fresh.
        own.pop("pretrained", None)
        built = {"name": arch, **own, "normalize": normalize is not None}
        weights = paths.user_path(p["weights"], "model.weights")
        fresh = load_weights_file(net, weights, (built, image_size), classes, spec.head)
    tta = int(p.get("tta", 0))
    named = {"num_classes": num_classes, "head": spec.head, "image_size": image_size}
    return Classifier(net, normalize, tta=tta, fresh=fresh, **named)


def with_batch_norm() -> list[str]:
    """The models with BatchNorm layers, as built by default or with one of their own switches
    on (`tutorial_cnn with model.batch_norm=true`), in table order."""
    found = []
    with torch.device("meta"):  # the layers' types decide; no weights are allocated
        for name, spec in MODELS.items():
            switches = [k for k, key in spec.keys.items() if key.annotation is bool]
            for own in [{}, *({k: not spec.keys[k].default} for k in switches)]:
                try:  # at a size it takes: a model of fixed size refuses others when built
                    net = spec.build(2, max(32, spec.min_image_size), **own)
                except Exception:  # any refusal (an assert): only a warning asks
                    continue
                if any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in net.modules()):
                    on = "".join(f" with model.{k}={str(v).lower()}" for k, v in own.items())
                    found.append(name + on)
                    break
    return found


def unwrap(model: nn.Module) -> nn.Module:
    # torch.compile and DDP wrap the module; the state_dict of the original has the clean names.
    model = getattr(model, "_orig_mod", model)
    return getattr(model, "module", model)
