"""Stage evaluate: test loss, accuracy, per-class accuracy and confusion matrix."""

from visionpipe import evaluate, logs
from visionpipe.config import load_params


def main() -> None:
    evaluate.run(load_params().train.device)


if __name__ == "__main__":
    logs.run_stage(main)
