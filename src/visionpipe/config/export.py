"""The export section: the ONNX file and its parity check."""

from __future__ import annotations

from pydantic import Field

from visionpipe.config import Section


class ExportConfig(Section):
    # ONNX opset the export is pinned to; torch's exporter writes 18 at the least (asked for 17,
    # it writes 18 without a word).
    opset: int = Field(default=18, ge=18, le=23)
    parity_images: int = Field(default=256, ge=1)  # test images compared with onnxruntime
    # Largest allowed logit difference, times the largest |logit| when that is above 1.
    max_abs_diff: float = Field(default=1e-4, gt=0.0)
    # Write the portable form (visionpipe.portable), which OpenCV DNN also reads; the same file
    # as the default for a model with nothing to rewrite.
    portable: bool = False
