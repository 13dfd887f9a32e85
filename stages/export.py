"""Stage export: ONNX model checked against onnxruntime on real test images."""

from visionpipe import export, logs
from visionpipe.config import load_params


def main() -> None:
    export.run(load_params().export)


if __name__ == "__main__":
    logs.run_stage(main)
