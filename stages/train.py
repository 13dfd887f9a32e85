"""Stage train: fit the model on the preprocessed splits; resumes an interrupted run.

With launch.nproc * launch.nnodes > 1 it hands itself to torchrun, which runs this same script once
per rank (DistributedDataParallel).
"""

from visionpipe import distributed, logs, runtime, train
from visionpipe.config import load_params


def main() -> None:
    params = load_params()
    cfg = params.launch
    if distributed.wants_launch(cfg):
        # Checked here, before torchrun starts processes that would each fail.
        device = runtime.pick_device(cfg.device)
        distributed.check_processes(cfg.nproc, cfg.nproc * cfg.nnodes, device)
        distributed.launch(cfg, __file__)
    train.run(params)


if __name__ == "__main__":
    logs.run_stage(main)
