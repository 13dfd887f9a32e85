"""Stage train: fit the model on the preprocessed splits; resumes an interrupted run.

With train.nproc * train.nnodes > 1 it hands itself to torchrun, which runs this same script once
per rank (DistributedDataParallel).
"""

from visionpipe import distributed, logs, train
from visionpipe.config import load_params


def main() -> None:
    params = load_params()
    if distributed.wants_launch(params.train):
        distributed.launch(params.train, __file__)
    train.run(params)


if __name__ == "__main__":
    logs.run_stage(main)
