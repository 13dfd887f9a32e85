"""The GPU paths on a real CUDA GPU: what tests/unit/test_gpu_paths.py checks on a pretend device,
run for real. Skipped without a GPU (CI has none); where there is one:

    uv run pytest tests/unit/test_cuda.py
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import pytest
import torch

from tests.datasets import FAST_TRAIN, ZOO, kill_at_validation, tiny_params, train_anew
from visionpipe import evaluate, export, inference, paths, precision, split_tensors, train
from visionpipe.config.params import parse_params
from visionpipe.config.train import TrainConfig
from visionpipe.modelfile import load_model
from visionpipe.models import MODELS, build_model

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]
CUDA = torch.device("cuda")


@pytest.fixture(autouse=True)
def _nondeterministic_after(monkeypatch: pytest.MonkeyPatch):
    # train.deterministic switches torch's global flag on; later tests must not inherit it.
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    yield
    torch.use_deterministic_algorithms(False)


def _weights() -> dict[str, torch.Tensor]:
    return torch.load(paths.MODEL, weights_only=True)["state_dict"]


def _params(arch: str, **train_overrides: Any):
    model, train_params = ZOO[arch]
    return tiny_params(model, **{**train_params, "batch_size": 16, **train_overrides})


@pytest.mark.parametrize("arch", MODELS)
def test_every_model_trains_evaluates_and_exports_from_the_gpu(processed32: Path, arch: str):
    metrics = train.run(_params(arch, epochs=2))
    assert metrics["epochs_run"] == 2 and not metrics["diverged"]
    timings = json.loads(paths.TRAIN_TIMINGS.read_text())
    assert timings["device"] == torch.cuda.get_device_name(CUDA)
    assert timings["precision"] == precision.precision_name(precision.autocast_dtype(CUDA, True))
    # The saved model is CPU tensors: it loads on a machine without a GPU.
    assert all(t.device.type == "cpu" for t in _weights().values())
    on_gpu, on_cpu = evaluate.run("cuda", 16), evaluate.run("cpu", 16)
    # Evaluation is fp32 on every device, so the GPU's figures are the CPU's.
    assert on_gpu["test_acc"] == on_cpu["test_acc"]
    assert on_gpu["test_loss"] == pytest.approx(on_cpu["test_loss"], rel=1e-4, abs=1e-5)
    result = export.run(parse_params({}).export.model_copy(update={"parity_images": 8}))
    assert result["agrees"]


def test_amp_scoring_on_the_gpu_runs_in_its_low_precision_near_fp32(
    processed32: Path, caplog: pytest.LogCaptureFixture
) -> None:
    train.run(_params("fast", epochs=1))
    low = precision.precision_name(precision.autocast_dtype(CUDA, True))
    with caplog.at_level("INFO"):
        strict, mixed = evaluate.run("cuda", 16), evaluate.run("cuda", 16, amp=True)
    assert f"test images in {low}" in caplog.text
    if low == "fp32":  # a GPU without fast low precision (6.x) scores in fp32 either way
        assert mixed == strict
        return
    assert mixed["test_loss"] != strict["test_loss"]
    assert mixed["test_loss"] == pytest.approx(strict["test_loss"], rel=0.01)


@pytest.mark.parametrize("arch", MODELS)
def test_gpu_logits_are_fp32_like_the_cpus(processed32: Path, arch: str) -> None:
    """predict_logits promises fp32 on every device: no TF32 convolutions or matmuls."""
    train.run(_params(arch, epochs=1))
    model, _ = load_model(paths.MODEL)
    images, _ = split_tensors.load_split("test")
    cpu = inference.predict_logits(model, images, torch.device("cpu"), 8)
    gpu = inference.predict_logits(model.to(CUDA), images, CUDA, 8)
    scale = max(1.0, cpu.abs().max().item())
    assert (gpu - cpu).abs().max().item() <= 1e-4 * scale


def test_training_data_lives_on_the_gpu_when_it_fits(processed32: Path) -> None:
    splits = split_tensors.load_training_data(CUDA)
    assert splits.train_x.device.type == "cuda" and splits.train_x.dtype == torch.uint8
    # Validation copies its batches over from the host.
    assert splits.val_x.device.type == "cpu"


@pytest.mark.parametrize("arch", ["tutorial_cnn", "resnet18", "fast"])
def test_deterministic_gpu_runs_give_bit_identical_weights(processed32: Path, arch: str):
    params = _params(arch, epochs=2, deterministic=True)
    train.run(params)
    first = _weights()
    train_anew(params)
    second = _weights()
    assert all(torch.equal(first[k], second[k]) for k in first)


def test_deterministic_gpu_run_resumes_to_the_same_weights(
    processed32: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    params = _params("resnet18", epochs=3, deterministic=True)
    train.run(params)
    uninterrupted = _weights()
    paths.MODEL.unlink()
    real_eval = train.evaluate_split
    kill_at_validation(monkeypatch, 3)
    with pytest.raises(KeyboardInterrupt):
        train_anew(params)
    monkeypatch.setattr(train, "evaluate_split", real_eval)
    train.run(params)
    assert '"resumed_from_epoch": 2' in paths.TRAIN_TIMINGS.read_text()
    resumed = _weights()
    assert all(torch.equal(uninterrupted[k], resumed[k]) for k in uninterrupted)


def test_gpu_and_cpu_learn_alike_in_fp32(processed32: Path) -> None:
    """Same initial weights and batches (drawn on the CPU): fp32 training on the GPU follows
    the CPU's losses closely (kernels differ, so not bit for bit)."""
    losses = {}
    for device in ("cpu", "cuda"):
        params = _params("tutorial_cnn", epochs=2, amp=False)
        params = params.model_copy(
            update={"launch": params.launch.model_copy(update={"device": device})}
        )
        train.run(params)
        history = paths.PLOT_EPOCHS.read_text().splitlines()[1:]
        losses[device] = [float(line.split(",")[1]) for line in history]
        timings = json.loads(paths.TRAIN_TIMINGS.read_text())
        assert timings["precision"] == "fp32"
    assert losses["cuda"] == pytest.approx(losses["cpu"], rel=1e-3)


def test_compiled_model_trains_on_the_gpu(processed32: Path) -> None:
    metrics = train.run(_params("tutorial_cnn", epochs=1, compile=True))
    assert metrics["epochs_run"] == 1 and not metrics["diverged"]
    # The compiled wrapper is not what is saved: the model file holds the plain state_dict.
    assert not any(k.startswith("_orig_mod") for k in _weights())


def _epoch_losses() -> list[float]:
    return [float(line.split(",")[1]) for line in paths.PLOT_EPOCHS.read_text().splitlines()[1:]]


@pytest.mark.parametrize("arch", ["tutorial_cnn", "fast"])
def test_the_step_as_a_cuda_graph_trains_like_the_eager_one(
    processed32: Path, arch: str, caplog: pytest.LogCaptureFixture
) -> None:
    """The real capture and replays (test_steps.py acts them out on the CPU): the graph is
    captured, not fallen back from, and follows the eager steps' losses (the graphed path's
    fused optimizer rounds differently from the eager foreach one, so not bit for bit)."""
    losses = {}
    for graph in (False, True):
        with caplog.at_level(logging.INFO, logger="visionpipe.steps"):
            train.run(_params(arch, epochs=3, amp=False, batch_size=8, cuda_graph=graph))
        losses[graph] = _epoch_losses()
    said = [r.getMessage() for r in caplog.records if r.name == "visionpipe.steps"]
    assert said == ["train step captured as a CUDA graph after 3 eager steps"], said
    assert losses[True] == pytest.approx(losses[False], rel=1e-3)


def test_a_deterministic_graphed_run_is_bit_identical_and_resumes(
    processed32: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    params = _params("fast", epochs=3, deterministic=True, batch_size=8, cuda_graph=True)
    train.run(params)
    first = _weights()
    train_anew(params)
    assert all(torch.equal(first[k], v) for k, v in _weights().items())
    real_eval = train.evaluate_split
    kill_at_validation(monkeypatch, 2)
    with pytest.raises(KeyboardInterrupt):
        train_anew(params)
    monkeypatch.setattr(train, "evaluate_split", real_eval)
    train.run(params)  # restores the lr tensors onto the GPU before its capture
    assert '"resumed_from_epoch": 1' in paths.TRAIN_TIMINGS.read_text()
    assert all(torch.equal(first[k], v) for k, v in _weights().items())


def _random_data_loop(arch: str, cfg: TrainConfig) -> train.Loop:
    """`arch`'s train loop on 256 random CIFAR-sized uint8 images on the GPU."""
    x = torch.randint(0, 256, (256, 3, 32, 32), dtype=torch.uint8, device=CUDA)
    y = torch.randint(0, 10, (256,), device=CUDA)
    model = build_model(arch, 10, 32, classes=[str(i) for i in range(10)])
    model.prepare(x)
    return train.make_loop(train.place_model(model, CUDA, cfg), x, y, cfg, CUDA)


@pytest.mark.parametrize("graph", [False, True], ids=["eager", "cuda_graph"])
def test_the_fast_recipes_steps_never_wait_for_the_gpu(graph: bool) -> None:
    """No host sync inside an epoch's steps (torch's sync debug mode raises at one): the host
    queues the next steps while the GPU computes, instead of waiting for each. Augmentation draws
    on the CPU and copies to the GPU: a blocking copy there would be a sync per step."""
    loop = _random_data_loop("fast", TrainConfig(**{**FAST_TRAIN, "cuda_graph": graph}))
    train.train_epoch(loop, 0)  # warm-up steps and, with the graph, its capture
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        loss = train.train_epoch(loop, 1)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert torch.isfinite(loss)


def test_fp16_and_its_gradient_scaler_train_for_real_as_on_a_t4(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A T4's precision (compute capability 7.5: no native bf16) on this GPU, decided by the same
    function a T4 goes through: fp16 autocast with a GradScaler, whose skipped steps and scale
    back-off then run for real. The scale starts where fp16 gradients must overflow."""
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: False)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (7, 5))
    loop = _random_data_loop("resnet18", TrainConfig(batch_size=32, cuda_graph=True))
    model = loop.model
    assert loop.autocast_dtype == torch.float16 and loop.scaler.is_enabled()
    assert type(loop.step).__name__ == "EagerStep", "a GradScaler keeps the step out of a graph"
    loop.scaler = torch.amp.GradScaler("cuda", init_scale=2.0**40)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    losses = [train.train_epoch(loop, epoch).item() for epoch in range(2)]
    assert all(torch.isfinite(torch.tensor(losses)))
    assert loop.scaler.get_scale() < 2.0**40, "the overflowing steps backed the scale off"
    assert any(not torch.equal(before[k], v) for k, v in model.state_dict().items())
