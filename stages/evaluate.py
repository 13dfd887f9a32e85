"""Stage evaluate: test loss, accuracy, macro-F1, per-class scores and confusion matrix."""

from visionpipe import config, evaluate, logs
from visionpipe.config.evaluate import EvaluateConfig
from visionpipe.config.launch import LaunchConfig
from visionpipe.config.train import TrainConfig


def main() -> None:
    device = config.load_section("launch", LaunchConfig).device
    batch_size = config.load_section("train", TrainConfig).batch_size
    evaluate.run(device, batch_size, config.load_section("evaluate", EvaluateConfig).amp)


if __name__ == "__main__":
    logs.run_stage(main)
