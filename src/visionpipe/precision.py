"""Which floating-point precision the tensors run in: autocast for training steps, strict fp32 for
scores."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from typing import Any

import torch


def autocast_dtype(device: torch.device, amp: bool) -> torch.dtype | None:
    """The low precision train steps autocast to, or None for plain fp32.

    bf16 only where it is faster than fp32 (CUDA compute capability 8.0+, the CPUs of
    `cpu_computes_bf16`): emulated bf16 is slower. Older tensor-core GPUs (T4, V100:
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


def autocast(device: torch.device, dtype: torch.dtype | None, cache: bool = True) -> torch.autocast:
    """`cache=False` under CUDA graph capture: a cached cast of a weight would not follow it."""
    return torch.autocast(
        device.type, dtype=dtype or torch.bfloat16, enabled=dtype is not None, cache_enabled=cache
    )


# oneDNN ISA caps (ONEDNN_MAX_CPU_ISA) without bf16 instructions: under one, oneDNN emulates bf16
# whatever the CPU has (an AVX512-BF16 CPU capped to AVX2 ran the tutorial CNN's train steps
# 12-16x slower in bf16 than in fp32). The caps in the second list keep bf16 but not AMX.
ONEDNN_ISAS_WITHOUT_BF16 = (
    "SSE41",
    "AVX",
    "AVX2",
    "AVX2_VNNI",
    "AVX2_VNNI_2",
    "AVX512_CORE",
    "AVX512_CORE_VNNI",
)
ONEDNN_ISAS_WITHOUT_AMX = ("AVX512_CORE_BF16", "AVX512_CORE_FP16", "AVX10_1_512")


def cpu_computes_bf16() -> bool:
    """True on CPUs where bf16 autocast is faster than fp32 (bench/cpu_bf16.py): those with AMX,
    and AMD's with AVX512-BF16 (Zen 4 on: 0.5x fp32's time to score `fast`). Intel's AVX512-BF16
    without AMX (Cooper Lake, and Sapphire Rapids class VMs whose hypervisor hides AMX) ran the
    tutorial's train loop 1.67x and `fast`'s scoring 1.3x slower than fp32 (only `fast`'s large
    train step 10% faster); emulated bf16 is slower still."""
    cap = os.environ.get("ONEDNN_MAX_CPU_ISA") or os.environ.get("DNNL_MAX_CPU_ISA") or ""
    cap = cap.strip().upper()
    if cap in ONEDNN_ISAS_WITHOUT_BF16:
        return False
    cpu = torch.cpu
    amx = getattr(cpu, "_is_amx_tile_supported", lambda: False)()
    if amx and cap not in ONEDNN_ISAS_WITHOUT_AMX:
        return True
    avx512_bf16 = getattr(cpu, "_is_avx512_bf16_supported", lambda: False)()
    return bool(avx512_bf16) and cpu_vendor() == "AuthenticAMD"


def cpu_vendor() -> str:
    """The CPU's vendor id (GenuineIntel, AuthenticAMD) from /proc/cpuinfo; "" where there is
    none (macOS, whose x86 CPUs have no AVX512-BF16)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.startswith("vendor_id"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return ""


def precision_name(dtype: torch.dtype | None) -> str:
    return {torch.bfloat16: "bf16", torch.float16: "fp16"}.get(dtype, "fp32")  # type: ignore[arg-type]


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
