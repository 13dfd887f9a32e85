"""The tutorial's own `nn.Sequential` loads a models/model.pt that `save_model` wrote, with the code
docs/deploy.md gives for it (run here as the page has it), and gives visionpipe's logits."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image

from tests.helpers import ROOT
from visionpipe.modelfile import ModelInfo, save_model
from visionpipe.models import MODELS, arch_params, build_model

MEAN, STD = [0.49, 0.48, 0.45], [0.25, 0.24, 0.26]
TUTORIAL_KEYS = {f"net.{i}.{p}" for i in (0, 2, 4, 7, 8) for p in ("weight", "bias")}


def _docs_snippet(marker: str = "the tutorial's network") -> str:
    """The page's one Python block holding `marker`."""
    blocks = re.findall(r"```python\n(.*?)```", (ROOT / "docs" / "deploy.md").read_text(), re.S)
    found = [b for b in blocks if marker in b]
    assert len(found) == 1, f"docs/deploy.md should have one Python block with {marker!r}"
    return found[0]


@pytest.mark.parametrize("normalize", [False, True])
def test_the_tutorial_network_loads_our_weights(
    normalize: bool, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    torch.manual_seed(0)
    ours = build_model(
        "tutorial_cnn", 10, 32, None, MEAN if normalize else None, STD if normalize else None
    ).eval()
    info = ModelInfo(
        arch="tutorial_cnn",
        num_classes=10,
        image_size=32,
        arch_params={"activation": "none", "batch_norm": False, "weights": None, "tta": 0},
        normalize=normalize,
        mean=MEAN,
        std=STD,
        classes=[f"class{i}" for i in range(10)],
        params={},
        visionpipe_version="test",
        torch_version=str(torch.__version__),
    )
    (tmp_path / "project").mkdir()
    monkeypatch.chdir(tmp_path / "project")
    save_model(Path("models/model.pt"), ours, info)
    keys = set(torch.load("models/model.pt", weights_only=True)["state_dict"])
    assert keys - TUTORIAL_KEYS == ({"normalize.mean", "normalize.std"} if normalize else set())
    dog = tmp_path / "shared" / "samples" / "dog.png"  # the README's ../shared/samples/dog.png
    dog.parent.mkdir(parents=True)
    pixels = torch.randint(0, 256, (40, 56, 3), dtype=torch.uint8, generator=torch.Generator())
    Image.fromarray(pixels.numpy()).save(dog)

    namespace: dict = {}
    with torch.no_grad():
        exec(_docs_snippet(), namespace)
        x = namespace["x"]
        assert x.shape == (1, 3, 32, 32) and x.min() >= 0 and x.max() <= 1
        expected = ours(x)
        unprepared = namespace["model"](x)
    torch.testing.assert_close(namespace["logits"], expected, rtol=0, atol=1e-5)
    # With model.normalize the snippet's own normalization is what makes the answers agree.
    assert torch.allclose(unprepared, expected, rtol=0, atol=1e-5) == (not normalize)


def _save(model: torch.nn.Module, arch: str, arch_params: dict, classes: int, size: int) -> None:
    info = ModelInfo(
        arch=arch,
        num_classes=classes,
        image_size=size,
        arch_params=arch_params,
        normalize=True,
        mean=MEAN,
        std=STD,
        classes=[f"class{i}" for i in range(classes)],
        params={},
        visionpipe_version="test",
        torch_version=str(torch.__version__),
    )
    save_model(Path("models/model.pt"), model, info)


def _normalized(x: torch.Tensor) -> torch.Tensor:
    return (x - torch.tensor(MEAN).view(1, 3, 1, 1)) / torch.tensor(STD).view(1, 3, 1, 1)


@pytest.mark.parametrize(
    ("activation", "batch_norm", "size", "classes"),
    [("relu", True, 64, 2), ("none", True, 32, 10), ("relu", False, 48, 3), ("none", False, 64, 2)],
)
def test_the_general_snippet_loads_every_tutorial_cnn(
    activation: str,
    batch_norm: bool,
    size: int,
    classes: int,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The hymenoptera recipe (relu, BatchNorm, 64 px, 2 classes) is what the README trains on
    # a user's own photos; the tutorial's literal network does not take its weights.
    torch.manual_seed(0)
    params = {"activation": activation, "batch_norm": batch_norm, "weights": None, "tta": 0}
    ours = build_model("tutorial_cnn", classes, size, params, MEAN, STD)
    with torch.no_grad():  # running statistics that are not the initial 0 and 1
        for module in ours.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.uniform_(-0.5, 0.5)
                module.running_var.uniform_(0.5, 2.0)
    ours.eval()
    monkeypatch.chdir(tmp_path)
    _save(ours, "tutorial_cnn", params, classes, size)
    x = torch.rand(4, 3, size, size)
    namespace: dict = {}
    exec(_docs_snippet("tutorial's layers with meta's settings"), namespace)
    with torch.no_grad():
        torch.testing.assert_close(namespace["model"](_normalized(x)), ours(x), rtol=0, atol=1e-5)


def test_torchvision_s_resnet18_takes_the_same_state(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import torchvision

    torch.manual_seed(0)
    params = {"pretrained": False, "weights": None, "tta": 0}
    ours = build_model("resnet18", 3, 32, params, MEAN, STD).eval()
    monkeypatch.chdir(tmp_path)
    _save(ours, "resnet18", params, 3, 32)
    saved = torch.load("models/model.pt", map_location="cpu", weights_only=True)
    prefix = "net."
    state = {
        k.removeprefix(prefix): v for k, v in saved["state_dict"].items() if k.startswith(prefix)
    }
    model = torchvision.models.resnet18(num_classes=len(saved["meta"]["classes"]))
    model.load_state_dict(state)
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(model.eval()(_normalized(x)), ours(x), rtol=0, atol=1e-5)
    assert (
        'torchvision.models.resnet18(num_classes=len(meta["classes"]))'
        in (ROOT / "docs" / "deploy.md").read_text()
    )


@pytest.mark.parametrize("arch", list(MODELS))
def test_visionpipe_s_builder_snippet_loads_every_model(
    arch: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # alexnet and fast have no tutorial or torchvision code that takes their weights.
    torch.manual_seed(0)
    own = {name: key.default for name, key in MODELS[arch].keys.items()}
    params = arch_params(arch, {**own, "pretrained": False, "weights": None, "tta": 0})
    ours = build_model(arch, 3, 32, params, MEAN, STD).eval()
    monkeypatch.chdir(tmp_path)
    _save(ours, arch, params, 3, 32)
    x = torch.rand(2, 3, 32, 32)
    namespace: dict = {}
    exec(_docs_snippet("visionpipe.models import MODELS"), namespace)
    with torch.no_grad():
        torch.testing.assert_close(namespace["model"](_normalized(x)), ours(x), rtol=0, atol=1e-5)


def test_the_builder_snippet_needs_torch_alone(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A deployment that installs torch beside visionpipe's wheel has none of the pipeline's
    # packages (pydantic, PyYAML, DVC): the snippet must not import them.
    params = arch_params("fast", {"pretrained": False, "weights": None, "tta": 0})
    monkeypatch.chdir(tmp_path)
    _save(build_model("fast", 3, 32, params, MEAN, STD), "fast", params, 3, 32)
    blocked = "import sys; sys.modules.update(dict.fromkeys(('pydantic', 'yaml', 'dvc'), None))"
    code = f"{blocked}\n{_docs_snippet('visionpipe.models import MODELS')}\nprint(type(model))"
    proc = subprocess.run(
        [sys.executable, "-c", code],
        env={**os.environ, "PYTHONPATH": str(ROOT / "src")},
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0 and "FastNet" in proc.stdout, proc.stderr[-3000:]
