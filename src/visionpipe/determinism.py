"""Reproducible runs: deterministic kernels where asked for, and the RNG states a resume
restores."""

from __future__ import annotations

import os
from typing import Any

import torch
from torch import nn

from visionpipe.devices import DeviceError


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
    """Restore `rng_state`'s output on this process's device (under DDP, rank 0's on every
    rank)."""
    torch.set_rng_state(state["torch"])
    gen.set_state(state["gen"])
    if device.type == "cuda" and state.get("cuda") is not None:
        torch.cuda.set_rng_state(state["cuda"], device)
    if device.type == "mps" and state.get("mps") is not None:
        torch.mps.set_rng_state(state["mps"])
