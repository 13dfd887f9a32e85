"""The ONNX export's graph cache: a later export of the same structure fills in new weights instead
of tracing again, and gives the very bytes a fresh trace would."""

from __future__ import annotations

from pathlib import Path

import onnx
import pytest
import torch

from visionpipe import export, graph_cache
from visionpipe.models import build_model

META = {"arch": "tutorial_cnn", "arch_params": {"tta": 2}, "num_classes": 3, "image_size": 16}


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    return graph_cache.cache_dir()


def _model(seed: int, arch: str = "tutorial_cnn", tta: int = 2) -> torch.nn.Module:
    """A model with weights like a trained one's: none of them exactly 0 or 1."""
    torch.manual_seed(seed)
    model = build_model(arch, 3, 16, {"tta": tta}, [0.5] * 3, [0.25] * 3).eval()
    with torch.no_grad():
        for tensor in model.state_dict().values():
            if tensor.is_floating_point():
                tensor.add_(torch.rand_like(tensor) * 0.01 + 0.001)
    return model


def _export(model: torch.nn.Module, meta: dict, dest: Path) -> bytes:
    export.export_onnx(model, {**meta, "classes": ["a", "b", "c"]}, dest, opset=18)
    return dest.read_bytes()


@pytest.mark.parametrize(
    ("arch", "tta"), [("tutorial_cnn", 0), ("tutorial_cnn", 2), ("alexnet", 1)]
)
def test_the_cached_graph_filled_with_new_weights_is_a_fresh_export(
    cache: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, arch: str, tta: int
) -> None:
    meta = {**META, "arch": arch, "arch_params": {"tta": tta}}
    first = _model(0, arch, tta)
    _export(first, meta, tmp_path / "first.onnx")
    assert len(list(cache.glob("*.onnx"))) == 1, "the structure's graph was stored"

    second = _model(1, arch, tta)  # other weights, same structure
    fresh = onnx.load(str(tmp_path / "first.onnx"))  # (kept for its metadata only)
    traced = export.trace(second, meta, 18).SerializeToString()
    calls = []
    real = export.trace
    monkeypatch.setattr(export, "trace", lambda *a: calls.append(a) or real(*a))
    cached = _export(second, meta, tmp_path / "second.onnx")
    assert calls == [], "the second export traced again instead of using the stored graph"
    proto = onnx.load(str(tmp_path / "second.onnx"))
    del proto.metadata_props[:]
    assert proto.SerializeToString() == traced, "not the bytes a fresh trace gives"
    assert fresh.graph.initializer != proto.graph.initializer  # the new weights are in
    assert cached != (tmp_path / "first.onnx").read_bytes()


def test_another_structure_gets_its_own_graph(cache: Path, tmp_path: Path) -> None:
    _export(_model(0, tta=2), META, tmp_path / "a.onnx")
    _export(_model(0, tta=0), {**META, "arch_params": {"tta": 0}}, tmp_path / "b.onnx")
    assert len(list(cache.glob("*.onnx"))) == 2


def test_a_damaged_cache_file_is_traced_again(cache: Path, tmp_path: Path) -> None:
    expected = _export(_model(0), META, tmp_path / "a.onnx")
    (stored,) = cache.glob("*.onnx")
    stored.write_bytes(b"not an onnx file")
    assert _export(_model(0), META, tmp_path / "b.onnx") == expected
    assert onnx.load(str(stored)).graph.node, "a good graph replaced the damaged one"


@pytest.mark.parametrize("arch", ["resnet18", "fast"])
def test_a_graph_that_depends_on_weight_values_is_traced_every_time(
    cache: Path, tmp_path: Path, arch: str
) -> None:
    # The exporter folds each eval-mode BatchNorm into the conv before it, keeping the conv
    # weight's name for the folded values: filling in a state_dict would be wrong. The proof
    # sees the difference, so nothing is stored and every export traces.
    model = _model(0, arch)
    meta = {**META, "arch": arch}
    first = _export(model, meta, tmp_path / "a.onnx")
    assert not list(cache.glob("*.onnx"))
    assert _export(model, meta, tmp_path / "b.onnx") == first


def test_parity_tolerance_grows_with_huge_logits(processed: Path) -> None:
    # A run gone astray can end with logits in the tens of thousands: fp32 keeps 7 digits, so
    # onnxruntime and PyTorch differ by more than 1e-4 there however faithful the export is.
    from visionpipe import paths
    from visionpipe.config import parse_params
    from visionpipe.models import save_model

    model = _model(0, tta=0)
    with torch.no_grad():
        model.net[-1].weight.mul_(1e6)
    meta = {**META, "arch_params": {"tta": 0}, "classes": ["cat", "dog", "frog"]}
    save_model(
        paths.MODEL, model, {**meta, "normalize": True, "mean": [0.5] * 3, "std": [0.25] * 3}
    )
    result = export.run(parse_params({}).export.model_copy(update={"parity_images": 30}))
    assert result["max_abs_logit"] > 1e3
    assert result["max_abs_diff_allowed"] == pytest.approx(1e-4 * result["max_abs_logit"])
    assert result["max_abs_logit_diff"] <= result["max_abs_diff_allowed"]
