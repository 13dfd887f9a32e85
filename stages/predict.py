"""Stage predict: classify the per-class samples (and predict.inputs) with the ONNX model."""

import sys

from visionpipe import logs, paths, predict
from visionpipe.config import load_params


def main() -> int:
    cfg = load_params().predict
    backend = predict.OnnxBackend(paths.ONNX_MODEL)
    files, errors = predict.collect_inputs([str(paths.SAMPLES_DIR), *cfg.inputs])
    preds = errors + predict.predict_files(files, backend, cfg.topk)
    predict.write_json(paths.PREDICTIONS, preds)
    predict.write_grid(paths.PREDICTION_GRID, preds)
    print(predict.format_table(preds))
    failed = [p for p in preds if p.error]
    if failed:
        print(
            f"{len(failed)} inputs failed; fix or remove them from predict.inputs", file=sys.stderr
        )
        return 1
    return 0


if __name__ == "__main__":
    logs.run_stage(main)
