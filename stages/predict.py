"""Stage predict: classify the per-class samples (and predict.inputs) with the ONNX model."""

import sys

from visionpipe import logs, paths, predict
from visionpipe.config import load_params


def main() -> int:
    cfg = load_params().predict
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
