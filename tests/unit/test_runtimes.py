"""Every model of the zoo, exported in each form, run in every runtime of `runtimes.RUNTIMES` on the
same images as PyTorch.

A runtime that `runtimes.problems` says cannot run a graph must fail on it (so that table stays
true); every other pair must give the same top-1 class on every image and logits within
TOLERANCE x max(1, the largest |logit|), the export stage's own parity rule. OpenCV runs in a
subprocess (tests/opencv_run.py), 5.x from the dev dependencies and 4.x in an environment uv
builds, so that a segfault is a failure with a message; MNN too (tests/mnn_run.py, which
converts the file with the wheel's own converter first). onnxruntime-web runs in Node.js
(tests/web/ort_web_run.mjs, the npm package from `npm ci` in tests/web; skipped without them).
A runtime that fails on a graph may fail with no logits or wrong ones.
"""

from __future__ import annotations

import functools
import json
import shutil
import signal
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
import torch
from torch import nn

from tests.helpers import ROOT, model_info
from visionpipe import runtimes
from visionpipe.export import export_onnx
from visionpipe.modelfile import ModelInfo
from visionpipe.models import MODELS, build_model, to_input
from visionpipe.onnxrt import INPUT_NAME, open_session
from visionpipe.portable import portable_model

TOLERANCE = 1e-4  # largest |logit difference|, times the largest |logit| when above 1
SIZE = 32  # the CIFAR-10 recipes' image size (vgg16's smallest)
IMAGES = 8
# The reference evaluator runs numpy op by op, about 0.45 s an image for fast-tta2: it scores the
# first 2 images, enough to show an operator it reads otherwise than PyTorch computes. MNN's
# negative-step Slice gives the tutorial CNN's right logits up to a batch of 16, and crashes from
# 32: it gets 32.
OTHER_IMAGES = {"onnx_reference": 2, "mnn": 32}
LOGIT_SCALE = 8.0  # the largest |logit| the models are scaled to, about a trained model's
OPENCV_SCRIPT = ROOT / "tests" / "opencv_run.py"
MNN_SCRIPT = ROOT / "tests" / "mnn_run.py"  # converts with MNN's own converter, then runs
WEB = ROOT / "tests" / "web"  # onnxruntime-web's runner and its npm package (`npm ci` there)
FIX = (
    "Find the first node that differs (docs/deploy.md, footnote 3: cut the graph after each "
    "node), then either make src/visionpipe/runtimes.py's problems() name it for this runtime "
    "(the export stage then warns) and src/visionpipe/portable.py rewrite it, or change the model"
)
# case: (model.name, model.tta, the model's own keys). Every model of the zoo is a case as built
# by default, so a new MODELS entry is tested here without a line of its own; VARIANTS adds the
# settings whose graphs differ. Each runs in the default form; those in PORTABLE also in the
# portable form (for the others it is the same file: see the test below).
VARIANTS: dict[str, tuple[str, int, dict[str, Any]]] = {
    "tutorial_cnn-relu-bn-tta1": ("tutorial_cnn", 1, {"activation": "relu", "batch_norm": True}),
    "fast-tta2": ("fast", 2, {}),
}
CASES = {**{name: (name, 0, {}) for name in MODELS}, **VARIANTS}
PORTABLE = ("tutorial_cnn-relu-bn-tta1", "vgg16", "fast", "fast-tta2")
FORMS = [(case, "default") for case in CASES] + [(case, "portable") for case in PORTABLE]


@dataclass(frozen=True)
class Outcome:
    """What a runtime gave: logits, or why it gave none (`crashed`: killed by SIGSEGV)."""

    logits: np.ndarray | None
    error: str = ""
    crashed: bool = False


def _model(case: str) -> torch.nn.Module:
    """The case's model with random weights and BatchNorm statistics away from 0 and 1.

    VGG16's classifier is narrowed from 4096 to 64 units: the same layers and ONNX ops, without
    the 400 MB of weights that would make writing and loading each file take seconds.
    """
    arch, tta, own = CASES[case]
    torch.manual_seed(0)
    model = build_model(arch, 10, SIZE, {"tta": tta, **own}, [0.49, 0.48, 0.45], [0.25] * 3)
    if arch == "vgg16":
        head = model.net.classifier
        head[0], head[3], head[6] = nn.Linear(512 * 7 * 7, 64), nn.Linear(64, 64), nn.Linear(64, 10)
    with torch.no_grad():
        for name, tensor in model.state_dict().items():
            if name.endswith("running_var"):
                tensor.uniform_(0.5, 2.0)
            elif name.endswith("running_mean"):
                tensor.uniform_(-0.5, 0.5)
        # Logits as large as a trained model's (random weights give |logits| < 1), so that the
        # tolerance is relative to them, as in the export stage.
        last = [m for m in model.net.modules() if isinstance(m, nn.Linear)][-1]
        last.weight.mul_(LOGIT_SCALE / model.eval()(torch.rand(4, 3, SIZE, SIZE)).abs().max())
    return model.eval()


def _info(case: str) -> ModelInfo:
    arch, tta, own = CASES[case]
    classes = [f"class{i}" for i in range(10)]
    return model_info(arch, classes, SIZE, {"tta": tta, **own}, [0.49, 0.48, 0.45])


@pytest.fixture(scope="module")
def export_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("runtimes")
    generator = torch.Generator().manual_seed(1)
    count = max(IMAGES, *OTHER_IMAGES.values())
    images = torch.randint(0, 256, (count, 3, SIZE, SIZE), dtype=torch.uint8, generator=generator)
    np.save(folder / "images.npy", to_input(images).numpy())
    return folder


@functools.cache
def _exported(folder: Path, case: str, form: str) -> tuple[Path, np.ndarray]:
    """The case exported in `form` under `folder`, and PyTorch's logits on folder/images.npy."""
    model = _model(case)
    written = portable_model(model, SIZE).model if form == "portable" else model
    path = folder / f"{case}-{form}.onnx"
    export_onnx(written, _info(case), path, opset=18)
    with torch.no_grad():
        expected = model(torch.from_numpy(np.load(folder / "images.npy"))).numpy()
    return path, expected


def _onnxruntime(model: Path, images: np.ndarray) -> Outcome:
    return Outcome(open_session(model).run(None, {INPUT_NAME: images})[0])


def _openvino(model: Path, images: np.ndarray) -> Outcome:
    import openvino

    config = {"INFERENCE_PRECISION_HINT": "f32"}
    compiled = openvino.Core().compile_model(str(model), "CPU", config)
    assert compiled.get_property("INFERENCE_PRECISION_HINT") == openvino.Type.f32
    return Outcome(compiled(images)[0])


def _opencv(python: list[str], major: str) -> Callable[[Path, np.ndarray], Outcome]:
    def run(model: Path, images: np.ndarray) -> Outcome:
        images_path, logits_path = model.with_suffix(".in.npy"), model.with_suffix(".out.npy")
        np.save(images_path, images)
        logits_path.unlink(missing_ok=True)
        cmd = [*python, str(OPENCV_SCRIPT), str(model), str(images_path), str(logits_path)]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
        if proc.returncode:
            last = (proc.stderr.strip().splitlines() or ["(no output)"])[-1]
            # Killed by SIGSEGV: python's status is -11, uv's (running it) 128 + 11.
            crashed = proc.returncode in (-signal.SIGSEGV, 128 + signal.SIGSEGV)
            return Outcome(None, f"exit {proc.returncode}: {last}", crashed)
        assert proc.stdout.strip().startswith(major), f"ran OpenCV {proc.stdout.strip()}"
        return Outcome(np.load(logits_path))

    return run


def _onnx_reference(model: Path, images: np.ndarray) -> Outcome:
    from onnx.reference import ReferenceEvaluator

    return Outcome(ReferenceEvaluator(str(model)).run(None, {INPUT_NAME: images})[0])


def _onnxruntime_web(model: Path, images: np.ndarray) -> Outcome:
    node = shutil.which("node")
    if node is None or not (WEB / "node_modules" / "onnxruntime-web").is_dir():
        pytest.skip("needs Node.js and onnxruntime-web: cd tests/web && npm ci")
    images_path, logits_path = model.with_suffix(".web.in"), model.with_suffix(".web.out")
    images.astype("<f4").tofile(images_path)
    shape = ",".join(map(str, images.shape))
    script = str(WEB / "ort_web_run.mjs")
    cmd = [node, script, str(model), str(images_path), shape, str(logits_path)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    if proc.returncode:
        last = (proc.stderr.strip().splitlines() or ["(no output)"])[-1]
        return Outcome(None, f"exit {proc.returncode}: {last}")
    version, dims = proc.stdout.split()
    assert f"@{version} " in runtimes.RUNTIMES["onnxruntime_web"].requirement, f"ran {version}"
    return Outcome(np.fromfile(logits_path, "<f4").reshape(json.loads(dims)))


def _mnn(model: Path, images: np.ndarray) -> Outcome:
    images_path, logits_path = model.with_suffix(".mnn.in.npy"), model.with_suffix(".mnn.out.npy")
    np.save(images_path, images)
    logits_path.unlink(missing_ok=True)
    cmd = [sys.executable, str(MNN_SCRIPT), str(model), str(images_path), str(logits_path)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    if proc.returncode:
        last = (proc.stderr.strip().splitlines() or ["(no output)"])[-1]
        return Outcome(None, f"exit {proc.returncode}: {last}", proc.returncode == -signal.SIGSEGV)
    return Outcome(np.load(logits_path))


def _opencv4_python() -> list[str]:
    uv = shutil.which("uv")
    assert uv, "the OpenCV 4.x check needs uv on PATH to build its environment"
    requirement = runtimes.RUNTIMES["opencv4"].requirement
    return [uv, "run", "--no-project", "--with", requirement, "--with", "numpy", "python"]


RUNNERS: dict[str, Callable[[Path, np.ndarray], Outcome]] = {
    "onnxruntime": _onnxruntime,
    "openvino": _openvino,
    "opencv5": _opencv([sys.executable], "5."),
    "opencv4": lambda model, images: _opencv(_opencv4_python(), "4.")(model, images),
    "onnx_reference": _onnx_reference,
    "onnxruntime_web": _onnxruntime_web,
    "mnn": _mnn,
}


def test_every_runtime_of_the_table_is_tested() -> None:
    assert set(RUNNERS) == set(runtimes.RUNTIMES)


@pytest.mark.parametrize("case", [case for case in CASES if case not in PORTABLE])
def test_the_portable_form_of_the_other_cases_is_the_default(case: str) -> None:
    model = _model(case)
    form = portable_model(model, SIZE)
    assert form.rewrites == [], (
        f"the portable form of {case} rewrites it ({', '.join(form.rewrites)}): add {case!r} to "
        "PORTABLE in tests/unit/test_runtimes.py, so that form is run in every runtime too"
    )
    assert form.model is model


@pytest.mark.parametrize(("case", "form"), FORMS, ids=[f"{c}-{f}" for c, f in FORMS])
@pytest.mark.parametrize("runtime", list(runtimes.RUNTIMES))
def test_runtime_runs_the_zoo(runtime: str, case: str, form: str, export_dir: Path) -> None:
    path, expected = _exported(export_dir, case, form)
    problems = runtimes.problems(onnx.load(str(path)).graph).get(runtime, [])
    if form == "portable":
        assert problems == [], f"the portable form of {case} is known not to run: {problems}"
    images = np.load(export_dir / "images.npy")[: OTHER_IMAGES.get(runtime, IMAGES)]
    expected = expected[: len(images)]
    outcome = RUNNERS[runtime](path, images)
    if outcome.crashed:  # a crash is never a surprise: problems() names it
        assert any("SIGSEGV" in p for p in problems), f"{runtime} crashed on {path.name}. {FIX}"
    if problems:
        # The table says this runtime cannot run the graph (no logits, or wrong ones): it must
        # still be so.
        runs = outcome.logits is not None and _agrees(outcome.logits, expected)[0]
        assert not runs, f"{runtime} now runs {path.name}: update runtimes.py"
        return
    assert outcome.logits is not None, f"{runtime} failed on {path.name}: {outcome.error}. {FIX}"
    agrees, detail = _agrees(outcome.logits, expected)
    message = f"{runtime} runs {path.name} but its logits differ from PyTorch's: {detail}"
    assert agrees, f"{message}. {FIX}"


def _agrees(logits: np.ndarray, expected: np.ndarray) -> tuple[bool, str]:
    """Whether `logits` pass the export stage's parity rule against `expected`, and the figures."""
    diff = float(np.abs(logits - expected).max())
    allowed = TOLERANCE * max(1.0, float(np.abs(expected).max()))
    agreement = float((logits.argmax(1) == expected.argmax(1)).mean())
    detail = f"top-1 agreement {agreement:.0%}, largest |diff| {diff:.2e} (allowed {allowed:.2e})"
    return agreement == 1.0 and diff <= allowed, detail


def test_a_bool_constant_is_named_as_what_stops_opencv_4() -> None:
    # VGG16's adaptive pool at 64 px exports a BOOL mask beside its GatherND; OpenCV 4.14 stops
    # on the mask first ("Unsupported data type: BOOL"), which is the error its user sees.
    from onnx import TensorProto, helper

    mask = helper.make_tensor("mask", TensorProto.BOOL, [2], [True, False])
    graph = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["y"], name="keep")],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])],
        initializer=[mask],
    )
    assert runtimes.problems(graph)["opencv4"] == [
        "it reads no BOOL constant, 'Unsupported data type: BOOL' (constant 'mask')"
    ]


def test_the_log_says_so_when_every_runtime_has_a_known_failure(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    import logging

    from tests.tiny_onnx import write_tiny_onnx

    model = write_tiny_onnx(tmp_path / "model.onnx")
    with caplog.at_level(logging.INFO):
        runtimes.log_support(model, portable=False)
    assert f"{model} has no layer known to fail in onnxruntime, " in caplog.text, caplog.text
    everywhere = {name: ["a layer it lacks"] for name in runtimes.RUNTIMES}
    monkeypatch.setattr(runtimes, "problems", lambda graph: everywhere)
    caplog.clear()
    with caplog.at_level(logging.INFO):
        runtimes.log_support(model, portable=True)
    assert f"{model} has a layer known to fail in every tested runtime" in caplog.text
    assert "no layer known to fail" not in caplog.text
