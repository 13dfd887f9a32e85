"""export.portable: the export stage writes the portable form, parity-checked like the default,
and says which runtimes the file it wrote runs in."""

from __future__ import annotations

import logging
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from tests.helpers import ROOT, model_info
from visionpipe import export, paths, runtimes
from visionpipe.config.params import parse_params
from visionpipe.modelfile import ModelInfo, save_model
from visionpipe.models import Classifier, build_model
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
    assert "has no layer known to fail in onnxruntime, OpenVINO" in caplog.text


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
    assert f"has no layer known to fail in {labels}" in caplog.text
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


class _GatedNet(torch.nn.Module):
    """A conv, then a squeeze-excitation gate as MobileNetV3 has (`x * hardsigmoid(...)`)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 8, 3, padding=1)
        self.squeeze = torch.nn.Conv2d(8, 8, 1)
        self.gate = torch.nn.Hardsigmoid()
        self.fc = torch.nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv(x)
        x = x * self.gate(self.squeeze(x.mean((2, 3), keepdim=True)))
        return self.fc(x.mean((2, 3)))


def _opencv5_logits(path: Path, images: np.ndarray) -> np.ndarray:
    np.save(path.with_suffix(".in.npy"), images)
    script = ROOT / "tests" / "opencv_run.py"
    args = [str(path), str(path.with_suffix(".in.npy")), str(path.with_suffix(".out.npy"))]
    subprocess.run([sys.executable, str(script), *args], check=True, capture_output=True)
    return np.load(path.with_suffix(".out.npy"))


def test_a_hardsigmoid_gate_is_named_for_opencv_and_the_portable_form_runs_there(
    tmp_path: Path,
) -> None:
    torch.manual_seed(0)
    model = Classifier(_GatedNet(), None).eval()
    with torch.no_grad():
        model.net.squeeze.weight.mul_(8)  # gates across the whole of HardSigmoid's range
    info = model_info("gated", CLASSES, 16, {}, [0.0] * 3)
    images = np.random.default_rng(0).random((4, 3, 16, 16), dtype=np.float32)
    with torch.no_grad():
        expected = model(torch.from_numpy(images)).numpy()
    form = portable_model(model, 16)
    assert form.rewrites == ["HardSigmoid as clamp(x + 3, 0, 6) / 6"]
    for name, written, runs in (("default", model, False), ("portable", form.model, True)):
        path = tmp_path / f"{name}.onnx"
        export.export_onnx(written, info, path, opset=18)
        found = runtimes.problems(onnx.load(str(path)).graph)
        if runs:
            assert found == {}, found
        else:
            assert set(found) == {"opencv5", "opencv4"}, found
            assert all("HardSigmoid" in reasons[0] for reasons in found.values()), found
        # What problems() says is OpenCV's own answer (5.x; 4.x computes the same).
        diff = np.abs(_opencv5_logits(path, images) - expected).max()
        assert (diff < 1e-4) == runs, f"{name}: OpenCV 5's logits differ by {diff:.2e}"
