"""Stage preprocess: decode every image once into uint8 tensors per split (train/val/test)."""

from visionpipe import logs, preprocess
from visionpipe.config import load_params


def main() -> None:
    preprocess.run(load_params())


if __name__ == "__main__":
    logs.run_stage(main)
