"""export.portable: the export stage writes the portable form, parity-checked like the default,
and says which runtimes the file it wrote runs in."""

from __future__ import annotations

import logging
from pathlib import Path

import onnx
import pytest
import torch

from visionpipe import export, paths, runtimes
from visionpipe.config.params import parse_params
from visionpipe.modelfile import ModelInfo, save_model
from visionpipe.models import build_model
from visionpipe.portable import MatrixAdaptiveAvgPool, portable_model

CLASSES = ["cat", "dog", "frog"]


def _save(arch: str, tta: int) -> None:
    """A models/model.pt of `arch` (16 px, 3 classes, random weights) in the working directory."""
    torch.manual_seed(0)
    model = build_model(arch, 3, 16, {"tta": tta}, [0.3] * 3, [0.2] * 3)
    info = ModelInfo(
        arch=arch,
        num_classes=3,
        image_size=16,
        arch_params={"tta": tta},
        normalize=True,
        mean=[0.3] * 3,
        std=[0.2] * 3,
        classes=CLASSES,
        params={},
        visionpipe_version="test",
        torch_version=str(torch.__version__),
    )
    save_model(paths.MODEL, model, info)


def _run(portable: bool) -> dict:
    update = {"parity_images": 12, "portable": portable}
    return export.run(parse_params({}).export.model_copy(update=update))


def test_the_default_form_of_fast_warns_that_opencv_needs_the_switch(
    processed: Path, caplog: pytest.LogCaptureFixture
) -> None:
    _save("fast", tta=2)
    with caplog.at_level(logging.INFO):
        assert _run(portable=False)["agrees"]
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 3, warnings  # OpenCV DNN 5.x and 4.x (the GELU), MNN (the mirror)
    assert all("SIGSEGV" in w and "set export.portable: true" in w for w in warnings)
    assert "known to run in onnxruntime, OpenVINO" in caplog.text


def test_the_portable_form_of_fast_runs_everywhere_and_keeps_parity(
    processed: Path, caplog: pytest.LogCaptureFixture
) -> None:
    _save("fast", tta=2)
    with caplog.at_level(logging.INFO):
        result = _run(portable=True)
    assert result["agrees"] and result["max_abs_logit_diff"] <= result["max_abs_diff_allowed"]
    graph = onnx.load(str(paths.ONNX_MODEL)).graph
    assert runtimes.problems(graph) == {}
    assert "Erf" in {node.op_type for node in graph.node}  # still the exact GELU
    labels = ", ".join(r.label for r in runtimes.RUNTIMES.values())
    assert f"known to run in {labels}" in caplog.text
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


def test_the_portable_form_of_a_model_with_nothing_to_rewrite_is_the_default_file(
    processed: Path,
) -> None:
    _save("tutorial_cnn", tta=0)
    _run(portable=False)
    default = paths.ONNX_MODEL.read_bytes()
    _run(portable=True)
    assert paths.ONNX_MODEL.read_bytes() == default


def test_portable_model_leaves_the_model_it_is_given_alone() -> None:
    torch.manual_seed(0)
    model = build_model("fast", 3, 16, {"tta": 2}).eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    form = portable_model(model, 16)
    assert form.model is not model and type(model.net.act) is torch.nn.GELU
    assert form.model.state_dict().keys() == before.keys()
    x = torch.rand(4, 3, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(form.model(x), model(x), rtol=0, atol=1e-6)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())


def test_portable_model_refuses_what_is_not_a_classifier() -> None:
    with pytest.raises(TypeError, match="takes a visionpipe Classifier, got Linear"):
        portable_model(torch.nn.Linear(2, 2), 16)


@pytest.mark.parametrize(
    ("in_size", "out_size"), [((1, 1), (7, 7)), ((2, 3), (7, 7)), ((5, 9), (3, 4))]
)
def test_the_matrix_pool_is_pytorchs_adaptive_average_pool(
    in_size: tuple[int, int], out_size: tuple[int, int]
) -> None:
    x = torch.randn(2, 4, *in_size)
    expected = torch.nn.AdaptiveAvgPool2d(out_size)(x)
    torch.testing.assert_close(MatrixAdaptiveAvgPool(in_size, out_size)(x), expected)
