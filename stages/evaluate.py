"""Stage evaluate: test loss, accuracy, macro-F1, per-class scores and confusion matrix."""

from visionpipe import config, evaluate, logs
from visionpipe.config.launch import LaunchConfig
from visionpipe.config.train import TrainConfig


def main() -> None:
    device = config.load_section("launch", LaunchConfig).device
    evaluate.run(device, config.load_section("train", TrainConfig).batch_size)


if __name__ == "__main__":
    logs.run_stage(main)
