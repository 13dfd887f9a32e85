"""Stage predict: classify the per-class samples (and predict.inputs) with the ONNX model."""

from visionpipe import logs, paths, predict
from visionpipe.config import load_params


def main() -> int:
    cfg = load_params().predict
    return predict.predict_command(
        [str(paths.SAMPLES_DIR), *cfg.inputs],
        topk=cfg.topk,
        json_path=paths.PREDICTIONS,
        grid_path=paths.PREDICTION_GRID,
        fix="fix or remove them from predict.inputs",
    )


if __name__ == "__main__":
    logs.run_stage(main)
