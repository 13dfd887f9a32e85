"""The train step as a CUDA graph, acted out on the CPU: the decision, the warm-up, capture and
replay plumbing, the device lr the graph reads, resume, and the fall-back when a capture fails.
tests/unit/test_cuda.py runs the real capture where there is a GPU.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from tests.datasets import FAST_MODEL, FAST_TRAIN, kill_at_validation, tiny_params, train_anew
from visionpipe import optim, paths, steps, train
from visionpipe.config.train import TrainConfig
from visionpipe.models import build_model

CUDA, CPU = torch.device("cuda"), torch.device("cpu")
MAKE_STEP = steps.make_step


class CpuGraphs(steps.Graphs):
    """torch.cuda's graph calls acted out on the CPU: a capture records the step without
    running it (CUDA records kernels without running them); each replay runs it."""

    def __init__(self) -> None:
        self.warm_ups = self.captures = self.replays = 0

    def warm_up(self, fn: Callable[[], torch.Tensor]) -> torch.Tensor:
        self.warm_ups += 1
        return fn()

    def capture(self, fn: Callable[[], None]) -> Callable[[], None]:
        self.captures += 1

        def replay() -> None:
            self.replays += 1
            fn()

        return replay


class FailingGraphs(CpuGraphs):
    def capture(self, fn: Callable[[], None]) -> Callable[[], None]:
        raise RuntimeError("operation not permitted when stream is capturing\nmore lines")


def _pretend_cuda(monkeypatch: pytest.MonkeyPatch, graphs: CpuGraphs | None) -> None:
    """The graphed path on the CPU: `blocker` finds nothing in the way; `graphs` stands in for
    torch.cuda (None: the same fused, device-lr optimizer, stepped eagerly)."""
    monkeypatch.setattr(steps, "blocker", lambda cuda_graph, *_: None if cuda_graph else "off")

    def make_step(parts, world_size, graphed, batch_size):
        assert graphed
        if graphs is None:
            return steps.EagerStep(parts, world_size)
        step = MAKE_STEP(parts, world_size, graphed, batch_size)
        step.graphs = graphs
        return step

    monkeypatch.setattr(steps, "make_step", make_step)


def _weights() -> dict[str, torch.Tensor]:
    return torch.load(paths.MODEL, weights_only=True)["state_dict"]


# 96 tiny train images at batch 20: four full batches and one of 16 an epoch; every knob of the
# fast recipe (lookahead, triangle lr, a group whose lr stops, alternating flip) is on.
PARAMS = {**FAST_TRAIN, "batch_size": 20, "epochs": 3, "cuda_graph": True}


@pytest.mark.parametrize("optimizer", ["sgd", "adamw"])
def test_the_graphed_step_trains_exactly_as_the_eager_one(
    processed: Path, monkeypatch: pytest.MonkeyPatch, optimizer: str
) -> None:
    sgd = optimizer == "sgd"  # adamw keeps its own momentum: train.momentum is sgd's alone
    momentum = {"momentum": PARAMS["momentum"] if sgd else 0.0, "nesterov": sgd}
    params = tiny_params(FAST_MODEL, **{**PARAMS, "optimizer": optimizer, **momentum})
    _pretend_cuda(monkeypatch, None)
    train.run(params)
    eager = _weights()
    graphs = CpuGraphs()
    _pretend_cuda(monkeypatch, graphs)
    train_anew(params)
    assert (graphs.warm_ups, graphs.captures) == (steps.WARMUP_STEPS, 1)
    # 3 epochs of 4 full batches; the 16-image batches step eagerly.
    assert graphs.replays == 3 * 4 - steps.WARMUP_STEPS
    graphed = _weights()
    assert all(torch.equal(eager[k], graphed[k]) for k in eager)


def test_a_graphed_run_resumes_to_the_same_weights(
    processed: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    params = tiny_params(FAST_MODEL, **PARAMS)
    _pretend_cuda(monkeypatch, CpuGraphs())
    train.run(params)
    uninterrupted = _weights()
    real_eval = train.evaluate_split
    kill_at_validation(monkeypatch, 2)
    with pytest.raises(KeyboardInterrupt):
        train_anew(params)
    monkeypatch.setattr(train, "evaluate_split", real_eval)
    graphs = CpuGraphs()
    _pretend_cuda(monkeypatch, graphs)
    train.run(params)
    assert '"resumed_from_epoch": 1' in paths.TRAIN_TIMINGS.read_text()
    assert graphs.captures == 1, "the resumed run captures its own graph"
    resumed = _weights()
    assert all(torch.equal(uninterrupted[k], resumed[k]) for k in uninterrupted)


def test_a_failed_capture_steps_eagerly_to_the_same_weights(
    processed: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    params = tiny_params(FAST_MODEL, **PARAMS)
    _pretend_cuda(monkeypatch, None)
    train.run(params)
    eager = _weights()
    graphs = FailingGraphs()
    _pretend_cuda(monkeypatch, graphs)
    with caplog.at_level(logging.WARNING, logger="visionpipe.steps"):
        train_anew(params)
    assert graphs.replays == 0
    warnings = [r.getMessage() for r in caplog.records if r.name == "visionpipe.steps"]
    assert len(warnings) == 1, warnings
    assert "RuntimeError: operation not permitted when stream is capturing)" in warnings[0]
    assert "runs eagerly" in warnings[0]
    failed = _weights()
    assert all(torch.equal(eager[k], failed[k]) for k in eager)


@pytest.mark.parametrize(
    ("cuda_graph", "device", "processes", "compiled", "dtype", "why"),
    [
        (True, CUDA, 1, False, torch.bfloat16, None),
        (True, CUDA, 1, False, None, None),
        (False, CUDA, 1, False, None, "train.cuda_graph is false"),
        (True, CPU, 1, False, None, "need a CUDA GPU and this run trains on cpu"),
        (True, CUDA, 2, False, None, "several processes"),
        (True, CUDA, 1, True, None, "train.compile is true"),
        (True, CUDA, 1, False, torch.float16, "GradScaler"),
    ],
)
def test_what_keeps_the_step_out_of_a_graph(cuda_graph, device, processes, compiled, dtype, why):
    found = steps.blocker(cuda_graph, device, processes, compiled, dtype)
    assert found == why if why is None else why in found


def test_on_the_cpu_the_setting_leaves_the_steps_as_they_were(
    processed: Path, caplog: pytest.LogCaptureFixture
) -> None:
    train.run(tiny_params(epochs=1))
    plain = _weights()
    with caplog.at_level(logging.INFO, logger="visionpipe.train"):
        train.run(tiny_params(epochs=1, cuda_graph=True))
    assert any("run eagerly: CUDA graphs need a CUDA GPU" in r.getMessage() for r in caplog.records)
    same = _weights()
    assert all(torch.equal(plain[k], same[k]) for k in plain)


def _net() -> torch.nn.Module:
    return build_model("tutorial_cnn", 3, 16, {}, None, None, ["a", "b", "c"])


def test_the_scheduler_writes_the_lr_into_the_tensors_a_graph_reads() -> None:
    cfg = TrainConfig(lr=0.4, schedule="triangle", momentum=0.9, bias_lr_scale=4.0)
    optimizer = optim.make_optimizer(_net(), cfg, CPU)
    scheduler = optim.make_scheduler(optimizer, cfg, steps_per_epoch=5)
    tensors = [g["lr"] for g in optimizer.param_groups]
    assert all(isinstance(t, torch.Tensor) for t in tensors)
    assert optimizer.defaults["fused"] is True
    for step in range(1, 20):
        optimizer.step()  # no gradients: nothing moves, but the scheduler expects it first
        scheduler.step()
        for group, tensor in zip(optimizer.param_groups, tensors, strict=True):
            assert group["lr"] is tensor, "a new object: a graph would keep the old lr"
        expected = 0.4 * optim.lr_factor(step, 50, 0, "triangle")
        assert tensors[0].item() == pytest.approx(expected)


def test_a_replaced_lr_tensor_stops_the_graphed_run(monkeypatch: pytest.MonkeyPatch) -> None:
    """A torch whose scheduler assigned a float instead of filling the tensor would leave the
    graph at its first lr without a word: the step refuses to replay instead."""
    net = _net()
    cfg = TrainConfig(lr=0.1)
    optimizer = optim.make_optimizer(net, cfg, CPU)
    parts = type("Parts", (), {})()
    parts.step_model, parts.optimizer, parts.device, parts.autocast_dtype = (
        net,
        optimizer,
        CPU,
        None,
    )
    parts.scaler = torch.amp.GradScaler("cpu", enabled=False)
    parts.criterion = torch.nn.CrossEntropyLoss(reduction="sum")
    step = steps.GraphedStep(steps.EagerStep(parts), batch_size=4, graphs=CpuGraphs())
    x, y = torch.rand(4, 3, 16, 16), torch.tensor([0, 1, 2, 0])
    batch = train.Batch(x, y, 4, 4)
    for _ in range(steps.WARMUP_STEPS + 2):
        step(batch)
    optimizer.param_groups[0]["lr"] = 0.05
    with pytest.raises(RuntimeError, match="lr tensors were replaced"):
        step(batch)
