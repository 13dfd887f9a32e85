"""The GPU paths, tested without a GPU: the train stage on a pretend CUDA device (see
tests/fake_cuda.py), and every device decision with the torch.cuda / torch.backends.mps queries
monkeypatched to answer as a given machine would."""

from __future__ import annotations

import importlib.util
import json
import logging
import warnings
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from torch import nn

from tests.datasets import FAST_MODEL, FAST_TRAIN, ZOO, tiny_params
from tests.fake_cuda import FakeGPU, fake_gpu
from tests.helpers import ROOT
from visionpipe import (
    determinism,
    devices,
    distributed,
    inference,
    paths,
    precision,
    split_tensors,
    train,
)
from visionpipe.devices import DeviceError
from visionpipe.models import MODELS, Classifier, build_model, to_input, tutorial_cnn

CUDA = torch.device("cuda")
MPS = torch.device("mps")
CPU = torch.device("cpu")


def _fake_run(monkeypatch: pytest.MonkeyPatch, gpu: FakeGPU, params: Any) -> dict[str, Any]:
    with fake_gpu(monkeypatch, gpu):
        model_seen: list[tuple[bool, bool, torch.dtype, str, bool]] = []

        def record(module: nn.Module, args: tuple[torch.Tensor, ...]) -> None:
            x = args[0]
            last = x.is_contiguous(memory_format=torch.channels_last)
            seen = (module.training, torch.is_autocast_enabled("cuda"), x.dtype, x.device.type)
            model_seen.append((*seen, last))

        real_place = train.place_model

        def place(model: Classifier, device: torch.device, cfg: Any) -> Classifier:
            model.register_forward_pre_hook(record)
            return real_place(model, device, cfg)

        monkeypatch.setattr(train, "place_model", place)
        metrics = train.run(params)
    return {"metrics": metrics, "forward": model_seen}


@pytest.mark.parametrize("arch", MODELS)
def test_train_stage_runs_on_a_fake_cuda_device(
    processed32: Path, monkeypatch: pytest.MonkeyPatch, arch: str
) -> None:
    model, train_params = ZOO[arch]
    params = tiny_params(model, **{**train_params, "epochs": 2, "batch_size": 16})
    gpu = FakeGPU(name="Fake H100", capability=(9, 0))
    seen = _fake_run(monkeypatch, gpu, params)
    assert seen["metrics"]["epochs_run"] == 2
    # The TensorBoard start (input grid, first-conv feature maps) ran and wrote CPU images.
    tags = [tag for tag, _ in gpu.images]
    assert "inputs" in tags and any(t.startswith("conv1_feature_maps/") for t in tags)
    # Train steps in bf16 autocast; validation (and TTA, in evaluate) in fp32, as on a CPU.
    train_steps = [s for s in seen["forward"] if s[0]]
    evals = [s for s in seen["forward"] if not s[0]]
    assert train_steps and all(s[1] for s in train_steps)
    assert evals and not any(s[1] for s in evals)
    # The batch path ran on the device: float32 channels-last inputs on the GPU, every step.
    assert {s[2:] for s in train_steps} == {(torch.float32, "cuda", True)}
    # Two checkpoints and the model; the model file holds CPU tensors only.
    blobs = [o for o in gpu.saved if "state_dict" in o]
    checkpoints = [o for o in gpu.saved if "fingerprint" in o]
    assert len(blobs) == 1 and len(checkpoints) == 2
    assert all(t.device.type == "cpu" for t in blobs[0]["state_dict"].values())
    timings = json.loads(paths.TRAIN_TIMINGS.read_text())
    assert timings["device"] == "Fake H100" and timings["precision"] == "bf16"
    assert {"train_seconds", "validation_seconds", "epoch_loop_seconds"} <= set(timings)


def test_fake_cuda_tta_evaluation_stays_on_the_device_and_in_fp32(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    model = build_model("fast", 3, 16, {"tta": 2}, [0.5] * 3, [0.2] * 3)
    tf32_seen = []
    model.register_forward_pre_hook(lambda *_: tf32_seen.append(_tf32()))
    before = _tf32()
    computed = _computed_dtypes(model)
    with fake_gpu(monkeypatch, FakeGPU()):
        model = train.place_model(model, CUDA, tiny_params().train)
        images = torch.randint(0, 256, (10, 3, 16, 16), dtype=torch.uint8)  # on the host
        logits = inference.predict_logits(model, images, CUDA, batch_size=4)
    assert logits.device.type == "cpu" and logits.dtype == torch.float32
    assert logits.shape == (10, 3)
    assert computed == {torch.float32}, "no autocast: every layer computes in fp32"
    # No TF32 while scoring (cuDNN's default for fp32 convolutions); training's setting is back.
    assert tf32_seen and set(tf32_seen) == {_STRICT}
    assert _tf32() == before


def test_tta_logits_are_those_of_a_plain_fp32_forward() -> None:
    torch.manual_seed(0)
    model = build_model("fast", 3, 16, {"tta": 2}, [0.5] * 3, [0.2] * 3).eval()
    images = torch.randint(0, 256, (10, 3, 16, 16), dtype=torch.uint8)
    with torch.no_grad():
        plain = model(to_input(images, torch.channels_last))
    computed = _computed_dtypes(model)
    logits = inference.predict_logits(model, images, CPU, batch_size=len(images))
    assert computed == {torch.float32}
    # bf16's 8-bit mantissa would put them ~1e-3 of their size off, or more.
    assert torch.allclose(logits, plain, rtol=1e-6, atol=1e-6 * plain.abs().max().item())


def test_amp_scoring_computes_in_bf16_close_to_fp32_and_the_same_twice() -> None:
    torch.manual_seed(0)
    model = build_model("fast", 3, 16, {"tta": 2}, [0.5] * 3, [0.2] * 3).eval()
    images = torch.randint(0, 256, (10, 3, 16, 16), dtype=torch.uint8)
    fp32 = inference.predict_logits(model, images, CPU, batch_size=4)
    computed = _computed_dtypes(model)
    bf16 = inference.predict_logits(model, images, CPU, batch_size=4, amp=torch.bfloat16)
    assert computed == {torch.bfloat16}
    assert bf16.dtype == torch.float32 and bf16.shape == fp32.shape
    again = inference.predict_logits(model, images, CPU, batch_size=4, amp=torch.bfloat16)
    assert torch.equal(bf16, again), "bf16 scores are reproducible on a CPU too"
    # bf16 keeps 8 mantissa bits: off, but within a few percent of the logits' size.
    diff, size = (bf16 - fp32).abs().max().item(), fp32.abs().max().item()
    assert 0 < diff < 0.05 * size


def _computed_dtypes(model: nn.Module) -> set[torch.dtype]:
    """The dtypes `model`'s convolutions and linear layers will compute in (filled as it runs):
    what an autocast changes, where casting the logits back to float32 would hide it."""
    seen: set[torch.dtype] = set()
    for module in model.modules():
        if isinstance(module, nn.Conv2d | nn.Linear):
            module.register_forward_hook(lambda m, args, out: seen.add(out.dtype))
    return seen


def _new_tf32_api() -> bool:
    return hasattr(torch.backends.cudnn, "conv") and hasattr(
        torch.backends.cuda.matmul, "fp32_precision"
    )


# cuDNN convolutions' and cuBLAS matmuls' TF32 settings when neither may use TF32.
_STRICT = ("ieee", "ieee") if _new_tf32_api() else (False, False)


def _tf32() -> tuple[Any, Any]:
    """Whether cuDNN convolutions and cuBLAS matmuls may use TF32, in the API this torch has."""
    cudnn, matmul = torch.backends.cudnn, torch.backends.cuda.matmul
    if _new_tf32_api():
        return cudnn.conv.fp32_precision, matmul.fp32_precision
    return cudnn.allow_tf32, matmul.allow_tf32


@pytest.mark.skipif(not _new_tf32_api(), reason="torch < 2.9 has no fp32_precision API")
def test_strict_fp32_after_the_fp32_precision_api_was_used() -> None:
    # Once the new API is set, reading torch's legacy allow_tf32 flags raises.
    cudnn, matmul = torch.backends.cudnn, torch.backends.cuda.matmul
    before = _tf32()
    try:
        cudnn.conv.fp32_precision, matmul.fp32_precision = "tf32", "tf32"
        with precision.strict_fp32(CUDA):
            assert _tf32() == ("ieee", "ieee")
        assert _tf32() == ("tf32", "tf32")
    finally:
        cudnn.conv.fp32_precision, matmul.fp32_precision = before


def test_t4_trains_in_fp16_with_a_grad_scaler(
    processed32: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    params = tiny_params(FAST_MODEL, **{**FAST_TRAIN, "epochs": 1})
    gpu = FakeGPU(name="Tesla T4", capability=(7, 5))
    seen = _fake_run(monkeypatch, gpu, params)
    dtypes = {s[2] for s in seen["forward"] if s[0]}
    assert dtypes == {torch.float32}  # autocast casts inside the layers, not the input
    checkpoint = next(o for o in gpu.saved if "fingerprint" in o)
    assert checkpoint["scaler"], "fp16 steps need the GradScaler's state in the checkpoint"
    assert json.loads(paths.TRAIN_TIMINGS.read_text())["precision"] == "fp16"


@pytest.mark.parametrize("arch", ["alexnet", "vgg16"])
def test_deterministic_cuda_refuses_a_model_without_deterministic_backward_up_front(
    processed32: Path, monkeypatch: pytest.MonkeyPatch, arch: str
) -> None:
    model, train_params = ZOO[arch]
    params = tiny_params(model, **{**train_params, "deterministic": True})
    with pytest.raises(DeviceError, match=rf"model '{arch}' on cuda.*train\.deterministic"):
        _fake_run(monkeypatch, FakeGPU(), params)
    assert not paths.CHECKPOINT_DIR.exists(), "refused before the first step"


def test_deterministic_cuda_trains_resnet18_and_fixes_cublas(
    processed32: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    model, train_params = ZOO["resnet18"]
    params = tiny_params(model, **{**train_params, "epochs": 1, "deterministic": True})
    try:
        _fake_run(monkeypatch, FakeGPU(), params)
        import os

        assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":4096:8"
        assert torch.are_deterministic_algorithms_enabled()
    finally:
        torch.use_deterministic_algorithms(False)


@pytest.mark.parametrize(
    ("arch", "cuda_layer", "mps_layer"),
    [
        ("tutorial_cnn", None, "MaxPool2d"),
        ("resnet18", None, "MaxPool2d"),  # its 1x1 adaptive average is a mean
        ("alexnet", "AdaptiveAvgPool2d to 2", "MaxPool2d"),
        ("vgg16", "AdaptiveAvgPool2d to (7, 7)", "MaxPool2d"),
        ("fast", None, "MaxPool2d"),  # its global max is a plain max pool
    ],
)
def test_which_models_have_no_deterministic_backward(
    arch: str, cuda_layer: str | None, mps_layer: str
) -> None:
    model = build_model(arch, 10, 32)
    found = determinism.nondeterministic_layer(model, CUDA)
    assert (found is None) if cuda_layer is None else (cuda_layer in found)
    assert mps_layer in (determinism.nondeterministic_layer(model, MPS) or "")
    assert determinism.nondeterministic_layer(model, CPU) is None


# ---- device choice -------------------------------------------------------------------------


def _gpu_machine(
    monkeypatch: pytest.MonkeyPatch,
    capability: tuple[int, int] | None,
    arch_list: list[str] | None = None,
    init_warning: str | None = None,
    mps: bool = False,
) -> None:
    """Make torch.cuda answer as a machine with one GPU of `capability` (None: no GPU)."""

    def is_available() -> bool:
        if init_warning:
            warnings.warn(init_warning, UserWarning, stacklevel=1)
        return capability is not None

    monkeypatch.setattr(torch.cuda, "is_available", is_available)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: int(capability is not None))
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "Tesla V100-SXM2")
    monkeypatch.setattr(
        torch.cuda, "get_arch_list", lambda: arch_list or ["sm_75", "sm_80", "sm_86", "sm_90"]
    )
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: mps)


def test_auto_picks_a_supported_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    _gpu_machine(monkeypatch, (8, 9))  # an L4: sm_86 code runs on 8.9
    assert devices.pick_device("auto") == CUDA
    assert devices.pick_device("cuda") == CUDA
    # The tutorial's torch.device("cuda:0"), typed in a notebook: not the CPU without a word.
    for other in ("cuda:0", "gpu"):
        with pytest.raises(DeviceError, match=rf"launch.device '{other}' is none of 'auto'"):
            devices.pick_device(other)


def test_auto_falls_back_to_cpu_on_a_gpu_the_wheel_has_no_kernels_for(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    _gpu_machine(monkeypatch, (7, 0))  # a V100 against the cu132 wheel (sm_75 and newer)
    with caplog.at_level(logging.WARNING):
        assert devices.pick_device("auto") == CPU
    assert "compute capability 7.0" in caplog.text and "CUDA 12.6" in caplog.text
    with pytest.raises(DeviceError, match=r"launch.device = 'cuda'.*sm_70"):
        devices.pick_device("cuda")


def test_auto_says_why_when_the_driver_is_too_old(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    message = (
        "CUDA initialization: The NVIDIA driver on your system is too old (found version 12020)."
    )
    _gpu_machine(monkeypatch, None, init_warning=message)
    monkeypatch.setattr(torch.version, "cuda", "13.2")
    with caplog.at_level(logging.WARNING):
        assert devices.pick_device("auto") == CPU
    assert "too old (found version 12020)" in caplog.text and "driver 580" in caplog.text
    with pytest.raises(DeviceError, match="driver 580"):
        devices.pick_device("cuda")


def test_no_gpu_is_no_warning_and_mps_comes_next(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    _gpu_machine(monkeypatch, None)
    with caplog.at_level(logging.WARNING):
        assert devices.pick_device("auto") == CPU
    assert caplog.text == ""
    with pytest.raises(DeviceError, match="no CUDA GPU is visible"):
        devices.pick_device("cuda")
    _gpu_machine(monkeypatch, None, mps=True)
    assert devices.pick_device("auto") == MPS


def test_auto_picks_an_amd_gpu_on_rocm(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # An MI300X on a ROCm build: torch.cuda drives it, and the arch list names gfx targets.
    _gpu_machine(monkeypatch, (9, 4), arch_list=["gfx900", "gfx906", "gfx90a", "gfx942"])
    monkeypatch.setattr(torch.version, "hip", "6.4.43482")
    monkeypatch.setattr(torch.version, "cuda", None)
    with caplog.at_level(logging.WARNING):
        assert devices.pick_device("auto") == CUDA
    assert caplog.text == ""
    # Skipped on ROCm, not passed: an arch list that would refuse the GPU is not even read.
    monkeypatch.setattr(torch.cuda, "get_arch_list", lambda: ["sm_90"])
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (11, 0))
    assert devices.pick_device("cuda") == CUDA


@pytest.mark.parametrize(
    ("capability", "arch_list", "ok"),
    [
        ((7, 5), ["sm_75", "sm_80"], True),
        ((7, 0), ["sm_75", "sm_80"], False),  # V100 on the cu13 wheels
        ((8, 6), ["sm_80"], True),  # same major, newer minor
        ((8, 0), ["sm_86"], False),  # older minor
        ((9, 0), ["sm_80", "compute_80"], True),  # PTX is compiled for newer GPUs
        ((9, 0), ["sm_80"], False),
        ((10, 0), ["sm_90a"], False),  # arch-specific code runs on that GPU only
        ((9, 0), ["sm_90a"], True),
        ((12, 0), [], True),  # a build that does not say
        ((9, 0), ["gfx90a", "sm_90", "sm_x"], True),  # names of another form are ignored
        ((7, 0), ["sm_75", "gfx942"], False),
        ((9, 4), ["gfx90a", "gfx942"], True),  # none known: the build does not say
    ],
)
def test_arch_list_compatibility(
    capability: tuple[int, int], arch_list: list[str], ok: bool
) -> None:
    assert devices.arch_supported(capability, arch_list) is ok


@pytest.mark.parametrize(
    ("device", "capability", "amp", "expected"),
    [
        (CUDA, (9, 0), True, torch.bfloat16),  # H100: native bf16
        (CUDA, (8, 0), True, torch.bfloat16),
        (CUDA, (7, 5), True, torch.float16),  # T4: bf16 only emulated, fp16 tensor cores
        (CUDA, (7, 0), True, torch.float16),  # V100
        (CUDA, (6, 1), True, None),  # Pascal: no tensor cores
        (CUDA, (9, 0), False, None),
        (MPS, None, True, None),
    ],
)
def test_precision_decision(
    monkeypatch: pytest.MonkeyPatch,
    device: torch.device,
    capability: tuple[int, int] | None,
    amp: bool,
    expected: torch.dtype | None,
) -> None:
    def bf16(including_emulation: bool = True) -> bool:
        # torch counts emulation by default: every CUDA GPU since Maxwell "supports" bf16.
        return including_emulation or capability >= (8, 0)

    monkeypatch.setattr(torch.cuda, "is_bf16_supported", bf16)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
    dtype = precision.autocast_dtype(device, amp)
    assert dtype == expected
    assert precision.needs_grad_scaler(dtype) is (expected == torch.float16)


# ---- several processes ---------------------------------------------------------------------


def test_mps_with_several_processes_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(DeviceError, match=r"MPS.*no distributed backend"):
        distributed.check_processes(2, 2, MPS)
    # And by each rank, should torchrun have been started by hand.
    for name, value in {"RANK": "0", "WORLD_SIZE": "2", "LOCAL_RANK": "0"}.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    monkeypatch.setattr(
        torch.distributed, "init_process_group", lambda **kw: pytest.fail("joined a group")
    )
    with pytest.raises(DeviceError, match="MPS"):
        distributed.init(MPS)


def test_more_processes_than_gpus_is_refused_before_torchrun(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    params = {"data": {"dataset": "imagefolder", "source": "x"}, "launch": {"nproc": 4}}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    monkeypatch.setattr(devices, "pick_device", lambda choice="auto": CUDA)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(distributed, "launch", lambda *a: pytest.fail("torchrun was started"))
    spec = importlib.util.spec_from_file_location("train_stage", ROOT / "stages" / "train.py")
    stage = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(stage)
    with pytest.raises(DeviceError, match=r"launch.nproc = 4 .* only 2 CUDA GPUs"):
        stage.main()
    distributed.check_processes(2, 4, CUDA)  # 2 per machine on 2 machines: fine


def test_sync_batch_norm_under_ddp_on_cuda_only(caplog: pytest.LogCaptureFixture) -> None:
    model = build_model("fast", 10, 32)
    params = list(model.parameters())
    synced = distributed.sync_batch_norm(model, CUDA)
    norms = [m for m in synced.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    assert norms and all(isinstance(m, nn.SyncBatchNorm) for m in norms)
    assert list(synced.parameters()) == params, "the same parameters, for the optimizer"
    assert all(not m.weight.requires_grad for m in norms), "FastNet's frozen BN scale stays frozen"
    with caplog.at_level(logging.WARNING):
        cpu_model = distributed.sync_batch_norm(build_model("fast", 10, 32), CPU)
    assert not any(isinstance(m, nn.SyncBatchNorm) for m in cpu_model.modules())
    assert "each process's shard" in caplog.text
    plain = build_model("tutorial_cnn", 10, 32)  # no BatchNorm: nothing to do or say
    assert distributed.sync_batch_norm(plain, CUDA) is plain


@pytest.mark.parametrize("processes", [1, 2])
def test_the_model_that_trains_under_ddp_on_cuda_has_sync_batch_norm(
    processed32: Path, monkeypatch: pytest.MonkeyPatch, processes: int
) -> None:
    params = tiny_params(FAST_MODEL, **FAST_TRAIN)
    ddp = distributed.Dist(rank=0, world_size=processes)
    with fake_gpu(monkeypatch, FakeGPU()):
        splits = split_tensors.load_training_data(CUDA)
        model = train.build_training_model(params, splits, CUDA, ddp)
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    synced = [isinstance(m, nn.SyncBatchNorm) for m in norms]
    assert norms and synced == [processes > 1] * len(norms)


# ---- resume, memory, evaluation batches ----------------------------------------------------


def test_rng_state_holds_the_training_gpus_and_restores_it_there(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    restored: list[tuple[torch.Tensor, Any]] = []
    monkeypatch.setattr(torch.cuda, "set_rng_state", lambda s, d="cuda": restored.append((s, d)))
    gen = torch.Generator()
    state = {
        "torch": torch.get_rng_state(),
        "gen": gen.get_state(),
        "cuda": torch.full((16,), 1, dtype=torch.uint8),
    }
    determinism.set_rng_state(state, gen, torch.device("cuda", 0))
    assert len(restored) == 1 and int(restored[0][0][0]) == 1
    assert restored[0][1] == torch.device("cuda", 0)
    monkeypatch.setattr(torch.cuda, "get_rng_state", lambda d="cuda": torch.zeros(16))
    assert set(determinism.rng_state(gen, torch.device("cuda", 0))) == {"torch", "gen", "cuda"}
    assert set(determinism.rng_state(gen, CPU)) == {"torch", "gen"}


def test_dataset_stays_on_the_host_when_it_would_crowd_the_gpu(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    images = torch.zeros(2048, 3, 32, 32, dtype=torch.uint8)  # 6 MiB
    monkeypatch.setattr(torch.mps, "recommended_max_memory", lambda: 10 * 2**20)
    monkeypatch.setattr(torch.mps, "driver_allocated_memory", lambda: 2 * 2**20)
    assert split_tensors.resident_device(images, MPS) == CPU  # 6 MiB > half of 8 MiB free
    monkeypatch.setattr(torch.mps, "recommended_max_memory", lambda: 64 * 2**20)
    assert split_tensors.resident_device(images, MPS) == MPS
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda d=None: (4 * 2**20, 80 * 2**30))
    assert split_tensors.resident_device(images, CUDA) == CPU
    assert split_tensors.resident_device(images, CPU) == CPU


def test_evaluation_batches_follow_the_train_batch_and_the_tta_views() -> None:
    seen: list[int] = []

    class Recorder(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.net = tutorial_cnn(3, 16)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            seen.append(len(x))
            return self.net(x)

    images = torch.randint(0, 256, (100, 3, 16, 16), dtype=torch.uint8)
    labels = torch.arange(100) % 3
    for tta, views in ((0, 1), (1, 2), (2, 6)):
        seen.clear()
        model = Classifier(Recorder(), None, tta=tta)
        train.evaluate_split(model, images, labels, CPU, train_batch_size=64)
        assert max(seen) <= 64, (tta, seen)  # what the net sees at once, TTA views included
        assert sum(seen) == 100 * views


def test_a_cpu_scores_in_cache_sized_passes_and_a_gpu_in_training_sized_ones() -> None:
    # fast's batch of 1,024 with 6 TTA views: a GPU takes 170 images (1,020 views) per pass, a
    # CPU 21 (126 views), where larger passes only spill its caches.
    assert inference.eval_batch_size(1024, 6, CUDA) == 170
    assert inference.eval_batch_size(1024, 6, CPU) == 21
    assert inference.eval_batch_size(1024, 1, CPU) == inference.CPU_IMAGES_PER_PASS
    assert inference.eval_batch_size(64, 1, CPU) == 64  # the tutorial's batch is already small
    assert inference.eval_batch_size(64, 6, CUDA) == inference.eval_batch_size(64, 6, CPU) == 10
