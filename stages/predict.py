"""Stage predict: classify the per-class samples (and predict.inputs) with the ONNX model."""

from visionpipe import logs


def main() -> int:
    # Imported here, inside run_stage: a Ctrl-C while they load is its one line, not a traceback.
    from visionpipe import config, paths, predict
    from visionpipe.config.predict import PredictConfig

    cfg = config.load_section("predict", PredictConfig)
    return predict.predict_command(
        cfg.inputs,
        topk=cfg.topk,
        json_path=paths.PREDICTIONS,
        grid_path=paths.PREDICTION_GRID,
        fix="fix or remove each from predict.inputs"
        + (", or set predict.on_bad_image: skip" if cfg.on_bad_image == "fail" else ""),
        # One test image per class, named NN_<class>.png in one folder: no class folder.
        unscored=[str(paths.SAMPLES_DIR)],
        skip_bad="predict.on_bad_image: skip" if cfg.on_bad_image == "skip" else None,
    )


if __name__ == "__main__":
    logs.run_stage(main)
