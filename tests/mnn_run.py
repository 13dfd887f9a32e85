"""Convert an ONNX model to MNN and run it: a script of its own, because MNN's converted model
can crash (SIGSEGV), and a runtime that crashes must fail a test, not kill pytest's process.

usage: python tests/mnn_run.py MODEL.onnx IMAGES.npy LOGITS.npy
It writes MODEL.mnn beside the model, needs only numpy and MNN, and prints MNN's version last.
"""

import sys
from pathlib import Path

import MNN
import MNN.expr as F
import numpy as np


def main() -> None:
    model, images, logits = sys.argv[1:4]
    converted = model.removesuffix(".onnx") + ".mnn"
    # The wheel's converter itself (`_tools`, loaded by `import MNN`), not its `mnnconvert`
    # command, which also pip-installs aliyun-log-python-sdk and sends a usage record.
    import _tools

    args = ["-f", "ONNX", "--modelFile", model, "--MNNModel", converted, "--bizCode", "test"]
    Path(converted).unlink(missing_ok=True)
    _tools.mnnconvert(["mnnconvert", *args])  # True even when it fails: the file tells
    if not Path(converted).is_file():
        sys.exit(f"MNNConvert wrote no {converted}")
    # "high": fp32 on every CPU (ARM builds compute in fp16 at "low"). Hint 3 is
    # WINOGRAD_MEMORY_LEVEL: at 0 no Winograd, whose 5x5 convolutions (the tutorial CNN's) are
    # 5e-4 off, over the parity rule.
    config = {"backend": "CPU", "precision": "high", "numThread": 1}
    runtime = MNN.nn.create_runtime_manager((config,))
    runtime.set_hint(3, 0)
    net = MNN.nn.load_module_from_file(converted, ["image"], ["logits"], runtime_manager=runtime)
    x = np.load(images)
    np.save(logits, np.array(net.forward(F.const(x, list(x.shape), F.NCHW)).read()))
    print(MNN.version())


if __name__ == "__main__":
    main()
