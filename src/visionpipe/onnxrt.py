"""Opening an exported model with onnxruntime: the one place export and predict both use."""

from __future__ import annotations

from pathlib import Path
from typing import Any

INPUT_NAME, OUTPUT_NAME = "image", "logits"  # the exported graph's input and output


def open_session(path: Path) -> Any:
    """An onnxruntime CPU session for the model file at `path`."""
    import onnxruntime as ort  # here, not at import: the CLI's --help stays instant

    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
