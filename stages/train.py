"""Stage train: fit the model on the preprocessed splits; resumes an interrupted run."""

from visionpipe import logs, train
from visionpipe.config import load_params


def main() -> None:
    logs.setup()
    train.run(load_params())


if __name__ == "__main__":
    main()
