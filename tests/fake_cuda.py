"""A pretend CUDA GPU for CPU-only machines, to run the train stage's GPU path in tests.

PyTorch's FakeTensorMode makes tensors on `cuda` without a GPU: they carry shape, dtype and device
but no data, and any operation that mixes CPU and CUDA tensors raises the same "Expected all
tensors to be on the same device" error a real GPU run would. What a fake tensor cannot do is
patched at its boundary, and only there:

- the `torch.cuda` queries a run makes (capability, memory, name, RNG state) answer as a GPU would;
- values read back to the host (`.item()`) are 0.0: fake tensors hold no numbers (and 0.0
  means "no inf found" to the fp16 GradScaler, so its optimizer steps run);
- `backward()` gives every parameter the graph reaches a zero gradient on that parameter's own
  device: autograd's engine needs a real GPU, and it puts each gradient where its tensor is;
- `torch.save` records what would be written instead of writing it;
- TensorBoard's writer records what it is given, and checks it is on the CPU, as a real
  writer needs (it calls `.numpy()`); so does the drawing of misclassified validation images;
- models are built as real CPU modules before they move to the fake GPU, as a real run does.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
import torch
import torch.utils.tensorboard
from torch._subclasses.fake_tensor import FakeTensor, FakeTensorMode, unset_fake_temporarily

from visionpipe import devices, train


@dataclass
class FakeGPU:
    """What a run on the pretend GPU left behind."""

    name: str = "Fake GPU"
    capability: tuple[int, int] = (9, 0)
    saved: list[Any] = field(default_factory=list)  # objects given to torch.save
    images: list[tuple[str, torch.device]] = field(default_factory=list)  # TensorBoard images
    scalars: list[str] = field(default_factory=list)
    models: list[torch.nn.Module] = field(default_factory=list)  # every model built


def _leaves(t: torch.Tensor) -> list[torch.Tensor]:
    seen, todo, found = set(), [t.grad_fn], []
    while todo:
        fn = todo.pop()
        if fn is None or fn in seen:
            continue
        seen.add(fn)
        if hasattr(fn, "variable"):  # AccumulateGrad: a leaf that receives a gradient
            found.append(fn.variable)
        todo += [f for f, _ in fn.next_functions]
    return found


def _cpu_only(value: Any, what: str) -> None:
    if isinstance(value, torch.Tensor):
        assert value.device.type == "cpu", f"{what} got a tensor on {value.device}"


@contextlib.contextmanager
def fake_gpu(monkeypatch: pytest.MonkeyPatch, gpu: FakeGPU) -> Iterator[FakeGPU]:
    """Inside: `train.run` picks `cuda`, and every tensor op runs under FakeTensorMode."""
    _fake_cuda_queries(monkeypatch, gpu)
    _fake_tensor_methods(monkeypatch, gpu)
    monkeypatch.setattr(torch.utils.tensorboard, "SummaryWriter", _writer_class(gpu))

    def misclassified_grid(images: torch.Tensor, labels: torch.Tensor, preds: torch.Tensor, *a):
        for name, t in (("images", images), ("labels", labels), ("preds", preds)):
            _cpu_only(t, f"misclassified_grid {name}")
        return None

    monkeypatch.setattr(train, "misclassified_grid", misclassified_grid)
    real_build = train.build_model

    def build_model(*args: Any, **kwargs: Any) -> torch.nn.Module:
        with unset_fake_temporarily():
            model = real_build(*args, **kwargs)
        gpu.models.append(model)
        return model

    monkeypatch.setattr(train, "build_model", build_model)
    with FakeTensorMode(allow_non_fake_inputs=True):
        yield gpu


def _fake_cuda_queries(monkeypatch: pytest.MonkeyPatch, gpu: FakeGPU) -> None:
    """torch.cuda's answers about a GPU of `gpu.capability` and name, with 80 GiB free."""
    cap = gpu.capability
    monkeypatch.setattr(devices, "pick_device", lambda choice="auto": torch.device("cuda"))
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (80 * 2**30, 80 * 2**30))
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: gpu.name)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: cap)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(
        torch.cuda, "is_bf16_supported", lambda including_emulation=True: cap >= (8, 0)
    )
    monkeypatch.setattr(torch.cuda, "get_rng_state", lambda device="cuda": torch.zeros(16))
    monkeypatch.setattr(torch.cuda, "set_rng_state", lambda state, device="cuda": None)
    # torch.autocast("cuda") switches itself off when it sees no GPU.
    monkeypatch.setattr(torch.cuda.amp.common, "amp_definitely_not_available", lambda: False)


def _fake_tensor_methods(monkeypatch: pytest.MonkeyPatch, gpu: FakeGPU) -> None:
    """`.item()` and `.backward()` of fake tensors (zero values, zero gradients); torch.save
    records what it would write."""
    real_item, real_backward = torch.Tensor.item, torch.Tensor.backward

    def item(self: torch.Tensor) -> Any:
        return 0.0 if isinstance(self, FakeTensor) else real_item(self)

    def backward(self: torch.Tensor, *args: Any, **kwargs: Any) -> None:
        if not isinstance(self, FakeTensor):
            return real_backward(self, *args, **kwargs)
        for leaf in _leaves(self):
            grad = torch.zeros_like(leaf)
            leaf.grad = grad if leaf.grad is None else leaf.grad + grad
        return None

    monkeypatch.setattr(torch.Tensor, "item", item)
    monkeypatch.setattr(torch.Tensor, "backward", backward)
    monkeypatch.setattr(torch, "save", lambda obj, f, *a, **k: gpu.saved.append(obj))


def _writer_class(gpu: FakeGPU) -> type:
    """A SummaryWriter that checks what train logs is on the CPU (images) or a float (scalars)."""

    class Writer:
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            self.file_writer = self  # SummaryWriter's, to which raw summaries (HParams) go

        def add_summary(self, summary: Any, *args: Any, **kwargs: Any) -> None:
            pass

        def add_image(self, tag: str, img: torch.Tensor, *args: Any, **kwargs: Any) -> None:
            _cpu_only(img, f"TensorBoard image {tag}")
            gpu.images.append((tag, img.device))

        def add_scalar(self, tag: str, value: Any, *args: Any, **kwargs: Any) -> None:
            assert isinstance(value, float), f"TensorBoard scalar {tag} is {type(value)}"
            gpu.scalars.append(tag)

        def add_graph(self, model: torch.nn.Module, example: torch.Tensor, **kw: Any) -> None:
            # Tracing runs the model on the example: it must be on the model's device.
            assert example.device == next(model.parameters()).device, example.device

        def flush(self) -> None:
            pass

        def close(self) -> None:
            pass

    return Writer
