"""The ONNX export's parity check against onnxruntime."""

from __future__ import annotations

import dataclasses
import hashlib
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime
import pytest
import torch
from PIL import Image

from visionpipe import export
from visionpipe.modelfile import ModelInfo
from visionpipe.models import build_model
from visionpipe.onnxrt import open_exported


def _model(seed: int, arch: str = "tutorial_cnn", tta: int = 2) -> torch.nn.Module:
    """A model with weights like a trained one's: none of them exactly 0 or 1."""
    torch.manual_seed(seed)
    model = build_model(arch, 3, 16, {"tta": tta}, [0.5] * 3, [0.25] * 3).eval()
    with torch.no_grad():
        for tensor in model.state_dict().values():
            if tensor.is_floating_point():
                tensor.add_(torch.rand_like(tensor) * 0.01 + 0.001)
    return model


def _info(tta: int = 2) -> ModelInfo:
    """What model.pt says of `_model`'s model: 16 px, 3 classes."""
    return ModelInfo(
        arch="tutorial_cnn",
        num_classes=3,
        image_size=16,
        arch_params={"tta": tta},
        normalize=True,
        mean=[0.5] * 3,
        std=[0.25] * 3,
        classes=["cat", "dog", "frog"],
        params={},
        visionpipe_version="test",
        torch_version="2",
    )


def test_parity_tolerance_grows_with_huge_logits(processed: Path) -> None:
    # A run gone astray can end with logits in the tens of thousands: fp32 keeps 7 digits, so
    # onnxruntime and PyTorch differ by more than 1e-4 there however faithful the export is.
    from visionpipe import paths
    from visionpipe.config.params import parse_params
    from visionpipe.modelfile import save_model

    model = _model(0, tta=0)
    with torch.no_grad():
        model.net[-1].weight.mul_(1e6)
    info = _info(tta=0)
    save_model(paths.MODEL, model, info)
    result = export.run(parse_params({}).export.model_copy(update={"parity_images": 30}))
    assert result["max_abs_logit"] > 1e3
    assert result["max_abs_diff_allowed"] == pytest.approx(1e-4 * result["max_abs_logit"])
    assert result["max_abs_logit_diff"] <= result["max_abs_diff_allowed"]


def test_an_export_removes_what_a_killed_one_left(processed: Path) -> None:
    from visionpipe import paths
    from visionpipe.config.params import parse_params
    from visionpipe.modelfile import save_model

    save_model(paths.MODEL, _model(0, tta=0), _info(tta=0))
    stale = paths.ONNX_MODEL.parent / ".model.onnx.k1lled.tmp"  # SIGKILL mid-write
    stale.write_bytes(b"half a graph")
    export.run(parse_params({}).export.model_copy(update={"parity_images": 8}))
    # The export names the model.pt it came from, by the MD5 dvc.lock gives it.
    props = {p.key: p.value for p in onnx.load(str(paths.ONNX_MODEL)).metadata_props}
    assert props["state_dict_md5"] == hashlib.md5(paths.MODEL.read_bytes()).hexdigest()
    assert not stale.exists()
    assert sorted(p.name for p in paths.ONNX_MODEL.parent.iterdir()) == ["model.onnx", "model.pt"]


def test_the_parity_check_compares_images_of_every_class(
    processed: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # preprocess stores a split class by class: its first images are all of the first class.
    from visionpipe import paths
    from visionpipe.config.params import parse_params
    from visionpipe.modelfile import save_model

    save_model(paths.MODEL, _model(0, tta=0), _info(tta=0))
    labels = torch.arange(3).repeat_interleave(100)
    images = labels.view(-1, 1, 1, 1).expand(-1, 3, 16, 16).to(torch.uint8).contiguous()
    monkeypatch.setattr(export, "load_split", lambda split, in_memory=None: (images, labels))
    compared = []
    real = export.parity
    monkeypatch.setattr(export, "parity", lambda m, f, x: compared.append(x) or real(m, f, x))
    result = export.run(parse_params({}).export.model_copy(update={"parity_images": 30}))
    assert result["images"] == 30
    assert torch.bincount(compared[0][:, 0, 0, 0].long()).tolist() == [10, 10, 10]


@pytest.mark.parametrize(("opset", "ir_version"), [(18, 8), (20, 9), (23, 11)])
def test_the_file_has_the_ir_version_its_opset_needs(
    opset: int, ir_version: int, tmp_path: Path
) -> None:
    # The exporter stamps IR 10 whatever the opset, which onnxruntime before 1.18 refuses
    # ("Unsupported model IR version: 10, max supported IR version: 9") though it runs opset 18.
    dest = tmp_path / "model.onnx"
    export.export_onnx(_model(0), _info(), dest, opset)
    written = onnx.load(str(dest))
    assert written.ir_version == ir_version
    onnx.checker.check_model(written, full_check=True)
    session = onnxruntime.InferenceSession(str(dest), providers=["CPUExecutionProvider"])
    (logits,) = session.run(None, {session.get_inputs()[0].name: np.zeros((1, 3, 16, 16), "f")})
    assert logits.shape == (1, 3)


def test_reshapes_to_a_constant_shape_without_a_0_carry_no_allowzero(tmp_path: Path) -> None:
    # The exporter writes allowzero=1 on every Reshape; onnx2torch refuses it ('"allowzero=1"
    # is not implemented') though it changes nothing where the target holds no 0.
    dest = tmp_path / "model.onnx"
    export.export_onnx(_model(0), _info(), dest, 18)
    reshapes = [n for n in onnx.load(str(dest)).graph.node if n.op_type == "Reshape"]
    assert len(reshapes) == 2  # the flatten and the TTA views' regrouping
    assert all(a.name != "allowzero" for n in reshapes for a in n.attribute)

    def reshape(target: list[int]) -> onnx.NodeProto:
        return onnx.helper.make_node("Reshape", ["x", str(target)], ["y"], allowzero=1)

    graph = onnx.helper.make_graph(
        [reshape([-1, 4]), reshape([0, -1])],
        "g",
        [],
        [],
        [onnx.numpy_helper.from_array(np.array(t, np.int64), str(t)) for t in ([-1, 4], [0, -1])],
    )
    export._plain_reshapes(graph)
    kept = [[a.i for a in n.attribute if a.name == "allowzero"] for n in graph.node]
    assert kept == [[], [1]]  # a 0 in the target means "keep this side" only without it


def _deploy_page() -> str:
    from tests.helpers import ROOT

    return (ROOT / "docs" / "deploy.md").read_text()


def _deploy_snippet(marker: str) -> str:
    """docs/deploy.md's one Python block holding `marker`."""
    blocks = re.findall(r"```python\n(.*?)```", _deploy_page(), re.S)
    found = [b for b in blocks if marker in b]
    assert len(found) == 1, f"docs/deploy.md should have one Python block with {marker!r}"
    return found[0]


def test_the_documented_onnxruntime_code_reads_an_export(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A user without visionpipe has only the page: the names and metadata keys it gives must be
    # the file's.
    info = _info()
    classes = info.classes
    model = _model(0)
    monkeypatch.chdir(tmp_path)
    Path("models").mkdir()
    export.export_onnx(model, info, Path("models/model.onnx"), 18)
    images = torch.rand(4, 3, 16, 16)
    namespace: dict = {"images": images.numpy()}
    exec(_deploy_snippet("custom_metadata_map"), namespace)
    exec(_deploy_snippet("logits = session.run"), namespace)
    with torch.no_grad():
        expected = model(images)
    assert (namespace["classes"], namespace["size"]) == (classes, 16)
    torch.testing.assert_close(torch.from_numpy(namespace["logits"]), expected, atol=1e-5, rtol=0)
    assert namespace["names"] == [classes[i] for i in expected.argmax(1)]


def test_the_documented_pillow_loader_gives_predict_s_pixels(
    photo: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A client without visionpipe makes `images` from the page alone: a non-square PNG, and a
    # small JPEG stored on its side (EXIF orientation 6), as predict reads them.
    from PIL import Image

    from visionpipe.images import load_array

    monkeypatch.chdir(tmp_path)
    shutil.copy(photo, "dog.png")
    sideways = Image.open(photo).convert("RGB").resize((90, 60))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotated: shown turned 90 degrees clockwise
    sideways.save("side.jpg", exif=exif, quality=90)
    # Over twice 32 px on its shorter side: predict decodes it at half scale.
    Image.open(photo).convert("RGB").resize((300, 200)).save("big.jpg", quality=90)
    # A tall one, which Pillow would resize columns first: the snippet fixes the order as predict.
    Image.open(photo).convert("RGB").resize((65, 200)).save("tall.png")
    # A 16-bit scan, as PNG and PGM (both on the 0-65535 scale; Pillow's convert would clip).
    gray = np.asarray(Image.open(photo).convert("L").resize((40, 36)), np.uint16) * 257
    Image.fromarray(gray // 3).save("scan.png")
    Image.fromarray(gray // 3).save("scan.pgm")
    namespace: dict = {"size": 32}
    exec(_deploy_snippet("def load("), namespace)
    for name in ("dog.png", "side.jpg", "big.jpg", "tall.png", "scan.png", "scan.pgm"):
        want = load_array(Path(name).read_bytes(), name, 32).astype(np.float32) / np.float32(255)
        np.testing.assert_array_equal(namespace["load"](name, 32), want, err_msg=name)
    assert namespace["images"].shape == (1, 3, 32, 32)


def test_the_documented_int8_quantization_gives_a_model_predict_reads(
    exported_model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import onnxruntime as ort

    from visionpipe.cli import main

    monkeypatch.chdir(tmp_path)
    shutil.copytree(exported_model, "models")  # the export, and the splits it was trained on
    shutil.copytree(exported_model.parent / "data", "data")
    exec(_deploy_snippet("quantize_static"), {"__name__": "__deploy__"})
    quantized = onnx.load("model.int8.onnx")
    assert any(node.op_type == "QuantizeLinear" for node in quantized.graph.node)
    # onnxruntime before 1.18, which runs the fp32 export, refuses a file declaring an opset
    # newer than it knows (ai.onnx.ml 5, which ORT's graph optimizer declares, used or not).
    exported = onnx.load("models/model.onnx")
    opsets = [
        {(o.domain or "ai.onnx", o.version) for o in m.opset_import} for m in (quantized, exported)
    ]
    assert opsets[0] <= opsets[1], "the int8 file declares opsets the export does not"
    assert quantized.ir_version <= exported.ir_version
    images = np.random.default_rng(0).random((8, 3, 16, 16), dtype=np.float32)
    fp32, int8 = (
        ort.InferenceSession(path).run(None, {"image": images})[0]
        for path in ("models/model.onnx", "model.int8.onnx")
    )
    assert fp32.shape == int8.shape and np.abs(fp32 - int8).max() < 0.5 * np.abs(fp32).max()
    # The page says OpenVINO runs the int8 file too (with the f32 hint, as for the fp32 one).
    import openvino

    compiled = openvino.Core().compile_model(
        "model.int8.onnx", "CPU", {"INFERENCE_PRECISION_HINT": "f32"}
    )
    np.testing.assert_allclose(compiled(images)[0], int8, atol=0.05 * np.abs(int8).max())
    Image.new("RGB", (20, 20), "red").save("red.png")
    assert main(["predict", "red.png", "--model", "model.int8.onnx"]) == 0  # metadata kept


def test_the_metadata_names_the_classes_as_they_are(tmp_path: Path) -> None:
    # Netron and other viewers show the string as stored: 猫, not \\u732b.
    info = dataclasses.replace(_info(), classes=["猫", "蚂蚁", "蜜蜂"])
    export.export_onnx(_model(0), info, tmp_path / "model.onnx", 18)
    props = {p.key: p.value for p in onnx.load(str(tmp_path / "model.onnx")).metadata_props}
    assert props["classes"] == '["猫", "蚂蚁", "蜜蜂"]'
    # And how a client makes the input of a photo, with image_size alone.
    assert props["resize"].startswith("upright by EXIF, shorter side to image_size (bilinear)")
    assert open_exported(tmp_path / "model.onnx").classes == ["猫", "蚂蚁", "蜜蜂"]


def test_an_opset_the_exporter_does_not_write_is_refused(tmp_path: Path) -> None:
    # torch's exporter writes opset 18 when asked for 17, while metrics/export.json said 17.
    from visionpipe.config import ConfigError
    from visionpipe.config.params import parse_params

    with pytest.raises(ConfigError, match=r"export\.opset"):
        parse_params({"export": {"opset": 17}})
    with pytest.raises(ValueError, match=r"export\.opset 17: torch's exporter wrote opset 18"):
        export.export_onnx(_model(0), _info(), tmp_path / "model.onnx", 17)
    assert not (tmp_path / "model.onnx").exists()


def test_the_documented_mnn_commands_convert_and_run_an_export(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The page's converter command (uv's environment replaced by this one) and its Python block.
    monkeypatch.chdir(tmp_path)
    Path("models").mkdir()
    model = _model(0, tta=0)
    export.export_onnx(model, _info(tta=0), Path("models/model.onnx"), 18)
    shell = re.findall(r"```sh\n(.*?)```", _deploy_page(), re.S)
    [command] = [block for block in shell if "--MNNModel" in block]
    prefix = "uv run --with MNN==3.6.1 python "
    assert command.startswith(prefix), command
    args = [sys.executable, *shlex.split(command.removeprefix(prefix).replace("\\\n", " "))]
    subprocess.run(args, check=True, capture_output=True)
    images = np.random.default_rng(0).random((4, 3, 16, 16), dtype=np.float32)
    namespace: dict = {"images": images}
    exec(_deploy_snippet("MNN.nn.load_module_from_file"), namespace)
    with torch.no_grad():
        expected = model(torch.from_numpy(images)).numpy()
    np.testing.assert_allclose(np.array(namespace["logits"]), expected, atol=1e-5, rtol=0)


def test_the_torchlib_list_the_warm_process_keeps_exports_the_same_bytes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The warm process lists torchlib's functions once for the exports of every stage it forks.
    from torch.onnx._internal._lazy_import import onnxscript_apis

    from visionpipe import warm

    export.export_onnx(_model(0), _info(), tmp_path / "fresh.onnx", 18)
    monkeypatch.setattr(onnxscript_apis, "get_torchlib_ops", onnxscript_apis.get_torchlib_ops)
    warm.keep_torchlib_ops()
    kept = onnxscript_apis.get_torchlib_ops
    export.export_onnx(_model(0), _info(), tmp_path / "kept.onnx", 18)
    assert onnxscript_apis.get_torchlib_ops is kept
    assert (tmp_path / "kept.onnx").read_bytes() == (tmp_path / "fresh.onnx").read_bytes()
