"""Stage export: ONNX model checked against onnxruntime on real test images."""

from visionpipe import config, export, logs
from visionpipe.config.export import ExportConfig


def main() -> None:
    export.run(config.load_section("export", ExportConfig))


if __name__ == "__main__":
    logs.run_stage(main)
