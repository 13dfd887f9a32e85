"""Stage evaluate: test loss, accuracy, macro-F1, per-class scores and confusion matrix."""

from visionpipe import evaluate, logs
from visionpipe.config import load_params


def main() -> None:
    params = load_params()
    evaluate.run(params.launch.device, params.train.batch_size)


if __name__ == "__main__":
    logs.run_stage(main)
