"""Opening an exported model with onnxruntime: the one place export and predict both use.

A file that is not a usable visionpipe export (corrupt, truncated, not ONNX, another model's
input, no metadata) raises `ModelFileError`, whose one-line message names the file and what is
wrong with it, instead of onnxruntime's multi-line error.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from visionpipe import fsutil, paths

INPUT_NAME, OUTPUT_NAME = "image", "logits"  # the exported graph's input and output
_REEXPORT = f"re-export it ({paths.rerun('export')}) or pass the model.onnx that stage wrote"


class ModelFileError(ValueError):
    """A model file that cannot be used for prediction; the message names it and says why."""


def _reason(exc: BaseException, path: Path | str = "") -> str:
    """onnxruntime's error on one line, without its prefix that repeats the `path` (which may
    hold "failed:" itself)."""
    text = " ".join(str(exc).split())  # its messages span lines
    named = re.escape(" ".join(str(path).split())) if path else ".*?"
    text = re.sub(
        rf"^\[ONNXRuntimeError\] : \d+ : (\w+) : (Load model from {named} failed: ?)?",
        r"\1: ",
        text,
    )
    # The C++ source line and function it was raised in, before its reason (a build's path:
    # /onnxruntime_src/ on Linux, another on macOS or a conda build): no user's matter.
    text = re.sub(r"\S+\.(?:cc|cpp|cxx|h|hpp):\d+ [^(]*\((?:[^()]|\([^()]*\))*\) ", "", text)
    # A long reason's start and end (opset 99: what is guaranteed ... what is supported).
    return text if len(text) <= 300 else f"{text[:200]} ... {text[-95:]}"


def open_session(path: Path) -> Any:
    """An onnxruntime CPU session for the model file at `path`."""
    import onnxruntime as ort  # here, not at import: the CLI's --help stays instant

    if Path(path).is_dir():
        raise ModelFileError(f"{path}: a folder, not an ONNX model file")
    options = ort.SessionOptions()
    options.log_severity_level = 4  # failures come back as the exception below, not as log lines
    try:
        return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime's own exception classes derive from Exception only
        head = _head(Path(path))
        if _is_torch_file(Path(path), head):  # models/model.pt beside model.onnx: an easy slip
            raise ModelFileError(
                f"{path}: PyTorch's weights file (torch.save), not an ONNX model; pass the ONNX "
                f"export, {paths.ONNX_MODEL} (visionpipe predict reads {paths.MODEL} with "
                "--backend torch)"
            ) from None
        if (kind := _other_kind(head)) is not None:
            # The pipeline's own file overwritten (a download that saved an error page), or
            # `--model dog.png`.
            fix = (
                paths.restore_hint(path)
                if paths.own_model(Path(path))
                else f"--model takes the ONNX export ({paths.ONNX_MODEL})"
            )
            raise ModelFileError(f"{path}: {kind}, not an ONNX model: {fix}") from None
        # What a copy cut short gives: no protobuf onnxruntime can parse, or none (empty).
        cut = re.search(r"INVALID_PROTOBUF|No graph was found", str(exc))
        hint = f"; a copy or download cut short reads so: {paths.restore_hint(path)}" if cut else ""
        raise ModelFileError(
            f"{path}: not a readable ONNX model ({_reason(exc, path)}){hint}"
        ) from None


# The first bytes of the files most often passed as a model by mistake. An ONNX model starts
# with its first field's tag, 0x08 (ir_version), so none of these is one cut short.
_OTHER_KINDS = {
    b"\x89PNG": "a PNG image",
    b"\xff\xd8\xff": "a JPEG image",
    b"GIF8": "a GIF image",
    b"RIFF": "a RIFF file (a WebP image?)",
    b"PK\x03\x04": "a zip archive",
    b"\x1f\x8b": "a gzip archive",
}


def _head(path: Path) -> bytes:
    """The first bytes of the file at `path` (none where it cannot be read)."""
    try:
        with open(path, "rb") as f:
            return f.read(512)
    except OSError:
        return b""


def _other_kind(head: bytes) -> str | None:
    """What a file is by its first bytes `head`, where that is another kind of file than an
    ONNX model (a photo, an archive, text); None where it may be one, damaged."""
    kind = next((k for magic, k in _OTHER_KINDS.items() if head.startswith(magic)), None)
    if kind is None and head[:1] not in (b"", b"\x08") and _text(head):
        kind = "a text file"
    return kind


def _text(head: bytes) -> bool:
    """Whether `head` reads as UTF-8 text (the end may cut a character in two), or starts with
    a byte-order mark (Notepad's UTF-8 or UTF-16)."""
    if head.startswith((b"\xef\xbb\xbf", b"\xff\xfe", b"\xfe\xff")):
        return True
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError as exc:
        if exc.start < len(head) - 3:
            return False
        text = head[: exc.start].decode("utf-8")
    return all(c.isprintable() or c in "\t\r\n" for c in text)


def _is_torch_file(path: Path, head: bytes) -> bool:
    """torch.save's zip archive, whole or cut short (its first member is <name>/data.pkl, which
    the first bytes `head` hold)."""
    if fsutil.torch_zip(fsutil.zip_members(path) or []):
        return True
    return head.startswith(b"PK\x03\x04") and b"/data.pkl" in head[:256]


@dataclass(frozen=True)
class ExportedModel:
    """An onnxruntime session of a visionpipe export, with what its metadata says."""

    session: Any
    classes: list[str]
    image_size: int


def _metadata(session: Any, path: Path) -> tuple[list[str], int]:
    props = session.get_modelmeta().custom_metadata_map
    missing = [key for key in ("classes", "image_size") if key not in props]
    if missing:
        raise ModelFileError(
            f"{path}: an ONNX model without visionpipe metadata ({', '.join(missing)} missing), "
            f"so not an export of this project; {_REEXPORT}"
        )
    try:
        classes = json.loads(props["classes"])
        size = int(props["image_size"])
        if not (isinstance(classes, list) and classes and all(isinstance(c, str) for c in classes)):
            raise ValueError("classes is not a list of names")
    except ValueError as exc:
        raise ModelFileError(
            f"{path}: unreadable visionpipe metadata ({exc}); {_REEXPORT}"
        ) from None
    return classes, size


def _dims(node: Any) -> str:
    return "[" + ", ".join("?" if d is None else str(d) for d in node.shape) + "]"


def open_exported(path: Path) -> ExportedModel:
    """Open a visionpipe ONNX export and check that its graph takes what its metadata says:
    one float32 input [batch, 3, size, size] and logits [batch, classes]."""
    session = open_session(path)
    classes, size = _metadata(session, path)
    inputs, outputs = session.get_inputs(), session.get_outputs()
    want_in = [None, 3, size, size]
    ok_in = (
        len(inputs) == 1
        and inputs[0].type == "tensor(float)"
        and len(inputs[0].shape) == 4
        and all(w is None or d == w for d, w in zip(inputs[0].shape, want_in, strict=True))
    )
    # A symbolic (str) or unknown (None) class dimension cannot be checked before a run.
    out_shape = outputs[0].shape if len(outputs) == 1 else []
    ok_out = len(out_shape) == 2 and (
        not isinstance(out_shape[1], int) or out_shape[1] == len(classes)
    )
    if not (ok_in and ok_out):
        got = ", ".join(f"{n.name} {n.type} {_dims(n)}" for n in [*inputs, *outputs])
        # A float16 conversion that converted the input and output too: its own option keeps them.
        half = any(n.type == "tensor(float16)" for n in [*inputs, *outputs])
        fix = "convert it again with keep_io_types=True" if half else _REEXPORT
        raise ModelFileError(
            f"{path}: its graph ({got}) does not take float [batch, 3, {size}, {size}] images "
            f"to {len(classes)} logits as its metadata says; {fix}"
        )
    return ExportedModel(session, classes, size)
