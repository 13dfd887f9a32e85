"""Stage preprocess: decode every image once into uint8 tensors per split (train/val/test)."""

from visionpipe import config, logs, preprocess
from visionpipe.config.data import DataParams


def main() -> None:
    preprocess.run(config.load(DataParams))


if __name__ == "__main__":
    logs.run_stage(main)
