"""Convert an ONNX export for one edge runtime and run it on images: bench/edge_runtimes.py's
runner. A script of its own, run in an environment uv builds with that runtime's packages,
because their pins conflict with the project's (onnx2tf pins onnx 1.19 and numpy 1.26) and a
converter or runtime that crashes must become a table cell, not end the bench.

usage: python bench/edge_run.py RUNTIME MODEL.onnx IMAGES.npy LOGITS.npy WORKDIR
RUNTIME is onnxsim, mnn, ncnn, tflite, tract (the batch a symbol, as the file declares it),
tract_fixed (the batch bound to the number of images) or onnx2torch; IMAGES float32 NCHW in
[0, 1]; WORKDIR gets the converted files.
Each runtime computes in fp32 (ARM builds of MNN and ncnn may pick fp16 otherwise); the command
lines are those of docs/deploy.md.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np

# onnx2tf fetches sample images from GitHub to check its conversion unless this file is in its
# working folder; random pixels serve that check as well, and the bench runs offline.
ONNX2TF_SAMPLES = "calibration_image_sample_data_20x128x128x3_float32.npy"


def _tool(name: str, *args: str, cwd: Path | None = None) -> None:
    """Run the environment's command `name`; its last lines of output are the error."""
    proc = subprocess.run([name, *args], cwd=cwd, capture_output=True, text=True)
    if proc.returncode:
        tail = (proc.stdout + proc.stderr).strip().splitlines()[-3:]
        sys.exit(f"{name} exit {proc.returncode}: {'; '.join(tail)}")


def onnxsim(model: Path, images: np.ndarray, work: Path) -> np.ndarray:
    import onnxruntime

    simplified = work / "model.sim.onnx"
    _tool("onnxsim", str(model), str(simplified))
    session = onnxruntime.InferenceSession(simplified, providers=["CPUExecutionProvider"])
    return session.run(None, {"image": images})[0]


def mnn(model: Path, images: np.ndarray, work: Path) -> np.ndarray:
    # The test suite's runner: MNN's own converter, then fp32 without Winograd.
    np.save(work / "images.npy", images)
    shutil.copy(model, work / "model.onnx")
    script = Path(__file__).resolve().parents[1] / "tests" / "mnn_run.py"
    _tool(sys.executable, str(script), "model.onnx", "images.npy", "logits.npy", cwd=work)
    return np.load(work / "logits.npy")


def ncnn(model: Path, images: np.ndarray, work: Path) -> np.ndarray:
    import ncnn as ncnn_

    shutil.copy(model, work / "model.onnx")
    # pnnx needs a fixed input shape (ncnn's blobs have no batch dimension: one image a call),
    # and stores the weights as fp16 unless told otherwise: logits off by 1e-3 relative.
    shape = ",".join(map(str, images.shape[1:]))
    _tool("pnnx", "model.onnx", f"inputshape=[1,{shape}]", "fp16=0", cwd=work)
    net = ncnn_.Net()
    net.opt.use_fp16_packed = net.opt.use_fp16_storage = net.opt.use_fp16_arithmetic = False
    net.opt.use_bf16_storage = False
    # ncnn says on stderr which layer it lacks (one pnnx left as it was: torch.unbind, ...).
    if net.load_param(str(work / "model.ncnn.param")) or net.load_model(
        str(work / "model.ncnn.bin")
    ):
        sys.exit("ncnn cannot load the converted model")
    logits = []
    for image in images:
        extractor = net.create_extractor()
        extractor.input("in0", ncnn_.Mat(np.ascontiguousarray(image)))
        logits.append(np.array(extractor.extract("out0")[1]).reshape(-1))
    return np.stack(logits)


def tflite(model: Path, images: np.ndarray, work: Path) -> np.ndarray:
    from ai_edge_litert.interpreter import Interpreter

    if not (work / ONNX2TF_SAMPLES).exists():
        rng = np.random.default_rng(0)
        np.save(work / ONNX2TF_SAMPLES, rng.random((20, 128, 128, 3), dtype=np.float32))
    # A copy: onnx2tf rewrites the file it is given in place (simplified, its batch fixed).
    shutil.copy(model, work / "model.onnx")
    # A fixed input shape: onnx2tf misreads the normalization's broadcast when the batch is
    # dynamic, and ResNet-18's layout with `-b 1` (which leaves the inner shapes dynamic).
    # `-rtpo Erf`: TFLite has no Erf (the exact GELU's) among its built-in operators; onnx2tf
    # otherwise writes a TensorFlow (Flex) op that the plain interpreter cannot run.
    shape = ",".join(map(str, images.shape[1:]))
    _tool("onnx2tf", "-i", "model.onnx", "-o", "tf", "-ois", f"image:1,{shape}", "-rtpo", "Erf",
          cwd=work)  # fmt: skip
    interpreter = Interpreter(model_path=str(next((work / "tf").glob("*_float32.tflite"))))
    interpreter.allocate_tensors()
    source, sink = interpreter.get_input_details()[0], interpreter.get_output_details()[0]
    logits = []
    for image in images:  # onnx2tf's input is NHWC
        interpreter.set_tensor(source["index"], image.transpose(1, 2, 0)[None])
        interpreter.invoke()
        logits.append(interpreter.get_tensor(sink["index"])[0])
    return np.stack(logits)


def tract(model: Path, images: np.ndarray, work: Path, batch: int | None = None) -> np.ndarray:
    import tract as tract_

    typed = tract_.onnx().load(str(model)).into_model()
    # None: the batch dimension as the file declares it, a symbol. A number is bound to that
    # symbol, not set as the input's shape: set_input_fact(0, "4,3,32,32,f32") fails on every
    # export ("Impossible to unify Sym(batch) with Val(4)"), whose value_info says `batch`.
    if batch is not None:
        typed.transform(tract_.SetSymbols({"batch": batch}))
    return typed.into_runnable().run([images])[0].to_numpy()


def tract_fixed(model: Path, images: np.ndarray, work: Path) -> np.ndarray:
    return tract(model, images, work, batch=len(images))


def onnx2torch(model: Path, images: np.ndarray, work: Path) -> np.ndarray:
    import onnx
    import torch
    from onnx2torch import convert

    try:
        module = convert(onnx.load(str(model))).eval()
    except NotImplementedError as error:  # an operator or attribute it has no converter for
        sys.exit(f"onnx2torch cannot convert: {error}")
    with torch.no_grad():
        return module(torch.from_numpy(images)).numpy()


RUNNERS = {
    "onnxsim": onnxsim,
    "mnn": mnn,
    "ncnn": ncnn,
    "tflite": tflite,
    "tract": tract,
    "tract_fixed": tract_fixed,
    "onnx2torch": onnx2torch,
}


def main() -> None:
    runtime, model, images, logits, work = sys.argv[1:6]
    Path(work).mkdir(parents=True, exist_ok=True)
    np.save(logits, RUNNERS[runtime](Path(model), np.load(images), Path(work)))


if __name__ == "__main__":
    main()
