"""Stage train: fit the model on the preprocessed splits; resumes an interrupted run.

With launch.nproc * launch.nnodes > 1 it hands itself to torchrun, which runs this same script once
per rank (DistributedDataParallel).
"""

from visionpipe import checkpoints, devices, distributed, logs, train
from visionpipe.config.compose import check_against_conf
from visionpipe.config.training import load_training_params


def main() -> None:
    params = load_training_params()
    if not distributed.under_launcher():  # once, not once per rank
        check_against_conf()
    cfg = params.launch
    if distributed.wants_launch(cfg):
        # Checked here, before torchrun starts processes that would each fail.
        device = devices.pick_device(cfg.device)
        distributed.check_processes(cfg.nproc, cfg.nproc * cfg.nnodes, device)
        distributed.launch(cfg, __file__)
    train.run(params)


if __name__ == "__main__":
    logs.run_stage(main, interrupted=checkpoints.after_a_stop)
