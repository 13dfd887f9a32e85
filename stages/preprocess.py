"""Stage preprocess: decode every image once into uint8 tensors per split (train/val/test)."""

from visionpipe import logs


def main() -> None:
    # Imported here, inside run_stage: a Ctrl-C while they load is its one line, not a traceback.
    from visionpipe import config, preprocess
    from visionpipe.config.data import DataParams

    preprocess.run(config.load(DataParams))


if __name__ == "__main__":
    logs.run_stage(main)
