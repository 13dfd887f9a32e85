"""The evaluate section: how the evaluate stage computes the test scores."""

from __future__ import annotations

from visionpipe.config import Section


class EvaluateConfig(Section):
    # Score in the mixed precision that train.amp would pick on this device (bf16 on CUDA 8.0+
    # and on CPUs with AMX or AMD's AVX512-BF16, fp16 on 7.x GPUs; fp32 elsewhere): about twice
    # as fast, with figures a little off those of the exported fp32 model. false: strict fp32.
    amp: bool = False
