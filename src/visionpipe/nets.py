"""The networks of the model zoo: the tutorial's CNN and its successors, as plain nn.Modules.

Each builder takes the class count and the input size first; the model table (visionpipe.models)
says which builder a model name uses and which of the model.* keys it takes.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from visionpipe.classifier import to_input


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


def fast(num_classes: int, image_size: int) -> FastNet:
    """airbench94's net; its global max pool takes any input size."""
    return FastNet(num_classes)


def vgg16(num_classes: int, image_size: int, pretrained: bool = False) -> nn.Module:
    """torchvision's VGG16 (the tutorial's "modifying VGG16" lesson), its last layer resized."""
    model = _torchvision_model("vgg16", pretrained)
    model.classifier[6] = nn.Linear(model.classifier[6].in_features, num_classes)
    return model


def resnet18(num_classes: int, image_size: int, pretrained: bool = False) -> nn.Module:
    """torchvision's ResNet-18, its classifier resized."""
    model = _torchvision_model("resnet18", pretrained)
    model.fc = nn.Linear(model.fc.in_features, num_classes)
    return model


def _torchvision_model(name: str, pretrained: bool) -> nn.Module:
    import torchvision

    builder = getattr(torchvision.models, name)
    try:
        return builder(weights="DEFAULT" if pretrained else None)
    except Exception as exc:  # torchvision raises URLError/RuntimeError/etc. when offline
        raise RuntimeError(
            f"model.pretrained: true could not load ImageNet weights for {name} ({exc}). "
            f"Offline, either put the weights in the torch hub cache "
            f"({torch.hub.get_dir()}/checkpoints) or set model.weights to a local weights file "
            "(and model.pretrained: false)."
        ) from None
