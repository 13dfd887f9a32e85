"""Stage train: fit the model on the preprocessed splits; resumes an interrupted run.

With launch.nproc * launch.nnodes > 1 it hands itself to torchrun, which runs this same script once
per rank (DistributedDataParallel).
"""

from pathlib import Path

from visionpipe import devices, distributed, logs, train
from visionpipe.config.compose import warn_drift, warn_dropped_baseline
from visionpipe.config.params import load_params


def main() -> None:
    params = load_params()
    if not distributed.under_launcher():  # once, not once per rank
        warn_drift()
        warn_dropped_baseline()
    cfg = params.launch
    if distributed.wants_launch(cfg):
        # Checked here, before torchrun starts processes that would each fail.
        device = devices.pick_device(cfg.device)
        distributed.check_processes(cfg.nproc, cfg.nproc * cfg.nnodes, device)
        distributed.launch(cfg, __file__)
    train.run(params)


def _after_a_stop() -> str:
    """What a stopped run leaves to do. `dvc exp run --queue` and `--temp` train in a temporary
    copy of the project (.dvc/tmp/exps/<name>) that DVC deletes afterwards, checkpoint and all."""
    if Path.cwd().parent.parts[-3:] == (".dvc", "tmp", "exps"):
        return (
            "this run trained in DVC's temporary copy of the project (`dvc exp run --queue` or "
            "`--temp`), which DVC deletes with the checkpoint, so running the experiment again "
            "starts over (a plain `dvc exp run` trains in the project, where a stopped run "
            "resumes from its last complete epoch)"
        )
    return "the next `uv run dvc repro` resumes from the last complete epoch"


if __name__ == "__main__":
    logs.run_stage(main, interrupted=_after_a_stop())
