"""Reuse an architecture's traced ONNX graph: in an lr sweep, exports differ only in weights.

Tracing a model with torch.export and translating it to ONNX costs the export stage about 8 s on
a 2-core CPU, most of it importing torch._dynamo and onnxscript. The graph depends on the model's
structure, not on its weights, so the first export of an architecture stores its graph here
(weights left out), and later exports of the same structure fill in the new weights instead of
tracing again.

A graph is stored only after a proof that filling it in equals a fresh trace byte for byte: a
copy of the model with every weight changed is traced too, and its export must come out exactly
as the stored graph filled with the changed weights. A structure whose graph holds a weight
transformed (the exporter folds each eval-mode BatchNorm into the conv before it, keeping the
conv weight's name) or depends on weight values fails that proof and is traced every time: here
resnet18, fast and the tutorial CNN with BatchNorm; the tutorial CNN, alexnet and vgg16 are
filled in. The export stage's parity check against onnxruntime runs either way.
"""

from __future__ import annotations

import copy
import hashlib
import inspect
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import onnx
import torch
from google.protobuf.message import DecodeError
from onnx import numpy_helper

from visionpipe.fsutil import atomic_path

Trace = Callable[[torch.nn.Module], onnx.ModelProto]


def cache_dir() -> Path:
    """Per user, outside the project: queued experiments run in temporary copies of it."""
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "visionpipe" / "onnx-graphs"


def graph_key(model: torch.nn.Module, meta: dict[str, Any], opset: int) -> str:
    """Everything a traced graph depends on but the weights' values."""
    from visionpipe import export, models

    structure = {
        "meta": {k: meta.get(k) for k in ("arch", "arch_params", "num_classes", "image_size")},
        "normalize": meta.get("normalize"),
        "opset": opset,
        "versions": [torch.__version__, onnx.__version__, _version("onnxscript")],
        "code": [_source_hash(models), _source_hash(export)],
        "module": repr(model),
        "state": [(k, list(v.shape), str(v.dtype)) for k, v in model.state_dict().items()],
    }
    return hashlib.sha256(json.dumps(structure, sort_keys=True).encode()).hexdigest()[:32]


def export(model: torch.nn.Module, key: str, trace: Trace) -> onnx.ModelProto:
    """`trace(model)`, or the stored graph of `key` filled with `model`'s weights."""
    path = cache_dir() / f"{key}.onnx"
    if path.is_file():
        try:
            return fill(onnx.load(str(path)), model)
        except (OSError, ValueError, DecodeError):
            pass  # a damaged cache file: trace again and store a good one
    proto = trace(model)
    if _fill_equals_trace(proto, model, trace):
        _store(path, proto, model)
    return proto


def forget(key: str) -> bool:
    """Remove the stored graph of `key`; whether there was one."""
    path = cache_dir() / f"{key}.onnx"
    try:
        path.unlink()
    except OSError:
        return False
    return True


def fill(template: onnx.ModelProto, model: torch.nn.Module) -> onnx.ModelProto:
    """The template with every initializer named like a state_dict tensor set to that tensor."""
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    proto = copy.deepcopy(template)
    for i, init in enumerate(proto.graph.initializer):
        if init.name in state:
            tensor = numpy_helper.from_array(state[init.name].numpy(), init.name)
            proto.graph.initializer[i].CopyFrom(tensor)
    return proto


def _fill_equals_trace(proto: onnx.ModelProto, model: torch.nn.Module, trace: Trace) -> bool:
    changed = copy.deepcopy(model)
    with torch.no_grad():
        for i, tensor in enumerate(changed.state_dict().values()):
            if tensor.is_floating_point():
                tensor.add_(0.001 * (i + 1))
    return trace(changed).SerializeToString() == fill(proto, changed).SerializeToString()


def _store(path: Path, proto: onnx.ModelProto, model: torch.nn.Module) -> None:
    """The graph without the weights' bytes (`fill` puts them back)."""
    template = copy.deepcopy(proto)
    names = set(model.state_dict())
    for init in template.graph.initializer:
        if init.name in names:
            init.ClearField("raw_data")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(path) as tmp:
            onnx.save(template, str(tmp))
    except OSError:  # a read-only home: every export then traces, which is only slower
        pass


def _source_hash(module: Any) -> str:
    return hashlib.sha256(inspect.getsource(module).encode()).hexdigest()


def _version(package: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(package)
    except PackageNotFoundError:
        return "absent"
