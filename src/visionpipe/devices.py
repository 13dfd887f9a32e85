"""Which device a run uses: CUDA, then MPS, then the CPU, and why a GPU cannot be used.

The device is chosen once per run and passed down as a value: nothing else asks torch.cuda
which device to use. Each function that looks at a GPU guards its CUDA- or MPS-only calls by the
device type, so the CPU path runs the same code.
"""

from __future__ import annotations

import logging
import re
import warnings

import torch

log = logging.getLogger(__name__)


GPU_SUPPORT = "docs/gpu.md"


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
    if choice not in ("auto", "cuda", "mps", "cpu"):  # a notebook's "cuda:0" or "gpu"
        raise DeviceError(
            f"launch.device {choice!r} is none of 'auto', 'cuda', 'mps' and 'cpu' (to train on"
            " one GPU of several, choose it with CUDA_VISIBLE_DEVICES=1 and 'cuda')"
        )
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


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return device.type
