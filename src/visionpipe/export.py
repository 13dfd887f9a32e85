"""ONNX export with the normalization inside the graph, verified against onnxruntime."""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch
from onnx import numpy_helper

from visionpipe import memory, paths, runtimes
from visionpipe.config.export import ExportConfig
from visionpipe.fsutil import atomic_path, remove_stale_temps, write_json
from visionpipe.modelfile import ModelInfo, load_model
from visionpipe.models import to_input
from visionpipe.onnxrt import INPUT_NAME, OUTPUT_NAME, open_session
from visionpipe.portable import portable_model
from visionpipe.split_tensors import load_split

log = logging.getLogger(__name__)


class ParityError(RuntimeError):
    """The ONNX model disagrees with PyTorch beyond the allowed tolerance."""


def export_onnx(
    model: torch.nn.Module, info: ModelInfo, dest: Path, opset: int, source_md5: str | None = None
) -> None:
    """Write `model` as ONNX at `dest`: float RGB [0, 1] NCHW in, logits out, dynamic batch.
    `source_md5`: the MD5 of the model.pt it was exported from, as dvc.lock records it."""
    proto = trace(model.eval(), info, opset)
    metadata = {
        "classes": json.dumps(info.classes, ensure_ascii=False),  # 猫 as Netron shows it
        "image_size": str(info.image_size),
        "input": "float32 RGB in [0, 1], NCHW; any normalization is inside the graph",
        # How predict makes that input of a photo: a client needs no more than this and the size.
        "resize": "upright by EXIF, shorter side to image_size (bilinear), centre square cut out",
        "arch": info.arch,
        "visionpipe_version": info.visionpipe_version,
    }
    if source_md5 is not None:  # which model.pt this is: the two artifacts are versioned apart
        metadata["state_dict_md5"] = source_md5
    for key, value in metadata.items():
        proto.metadata_props.append(onnx.StringStringEntryProto(key=key, value=value))
    # The exporter stamps IR 10 whatever the opset, and onnxruntime before 1.18 refuses IR 10
    # even for an opset it runs: the oldest IR version the opset allows keeps those readers (and
    # opset 23 needs IR 11, which a reader checks before it runs a newer opset).
    proto.ir_version = onnx.helper.find_min_ir_version_for(
        list(proto.opset_import), ignore_unknown=True
    )
    onnx.checker.check_model(proto)
    onnx.save(proto, str(dest))


def trace(model: torch.nn.Module, info: ModelInfo, opset: int) -> onnx.ModelProto:
    """The model's ONNX graph through torch.export (the dynamo exporter), batch left dynamic."""
    size = info.image_size
    example = torch.rand(2, 3, size, size)
    batch = torch.export.Dim("batch", min=1, max=65536)
    program = torch.onnx.export(
        model,
        (example,),
        dynamo=True,
        opset_version=opset,
        input_names=[INPUT_NAME],
        output_names=[OUTPUT_NAME],
        dynamic_shapes=({0: batch},),
        verbose=False,
    )
    proto = program.model_proto
    written = next(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx"))
    if written != opset:
        # A runtime chosen for the opset asked for must not get another one unannounced.
        raise ValueError(
            f"export.opset {opset}: torch's exporter wrote opset {written} instead; "
            f"set export.opset to {written} or higher; nothing was written"
        )
    batch_dim = proto.graph.input[0].type.tensor_type.shape.dim[0]
    if not batch_dim.dim_param:
        # torch.export can specialise a dimension the model's code pins (a reshape to a
        # literal size) without failing; a graph that takes only 2 images is no deployable.
        raise RuntimeError(
            f"the ONNX export fixed the batch size to {batch_dim.dim_value}: some operation in "
            f"model '{info.arch}' ties the output to the example batch; nothing was written"
        )
    _drop_stack_traces(proto.graph)
    _plain_reshapes(proto.graph)
    return proto


def _plain_reshapes(graph: onnx.GraphProto) -> None:
    """Drop `allowzero=1` from the Reshapes whose target shape is a constant holding no 0: the
    attribute only says what a 0 there means, so the model is the same, and converters that
    lack it (onnx2torch: '"allowzero=1" is not implemented') read the file."""
    constants = {init.name: init for init in graph.initializer}
    for node in graph.node:
        shape = constants.get(node.input[1]) if node.op_type == "Reshape" else None
        if shape is None or 0 in numpy_helper.to_array(shape):
            continue
        kept = [a for a in node.attribute if a.name != "allowzero"]
        del node.attribute[:]
        node.attribute.extend(kept)


def _drop_stack_traces(graph: onnx.GraphProto) -> None:
    """Remove the exporter's per-node Python stack traces: they hold this machine's source
    paths, so the same model exported from another clone would hash differently (and ship the
    user's folder names)."""
    for node in graph.node:
        kept = [p for p in node.metadata_props if p.key != "pkg.torch.onnx.stack_trace"]
        del node.metadata_props[:]
        node.metadata_props.extend(kept)
        for attr in node.attribute:
            subgraphs = [*attr.graphs, *([attr.g] if attr.HasField("g") else [])]
            for sub in subgraphs:  # If/Loop bodies
                _drop_stack_traces(sub)


def parity(model: torch.nn.Module, onnx_path: Path, images: torch.Tensor) -> dict[str, Any]:
    """Largest |logit difference| and top-1 agreement of onnxruntime vs PyTorch on `images`."""
    x = to_input(images)
    with torch.no_grad():
        expected = model.eval()(x).numpy()
    got = open_session(onnx_path).run([OUTPUT_NAME], {INPUT_NAME: x.numpy()})[0]
    # A diverged model yields NaN/inf logits; then parity means the same non-finite values in the
    # same places, and the difference is measured over the finite ones.
    finite = np.isfinite(expected)
    same_nonfinite = bool(
        np.array_equal(finite, np.isfinite(got))
        and np.array_equal(got[~finite], expected[~finite], equal_nan=True)
    )
    diff = float(np.abs(got[finite] - expected[finite]).max()) if finite.any() else 0.0
    return {
        "images": len(x),
        "max_abs_logit_diff": diff if same_nonfinite else float("inf"),
        "max_abs_logit": float(np.abs(expected[finite]).max()) if finite.any() else 0.0,
        "top1_agreement": float((got.argmax(1) == expected.argmax(1)).mean()),
        "nonfinite_logits": int((~finite).sum()),
    }


def _export_and_compare(
    model: torch.nn.Module,
    info: ModelInfo,
    dest: Path,
    images: torch.Tensor,
    cfg: ExportConfig,
    source_md5: str | None = None,
) -> dict[str, Any]:
    form = portable_model(model, info.image_size) if cfg.portable else None
    if form is not None and form.rewrites:
        log.info("export.portable: %s", ", ".join(form.rewrites))
    # The parity check compares the file with the model as trained, whichever form was written.
    export_onnx(form.model if form else model, info, dest, cfg.opset, source_md5)
    result = parity(model, dest, images)
    # fp32 keeps about 7 digits: logits in the thousands (a run gone astray) differ by more
    # than 1e-4 however faithful the export, so the tolerance scales with them above 1.
    allowed = cfg.max_abs_diff * max(1.0, result["max_abs_logit"])
    agrees = result["max_abs_logit_diff"] <= allowed and result["top1_agreement"] == 1.0
    result.update({"opset": cfg.opset, "max_abs_diff_allowed": allowed, "agrees": agrees})
    return result


def spread(n: int, k: int) -> torch.Tensor:
    """`min(n, k)` indices evenly spread over `range(n)`, the first and in order."""
    k = min(n, k)
    return torch.arange(k) * n // k


def run(cfg: ExportConfig) -> dict[str, Any]:
    # The parity check's one pass allocates hundreds of MB per layer: reusing freed host memory
    # instead of faulting in fresh pages takes a fifth off it for the `fast` recipe's TTA model.
    memory.keep_freed_memory()
    model, info = load_model(paths.MODEL)
    with open(paths.MODEL, "rb") as f:
        source_md5 = hashlib.file_digest(f, "md5").hexdigest()
    images, _ = load_split("test", in_memory=False)
    # Spread over the split: an image folder's is stored class by class, its first 256 one class.
    images = images[spread(len(images), cfg.parity_images)]
    remove_stale_temps(paths.ONNX_MODEL)  # what an export killed outright left beside it
    # Verify the file before it replaces the published model: a failing export publishes nothing.
    with atomic_path(paths.ONNX_MODEL) as tmp:
        result = _export_and_compare(model, info, tmp, images, cfg, source_md5)
        write_json(paths.EXPORT_METRICS, result)
        allowed = result["max_abs_diff_allowed"]
        if not result["agrees"]:
            raise ParityError(
                f"ONNX disagrees with PyTorch on {result['images']} test images: largest logit "
                f"difference {result['max_abs_logit_diff']:.3g} (allowed {allowed:.3g}: "
                f"export.max_abs_diff {cfg.max_abs_diff:g} x the largest |logit| "
                f"{result['max_abs_logit']:.3g} when above 1), top-1 agreement "
                f"{result['top1_agreement']:.2%} (required 100%). "
                f"Figures in {paths.EXPORT_METRICS}; try another export.opset."
            )
    if result["nonfinite_logits"]:
        log.warning(
            "the model gives %d non-finite logits on %d test images: training diverged "
            "(see metrics/train.json); the export is faithful, the model is not useful",
            result["nonfinite_logits"],
            result["images"],
        )
    log.info(
        "exported %s: max |diff| %.2e, top-1 agreement %.0f%%",
        paths.ONNX_MODEL,
        result["max_abs_logit_diff"],
        100 * result["top1_agreement"],
    )
    runtimes.log_support(paths.ONNX_MODEL, cfg.portable)
    return result
