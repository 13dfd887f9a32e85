"""Model zoo: the tutorial's CNN and its successors, each built for any class count and input size.

Every model takes float RGB in [0, 1], NCHW; normalization (when on) lives inside the model, so the
exported ONNX graph takes the same input and callers never need mean/std.
Saved models are a state_dict plus plain metadata, rebuilt with `build_model(**meta)`.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from visionpipe import paths
from visionpipe.config import ARCHS, MODEL_KEYS, ModelConfig


def to_input(
    images: torch.Tensor, memory_format: torch.memory_format = torch.preserve_format
) -> torch.Tensor:
    """uint8 NCHW pixels -> the float RGB in [0, 1] every model takes, in `memory_format`.

    One copy converts the dtype and the layout together (not a float copy, then a
    channels_last copy of it).
    """
    return images.to(torch.float32, memory_format=memory_format).div_(255)


class Normalize(nn.Module):
    """(x - mean) / std per channel; buffers so they travel with the state_dict and the ONNX."""

    def __init__(self, mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


class Classifier(nn.Module):
    """`net` behind an optional in-graph normalization, with optional test-time augmentation.

    TTA lives in the eval-mode forward, so evaluation, the ONNX export and predict see the same
    logits. Level 1 averages the image and its mirror; level 2 gives those half the weight and
    the mirrored one-pixel shifts up-left and down-right (reflect-padded) the other half, as
    airbench does. All views go through the net as one batch.
    """

    def __init__(self, net: nn.Module, normalize: Normalize | None, tta: int = 0) -> None:
        super().__init__()
        self.normalize = normalize if normalize is not None else nn.Identity()
        self.net = net
        self.tta = tta

    def prepare(self, images: torch.Tensor) -> None:
        """Let the net initialise itself from the uint8 training images, if it does that."""
        prepare = getattr(self.net, "prepare", None)
        if prepare is not None:
            prepare(images, self.normalize)

    def lr_stops(self) -> dict[str, tuple[list[nn.Parameter], int]]:
        """Parameters the net trains for a set number of epochs only: {name: (params, epochs)}."""
        stops = getattr(self.net, "lr_stops", None)
        return stops() if stops is not None else {}

    @property
    def views(self) -> int:
        """Images the net sees per input image in eval mode (1 without TTA)."""
        return {0: 1, 1: 2, 2: 6}[self.tta]

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
        views += [v.flip(-1) for v in views]
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

    `prepare` sets `whiten.weight` from the training images' patch covariance and freezes it;
    the whitening bias trains for the first WHITEN_BIAS_EPOCHS only. The logits are scaled
    down by 9, as in airbench.
    """

    WHITEN_BIAS_EPOCHS = 3  # airbench trains the whitening bias for the first 3 epochs only
    WHITEN_IMAGES = 5000  # training images whose patches set the whitening

    def __init__(self, num_classes: int, widths: Sequence[int] = (64, 256, 256)) -> None:
        super().__init__()
        self.whiten = nn.Conv2d(3, 24, 2, padding=0, bias=True)
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
        self.whiten.weight.requires_grad_(False)  # the filters stay as computed

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


def _torchvision_model(name: str, num_classes: int, pretrained: bool) -> nn.Module:
    import torchvision

    builder = getattr(torchvision.models, name)
    tv_weights = "DEFAULT" if pretrained else None
    try:
        model = builder(weights=tv_weights)
    except Exception as exc:  # torchvision raises URLError/RuntimeError/etc. when offline
        raise RuntimeError(
            f"model.pretrained: true could not load ImageNet weights for {name} ({exc}). "
            f"Offline, either put the weights in the torch hub cache "
            f"({torch.hub.get_dir()}/checkpoints) or set model.weights to a local weights file "
            "(and model.pretrained: false)."
        ) from None
    if name == "vgg16":
        model.classifier[6] = nn.Linear(model.classifier[6].in_features, num_classes)
    else:
        model.fc = nn.Linear(model.fc.in_features, num_classes)
    return model


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


def build_model(
    arch: str,
    num_classes: int,
    image_size: int,
    arch_params: dict[str, Any] | None = None,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
) -> Classifier:
    """Build `arch` for `num_classes` classes on `image_size` inputs.

    `arch_params` holds the architecture's own switches (tutorial_cnn: activation, batch_norm;
    torchvision models: pretrained, weights; any: tta). With mean/std, normalization is part of
    the model.
    """
    p = dict(arch_params or {})
    if arch == "tutorial_cnn":
        net: nn.Module = tutorial_cnn(
            num_classes, image_size, p.get("activation", "none"), p.get("batch_norm", False)
        )
    elif arch == "alexnet":
        net = alexnet(num_classes, image_size)
    elif arch in ("vgg16", "resnet18"):
        net = _torchvision_model(arch, num_classes, p.get("pretrained", False))
    elif arch == "fast":
        net = FastNet(num_classes)
    else:
        raise ValueError(f"Invalid model.name '{arch}'. Only {', '.join(ARCHS)} are supported.")
    if p.get("weights"):
        # Start from a local file (torchvision weights, or another run's models/model.pt):
        # tensors that fit are loaded, a classifier for another class count stays fresh.
        load_weights_file(net, Path(p["weights"]), strict=False)
    normalize = Normalize(mean, std) if mean is not None and std is not None else None
    return Classifier(net, normalize, tta=int(p.get("tta", 0)))


def arch_params(cfg: ModelConfig) -> dict[str, Any]:
    """The architecture's own switches from model.* (what `build_model` takes as arch_params)."""
    common = {"weights": cfg.weights, "tta": cfg.tta}
    return {**{key: getattr(cfg, key) for key in MODEL_KEYS[cfg.name]}, **common}


def model_meta_keys() -> tuple[str, ...]:
    return ("arch", "num_classes", "image_size", "arch_params", "mean", "std")


def rebuild(meta: dict[str, Any]) -> Classifier:
    """Rebuild an empty model from saved metadata (the weights come from the state_dict)."""
    args = {k: meta[k] for k in model_meta_keys()}
    # Pretrained weights are already inside the saved state_dict: never fetch them again.
    args["arch_params"] = {**(args["arch_params"] or {}), "pretrained": False, "weights": None}
    if not meta.get("normalize", True):
        args["mean"] = args["std"] = None
    return build_model(**args)


def save_model(path: Path, model: nn.Module, meta: dict[str, Any]) -> None:
    """Write {"state_dict", "meta"} atomically: weights and plain values only, nothing pickled."""
    from visionpipe.fsutil import save_torch

    state = {k: v.detach().cpu().contiguous() for k, v in unwrap(model).state_dict().items()}
    save_torch(path, {"state_dict": state, "meta": meta})


def load_model(
    path: Path, map_location: str | torch.device = "cpu"
) -> tuple[Classifier, dict[str, Any]]:
    """Load a saved model.pt (weights_only) and rebuild the model it describes."""
    paths.require(Path(path), "train")
    blob = torch.load(path, map_location=map_location, weights_only=True)
    meta = blob["meta"]
    model = rebuild(meta)
    model.load_state_dict(blob["state_dict"])
    return model.eval(), meta


def unwrap(model: nn.Module) -> nn.Module:
    # torch.compile and DDP wrap the module; the state_dict of the original has the clean names.
    model = getattr(model, "_orig_mod", model)
    return getattr(model, "module", model)
