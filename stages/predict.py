"""Stage predict: classify the per-class samples (and predict.inputs) with the ONNX model."""

import sys

from visionpipe import config, logs, paths, predict
from visionpipe.config.predict import PredictConfig


def main() -> int:
    cfg = config.load_section("predict", PredictConfig)
    backend = predict.OnnxBackend(paths.ONNX_MODEL)
    preds = predict.run(
        [str(paths.SAMPLES_DIR), *cfg.inputs],
        backend,
        cfg.topk,
        json_path=paths.PREDICTIONS,
        grid_path=paths.PREDICTION_GRID,
    )
    failed = predict.failures(preds)
    if failed:
        print(f"{failed} inputs failed; fix or remove them from predict.inputs", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    logs.run_stage(main)
