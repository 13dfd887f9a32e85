"""Where and how the tensors run: device choice, mixed precision, determinism, batched inference.

Every decision about the hardware is made here, once per run, and passed down as values: the
training loop and evaluation never ask torch.cuda themselves. Each function that looks at a GPU
guards its CUDA- or MPS-only calls by the device type, so the CPU path runs the same code.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import logging
import os
import re
import sys
import warnings
from collections.abc import Iterator
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from visionpipe.models import to_input

log = logging.getLogger(__name__)

GPU_SUPPORT = "README 'GPU support'"
# The newest CUDA driver branch each CUDA major version needs (NVIDIA's minor-version
# compatibility: any 13.x runtime runs on a 580+ driver, any 12.x on a 525+ one).
DRIVER_FOR_CUDA = {"13": "580", "12": "525", "11": "450"}


class DeviceError(RuntimeError):
    """launch.device (or a setting that depends on it) asks for what this machine cannot run."""


def pick_device(choice: str = "auto") -> torch.device:
    """CUDA, then MPS, then CPU; an explicit choice that cannot run here is an error.

    `auto` never picks a GPU this torch build has no kernels for, or whose driver it cannot use:
    it trains on the CPU and logs a warning naming what to install instead.
    """
    if choice in ("auto", "cuda"):
        problem = cuda_problem()
        if problem is None:
            return torch.device("cuda")
        if choice == "cuda":
            raise DeviceError(f"launch.device = 'cuda' but {problem}")
        if problem != NO_CUDA_GPU:
            log.warning("launch.device 'auto': %s. Training on the CPU instead.", problem)
    if choice in ("auto", "mps"):
        if torch.backends.mps.is_available():
            return torch.device("mps")
        if choice == "mps":
            raise DeviceError("launch.device = 'mps' but MPS is not available; use 'auto' or 'cpu'")
    return torch.device("cpu")


NO_CUDA_GPU = "no CUDA GPU is visible; use 'auto' or 'cpu'"


def cuda_problem() -> str | None:
    """Why CUDA cannot be used here (None when it can): no GPU, a driver, or a missing kernel."""
    # torch reports a driver it cannot use only as a warning from its first CUDA query.
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        available = torch.cuda.is_available()
    if not available:
        init = [str(w.message) for w in caught if "CUDA initialization" in str(w.message)]
        if not init:
            return NO_CUDA_GPU
        cuda = torch.version.cuda or "?"
        driver = DRIVER_FOR_CUDA.get(cuda.split(".")[0], "a recent")
        return (
            f"a CUDA GPU driver is present but this torch (built for CUDA {cuda}, which needs "
            f"NVIDIA driver {driver} or newer) cannot use it: {init[0].strip()} Update the "
            f"driver, or install a torch build for an older CUDA ({GPU_SUPPORT})"
        )
    if torch.version.hip:
        # ROCm builds list gfx targets, not compute capabilities: torch skips this check too.
        return None
    arch_list = torch.cuda.get_arch_list()
    for index in range(torch.cuda.device_count()):
        capability = torch.cuda.get_device_capability(index)
        if not arch_supported(capability, arch_list):
            major, minor = capability
            return (
                f"GPU {index} ({torch.cuda.get_device_name(index)}, compute capability "
                f"{major}.{minor}) has no kernels in this torch build (torch "
                f"{torch.__version__}, built for {' '.join(arch_list)}); install a torch build "
                f"for sm_{major}{minor}, e.g. the CUDA 12.6 one ({GPU_SUPPORT})"
            )
    return None


# sm_90, compute_90, sm_90a (that GPU only), sm_100f (its family).
_ARCH = re.compile(r"(sm|compute)_(\d+)([af]?)")


def arch_supported(capability: tuple[int, int], arch_list: list[str]) -> bool:
    """Whether a GPU of `capability` can run a build compiled for `arch_list` (sm_XY, compute_XY).

    NVIDIA's rules: machine code for sm_XY runs on the same major version with the same or a
    higher minor; PTX (compute_XY) is compiled by the driver for any newer GPU. Names of another
    form are ignored; a list with none of these forms (a build that does not say) is trusted.
    """
    known = [m.groups() for m in map(_ARCH.fullmatch, arch_list) if m]
    if not known:
        return True
    major, minor = capability
    device = 10 * major + minor
    for kind, number, suffix in known:
        code = int(number)
        specific = suffix == "a"  # sm_90a: that exact GPU only
        same_family = not specific and code // 10 == major and code <= device
        if kind == "sm" and (code == device or same_family):
            return True
        if kind == "compute" and code <= device:
            return True
    return False


def autocast_dtype(device: torch.device, amp: bool) -> torch.dtype | None:
    """The low precision train steps autocast to, or None for plain fp32.

    bf16 only where the hardware computes it natively (CUDA compute capability 8.0+, CPUs with
    AVX512-BF16 or AMX): emulated bf16 is slower than fp32. Older tensor-core GPUs (T4, V100:
    7.x) get fp16, which needs a GradScaler (`needs_grad_scaler`). MPS stays in fp32.
    """
    if not amp:
        return None
    if device.type == "cuda":
        if torch.cuda.is_bf16_supported(including_emulation=False):
            return torch.bfloat16
        if torch.cuda.get_device_capability(device) >= (7, 0):
            return torch.float16
        return None
    if device.type == "cpu" and cpu_computes_bf16():
        return torch.bfloat16
    return None


def needs_grad_scaler(dtype: torch.dtype | None) -> bool:
    # fp16's narrow range underflows small gradients unless the loss is scaled up first.
    return dtype == torch.float16


def autocast(device: torch.device, dtype: torch.dtype | None) -> torch.autocast:
    return torch.autocast(device.type, dtype=dtype or torch.bfloat16, enabled=dtype is not None)


def cpu_computes_bf16() -> bool:
    """True on CPUs with native bf16 math (AVX512-BF16 or AMX); emulated bf16 is slower."""
    cpu = torch.cpu
    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(getattr(cpu, name, lambda: False)() for name in checks)


def precision_name(dtype: torch.dtype | None) -> str:
    return {torch.bfloat16: "bf16", torch.float16: "fp16"}.get(dtype, "fp32")  # type: ignore[arg-type]


def nondeterministic_layer(model: nn.Module, device: torch.device) -> str | None:
    """The first layer whose backward PyTorch has no deterministic kernel for on `device`.

    From torch.use_deterministic_algorithms' list: on CUDA the adaptive max pool and an adaptive
    average pool to more than 1x1 (1x1 is computed as a mean); on MPS every max pool.
    """
    for name, module in model.named_modules():
        if device.type == "cuda":
            if isinstance(module, nn.AdaptiveMaxPool2d | nn.AdaptiveMaxPool3d | nn.MaxPool3d):
                return f"{name} ({type(module).__name__})"
            if isinstance(module, nn.AdaptiveAvgPool2d) and _size(module.output_size) != (1, 1):
                return f"{name} (AdaptiveAvgPool2d to {module.output_size})"
        if device.type == "mps" and isinstance(module, nn.MaxPool2d | nn.AdaptiveMaxPool2d):
            return f"{name} ({type(module).__name__})"
    return None


def _size(value: Any) -> tuple[Any, Any]:
    return tuple(value) if isinstance(value, tuple | list) else (value, value)  # type: ignore[return-value]


def set_deterministic(model: nn.Module, model_name: str, device: torch.device) -> None:
    """train.deterministic: refuse up front a model that cannot run so, then switch it on."""
    layer = nondeterministic_layer(model, device)
    if layer is not None:
        raise DeviceError(
            f"train.deterministic: true cannot train model '{model_name}' on {device.type}: "
            f"its layer {layer} has no deterministic backward there (see "
            "torch.use_deterministic_algorithms). Set train.deterministic: false, or "
            "launch.device: cpu, or pick a model without that layer"
        )
    if device.type == "cuda":
        # cuBLAS is deterministic only with a fixed workspace; it reads this when it starts.
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(True, warn_only=False)
    torch.backends.cudnn.benchmark = False


def rng_state(gen: torch.Generator, device: torch.device) -> dict[str, Any]:
    """The RNG states a resume restores: torch's, `gen`'s, and the training device's."""
    state: dict[str, Any] = {"torch": torch.get_rng_state(), "gen": gen.get_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    elif device.type == "mps":
        state["mps"] = torch.mps.get_rng_state()
    return state


def set_rng_state(state: dict[str, Any], gen: torch.Generator, device: torch.device) -> None:
    """Restore `rng_state`'s output on this process's device, however many GPUs wrote it."""
    torch.set_rng_state(state["torch"])
    gen.set_state(state["gen"])
    cuda = state.get("cuda")
    if isinstance(cuda, list):  # checkpoints of 0.1.0 hold one state per visible GPU
        cuda = cuda[0] if cuda else None
    if device.type == "cuda" and cuda is not None:
        torch.cuda.set_rng_state(cuda, device)
    if device.type == "mps" and state.get("mps") is not None:
        torch.mps.set_rng_state(state["mps"])


# glibc's mallopt() parameters (malloc.h).
_M_TRIM_THRESHOLD, _M_MMAP_MAX = -1, -4


def keep_freed_memory() -> bool:
    """Have glibc's malloc reuse freed host memory instead of handing it back to the OS.

    By default every block over 32 MiB (a batch's activations at batch 1024) is a fresh mmap,
    whose pages fault in on first touch and are unmapped on free: a quarter of a `fast` train
    step on a 2-core CPU went to faulting in zero pages. With mmap off and the heap never
    trimmed, the memory of one step is reused by the next. Peak memory is the same; it is
    just not returned until the process ends. Values are untouched: results are bit-identical.
    Returns whether it applied (Linux with glibc only).
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # musl and other C libraries have no mallopt
        log.debug("no glibc mallopt: host memory allocation left as it is")
        return False
    return bool(mallopt(_M_MMAP_MAX, 0)) and bool(mallopt(_M_TRIM_THRESHOLD, 2**31 - 1))


def eval_batch_size(train_batch_size: int, views: int) -> int:
    """Images per inference batch: the model then sees at most `train_batch_size` at once
    (test-time augmentation multiplies each image into `views`), under the training memory."""
    return max(1, train_batch_size // views)


@torch.no_grad()
def predict_logits(
    model: nn.Module,
    images: torch.Tensor,
    device: torch.device,
    batch_size: int,
    strict: bool = True,
) -> torch.Tensor:
    """Float32 logits on CPU for uint8 NCHW `images` (any device), in eval mode.

    Always fp32, on every device: the figures then describe the exported fp32 ONNX model, and
    mean the same whatever GPU (or CPU) computed them. `strict=False` lets a GPU use TF32
    (see `strict_fp32`), for figures that need not match the CPU's to the last digits.
    """
    model.eval()
    out = []
    with strict_fp32(device) if strict else contextlib.nullcontext():
        for i in range(0, len(images), batch_size):
            x = images[i : i + batch_size].to(device, non_blocking=True)
            out.append(model(to_input(x, torch.channels_last)).float().cpu())
    return torch.cat(out) if out else torch.empty(0)


@contextlib.contextmanager
def strict_fp32(device: torch.device) -> Iterator[None]:
    """fp32 that is fp32 on a GPU too. cuDNN computes fp32 convolutions in TF32 (a 10-bit
    mantissa) by default on Ampere and newer: a ResNet-18's logits came out ~6e-4 off the CPU's
    on an H100. Training keeps TF32 (PyTorch's default, and fast); scoring does not."""
    if device.type != "cuda":
        yield
        return
    switches = _tf32_switches()
    saved = [getattr(owner, name) for owner, name, _ in switches]
    for owner, name, strict in switches:
        setattr(owner, name, strict)
    try:
        yield
    finally:
        for (owner, name, _), value in zip(switches, saved, strict=True):
            setattr(owner, name, value)


def _tf32_switches() -> list[tuple[Any, str, Any]]:
    """(owner, attribute, strict value) of the settings that let cuDNN convolutions and cuBLAS
    matmuls compute fp32 in TF32. One API only: torch 2.9+ has `fp32_precision` ("tf32" or
    "ieee"), and its legacy `allow_tf32` flags raise when read once the new API has been set."""
    cudnn, matmul = torch.backends.cudnn, torch.backends.cuda.matmul
    if hasattr(cudnn, "conv") and hasattr(matmul, "fp32_precision"):
        return [(cudnn.conv, "fp32_precision", "ieee"), (matmul, "fp32_precision", "ieee")]
    return [(cudnn, "allow_tf32", False), (matmul, "allow_tf32", False)]


def loss_and_accuracy(logits: torch.Tensor, labels: torch.Tensor) -> tuple[float, float]:
    """Mean cross-entropy and top-1 accuracy of CPU float32 `logits` against `labels`."""
    labels = labels.cpu()
    loss = F.cross_entropy(logits, labels).item()
    return loss, (logits.argmax(1) == labels).float().mean().item()


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return device.type
