"""The tutorial's own `nn.Sequential` loads a models/model.pt that `save_model` wrote, with the code
docs/deploy.md gives for it (run here as the page has it), and gives visionpipe's logits."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

from tests.helpers import ROOT
from visionpipe.modelfile import ModelInfo, save_model
from visionpipe.models import build_model

MEAN, STD = [0.49, 0.48, 0.45], [0.25, 0.24, 0.26]
TUTORIAL_KEYS = {f"net.{i}.{p}" for i in (0, 2, 4, 7, 8) for p in ("weight", "bias")}


def _docs_snippet() -> str:
    """The page's Python block that builds the tutorial's network."""
    blocks = re.findall(r"```python\n(.*?)```", (ROOT / "docs" / "deploy.md").read_text(), re.S)
    found = [b for b in blocks if "the tutorial's network" in b]
    assert len(found) == 1, "docs/deploy.md should have one block building the tutorial's network"
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
    monkeypatch.chdir(tmp_path)
    save_model(Path("models/model.pt"), ours, info)
    keys = set(torch.load("models/model.pt", weights_only=True)["state_dict"])
    assert keys - TUTORIAL_KEYS == ({"normalize.mean", "normalize.std"} if normalize else set())

    x = torch.rand(5, 3, 32, 32)  # ToTensor's [0, 1] pixels
    namespace: dict = {"x": x}
    with torch.no_grad():
        exec(_docs_snippet(), namespace)
        expected = ours(x)
        unprepared = namespace["model"](x)
    torch.testing.assert_close(namespace["logits"], expected, rtol=0, atol=1e-5)
    # With model.normalize the snippet's own normalization is what makes the answers agree.
    assert torch.allclose(unprepared, expected, rtol=0, atol=1e-5) == (not normalize)
