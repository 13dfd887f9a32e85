"""Training: reproducibility, resume after a kill, batched augmentation, schedules, models."""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch
import yaml

from tests.datasets import FAST_MODEL, FAST_TRAIN, kill_at_validation, tiny_params, train_anew
from tests.helpers import ROOT, env
from visionpipe import (
    batches,
    checkpoints,
    distributed,
    fsutil,
    logs,
    memory,
    optim,
    paths,
    precision,
    progress,
    train,
)
from visionpipe.config.params import parse_params
from visionpipe.config.train import TrainConfig
from visionpipe.modelfile import ModelInfo, load_model, save_model
from visionpipe.models import (
    MODELS,
    Classifier,
    ModelSpec,
    WeightsError,
    build_model,
    init_whitening,
    tutorial_cnn,
)
from visionpipe.tracking import EpochRecord
from visionpipe.weights import classifier_name


def _weights() -> dict[str, torch.Tensor]:
    return torch.load(paths.MODEL, weights_only=True)["state_dict"]


def test_two_cpu_runs_give_bit_identical_weights(processed: Path) -> None:
    params = tiny_params(augment={"crop_padding": 2, "flip": True}, momentum=0.9)
    train.run(params)
    first = _weights()
    train_anew(params)
    second = _weights()
    assert first.keys() == second.keys()
    assert all(torch.equal(first[k], second[k]) for k in first)
    # And the run learned something from the learnable tiny data.
    metrics = (processed / paths.TRAIN_METRICS).read_text()
    assert '"val_accuracy"' in metrics


def test_ctrl_c_is_one_line_that_says_what_comes_next(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # The docs send users to Ctrl-C and `dvc repro` to pause a run: no traceback for that.
    monkeypatch.delenv("VISIONPIPE_DEBUG", raising=False)

    def stage() -> None:
        raise KeyboardInterrupt

    with pytest.raises(SystemExit) as stopped:
        logs.run_stage(stage, interrupted=lambda: "the next `uv run dvc repro` resumes")
    assert stopped.value.code == 130  # the shell's code for SIGINT
    assert "interrupted (Ctrl-C); the next `uv run dvc repro` resumes" in caplog.text


@pytest.mark.parametrize(("local_rank", "said"), [("0", True), ("1", False)])
def test_ctrl_c_under_torchrun_is_said_by_local_rank_0_only(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, local_rank: str, said: bool
) -> None:
    # torchrun hands Ctrl-C to every rank; one line per machine, not one per process.
    monkeypatch.delenv("VISIONPIPE_DEBUG", raising=False)
    monkeypatch.setenv("LOCAL_RANK", local_rank)

    def stage() -> None:
        raise KeyboardInterrupt

    with pytest.raises(SystemExit) as stopped:
        logs.run_stage(stage, interrupted=lambda: "the next `uv run dvc repro` resumes")
    assert stopped.value.code == 130
    assert ("interrupted (Ctrl-C)" in caplog.text) is said


def test_ctrl_c_during_a_save_is_one_line_too(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # torch.save, stopped mid-write, reports the KeyboardInterrupt only as the context of a
    # RuntimeError about zip positions: the stop must still read as one.
    monkeypatch.delenv("VISIONPIPE_DEBUG", raising=False)

    class Stopping(io.FileIO):
        def write(self, b: Any) -> int:
            if self.tell() > 1000:
                raise KeyboardInterrupt
            return super().write(b)

    monkeypatch.setattr(fsutil, "open", lambda file, *_, **__: Stopping(file, "w"), raising=False)

    def stage() -> None:
        fsutil.save_torch(tmp_path / "last.pt", {"w": torch.zeros(10_000)})

    with pytest.raises(SystemExit) as stopped:
        logs.run_stage(stage, interrupted=lambda: "the next `uv run dvc repro` resumes")
    assert stopped.value.code == 130
    assert "interrupted (Ctrl-C); the next `uv run dvc repro` resumes" in caplog.text
    assert list(tmp_path.iterdir()) == []


def test_sigterm_stops_a_stage_in_one_line_and_leaves_no_temporary_file(tmp_path: Path) -> None:
    # A batch scheduler's time limit or a cancelled CI job sends SIGTERM, maybe mid-save:
    # Python's default handler would end the process there, leaving `.last.pt.<random>.tmp`.
    script = f"""
import os, signal
from visionpipe import fsutil, logs

def stage():
    with fsutil.atomic_open({str(tmp_path / "last.pt")!r}, "wb") as f:
        f.write(b"half a checkpoint")
        os.kill(os.getpid(), signal.SIGTERM)
        f.write(b"the rest")

logs.run_stage(stage, interrupted=lambda: "the next `uv run dvc repro` resumes")
"""
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[2] / "src")}
    env.pop("VISIONPIPE_DEBUG", None)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env)
    assert done.returncode == 143, done.stderr  # 128 + SIGTERM, as a shell reports it
    assert "stopped by SIGTERM; the next `uv run dvc repro` resumes" in done.stderr
    assert "Traceback" not in done.stderr
    assert list(tmp_path.iterdir()) == [], "the half-written temporary file must go"


def test_params_changed_by_another_run_stop_training_after_the_epoch_keeping_its_checkpoint(
    processed: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A second `dvc exp run -S` in the workspace rewrote params.yaml after this stage read it.
    Path("params.yaml").write_text("train:\n  lr: 0.09\n")
    monkeypatch.setattr(logs, "_params_at_start", b"train:\n  lr: 0.08\n")
    with pytest.raises(logs.ParamsChangedError) as err:
        train.run(tiny_params(epochs=3))
    assert "the checkpoint after epoch 1 is kept: once the other run is done, put this run's" in (
        str(err.value)
    )
    assert checkpoints.CHECKPOINT.is_file() and not paths.MODEL.exists()
    monkeypatch.setattr(logs, "_params_at_start", None)  # the same command, once alone
    train.run(tiny_params(epochs=3))
    assert paths.MODEL.is_file() and checkpoints.FINISHED.is_file()


def test_a_finished_run_is_kept_until_dvc_lock_records_its_model(
    processed: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # Stopped while DVC hashes and caches the outputs (seconds for a large model), the run is
    # not recorded: the next one writes its outputs again from the checkpoint, training nothing.
    # Once dvc.lock holds its model, the next run (`dvc repro -f`) trains anew.
    train.run(tiny_params(epochs=2))
    model = paths.MODEL.read_bytes()
    paths.MODEL.unlink()  # DVC removes a stage's outputs before it runs the stage
    with caplog.at_level("INFO"):
        train.run(tiny_params(epochs=2))
    assert "after epoch 2 of 2" in caplog.text and "epoch 1/2" not in caplog.text
    assert "dvc.lock does not record its model (stopped while DVC recorded it, or" in caplog.text
    assert paths.MODEL.read_bytes() == model
    # Still unrecorded, a run of other params sets it aside, and the first params get it back.
    caplog.clear()
    with caplog.at_level("INFO"):
        train.run(tiny_params(epochs=1, lr=0.05))
        assert "saved after its epoch 2, its last: set aside" in caplog.text
        caplog.clear()
        paths.MODEL.unlink()
        train.run(tiny_params(epochs=2))
    assert "resuming the checkpoint set aside" in caplog.text and "epoch 1/2" not in caplog.text
    # Set aside and back, it is still the finished run it was (`dvc repro -f` of it, its model
    # gone from the cache, writes the outputs again): said so, with how to train anew.
    assert "dvc.lock does not record its model (stopped while DVC recorded it, or" in caplog.text
    assert paths.MODEL.read_bytes() == model
    md5 = hashlib.md5(model).hexdigest()
    lock = {"stages": {"train": {"outs": [{"path": "models/model.pt", "hash": "md5", "md5": md5}]}}}
    paths.DVC_LOCK.write_text(yaml.safe_dump(lock))
    caplog.clear()
    with caplog.at_level("INFO"):
        train.run(tiny_params(epochs=2))
    assert "resuming" not in caplog.text and "epoch 1/2" in caplog.text, caplog.text
    assert paths.MODEL.read_bytes() == model  # trained anew, to the same weights


def test_a_finished_run_dvc_recorded_is_removed_not_set_aside(
    processed: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # After another experiment, `dvc exp apply` or a run-cache restore, dvc.lock records another
    # run's model while checkpoints/ still holds a finished run's that DVC recorded: DVC
    # restores its outputs itself, and that run's `dvc repro -f` must train anew. A run stopped
    # after DVC cached its model but before it wrote the run-cache entry is not recorded: set
    # aside, it is resumed (its outputs written again) as before.
    from dvc.repo import Repo

    Repo.init(no_scm=True).close()
    first, other = tiny_params(epochs=2), tiny_params(epochs=1, lr=0.05)
    train.run(first)
    model = paths.MODEL.read_bytes()
    md5 = hashlib.md5(model).hexdigest()
    cache = processed / ".dvc" / "cache"
    cached = cache / "files" / "md5" / md5[:2] / md5[2:]
    cached.parent.mkdir(parents=True)
    shutil.copyfile(paths.MODEL, cached)  # as DVC commits a stage's output, before its entry
    with caplog.at_level("INFO"):
        train.run(other)
    assert "saved after its epoch 2, its last: set aside" in caplog.text, caplog.text
    caplog.clear()
    with caplog.at_level("INFO"):
        train.run(first)  # the set-aside run comes back, writing its outputs again
    assert "resuming the checkpoint set aside" in caplog.text and "epoch 1/2" not in caplog.text
    entry = cache / "runs" / "ab" / ("ab" + "0" * 62) / ("cd" + "0" * 62)
    entry.parent.mkdir(parents=True)  # DVC's run-cache entry for the train stage's run
    entry.write_text(f"outs:\n- path: models/model.pt\n  hash: md5\n  md5: {md5}\n")
    caplog.clear()
    with caplog.at_level("INFO"):
        train.run(other)  # resumes its own, set aside above
    assert "saved after its epoch 2: set aside" not in caplog.text, caplog.text
    assert f"removed {checkpoints.CHECKPOINT}, a finished run's that DVC recorded" in caplog.text
    assert sorted(p.name for p in paths.CHECKPOINT_DIR.iterdir()) == ["finished.json", "last.pt"]
    caplog.clear()
    paths.MODEL.unlink()
    with caplog.at_level("INFO"):
        train.run(first)
    assert "resuming" not in caplog.text and "epoch 1/2" in caplog.text, caplog.text
    assert paths.MODEL.read_bytes() == model  # trained anew, to the same weights


def test_a_run_stopped_in_a_notebook_s_kernel_closes_its_tensorboard_log(
    processed: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Ctrl-C on a cell running train.run: the kernel lives on, and so would the writer's thread,
    # one more per stop, with the run's last events unwritten.
    import threading

    def writers() -> int:
        return sum(type(t).__name__ == "_AsyncWriterThread" for t in threading.enumerate())

    before = writers()
    kill_at_validation(monkeypatch, 2)
    with pytest.raises(KeyboardInterrupt):
        train.run(tiny_params(epochs=3))
    assert writers() == before


def test_a_stop_says_what_resumes_it_where_it_ran(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("DVC_EXP_NAME", raising=False)
    # Stopped in its first epoch, or its first save failed (a full disk): nothing resumes.
    assert checkpoints.after_a_stop() == (
        "no epoch of this run is checkpointed in checkpoints/, so the next run starts over"
    )
    checkpoints.CHECKPOINT.parent.mkdir()
    checkpoints.CHECKPOINT.write_bytes(b"an epoch")
    monkeypatch.setattr(checkpoints, "_resumable", True)
    assert checkpoints.after_a_stop() == (
        "the next `uv run dvc repro` resumes from the last complete epoch"
    )
    # Stopped before it read the checkpoint (loading data; the launcher of DDP ranks): whose?
    monkeypatch.setattr(checkpoints, "_resumable", None)
    unsure = (
        "the next `uv run dvc repro` resumes from the last complete epoch, if checkpoints/ holds"
        " this run's checkpoint (one saved by a run of the same params, data and code, as"
        " last.pt or set aside; if not, it starts over)"
    )
    assert checkpoints.after_a_stop() == unsure
    # Only a set-aside checkpoint, which may be this run's: the same.
    checkpoints.CHECKPOINT.rename(checkpoints.CHECKPOINT.parent / "0123456789ab-ba9876543210.pt")
    assert checkpoints.after_a_stop() == unsure
    (checkpoints.CHECKPOINT.parent / "0123456789ab-ba9876543210.pt").rename(checkpoints.CHECKPOINT)
    # Another run's checkpoint (other params), which this run started without: it starts over.
    monkeypatch.setattr(checkpoints, "_resumable", False)
    assert "no epoch of this run is checkpointed" in checkpoints.after_a_stop()
    monkeypatch.setattr(checkpoints, "_resumable", True)
    # `dvc exp run` in the project: `dvc repro` would resume it, but as no experiment.
    monkeypatch.setenv("DVC_EXP_NAME", "atrip-coof")
    assert "same `uv run dvc exp run` command again" in checkpoints.after_a_stop()
    queued = tmp_path / ".dvc" / "tmp" / "exps" / "tmpk2x8"  # where `--queue` runs
    temp = tmp_path / ".dvc" / "tmp" / "exps" / "standalone" / "tmp5qz1"  # where `--temp` runs
    for copy in (queued, temp):
        copy.mkdir(parents=True)
        monkeypatch.chdir(copy)
        assert "starts over" in checkpoints.after_a_stop(), copy


RECIPES = {
    "tutorial+aug": (None, {"augment": {"crop_padding": 2, "flip": True}, "momentum": 0.9}),
    # Lookahead's slow weights and the alternating flip must survive the kill as well.
    "fast": (FAST_MODEL, FAST_TRAIN),
}


@pytest.mark.parametrize("recipe", RECIPES)
def test_interrupted_run_resumes_to_the_same_weights(
    processed: Path, monkeypatch: pytest.MonkeyPatch, recipe: str
) -> None:
    model, train_params = RECIPES[recipe]
    params = tiny_params(model, **{**train_params, "epochs": 3})
    train.run(params)
    uninterrupted = _weights()
    paths.MODEL.unlink()
    assert checkpoints.FINISHED.is_file(), "kept until dvc.lock records the run's model"
    checkpoints.discard()  # as the next run does once dvc.lock holds it

    real_eval = train.evaluate_split
    kill_at_validation(monkeypatch, 3)  # the power fails during epoch 3's validation
    with pytest.raises(KeyboardInterrupt):
        train.run(params)
    assert not paths.MODEL.exists(), "an interrupted run must not leave a model behind"
    monkeypatch.setattr(train, "evaluate_split", real_eval)
    train.run(params)
    timings = (processed / paths.TRAIN_TIMINGS).read_text()
    assert '"resumed_from_epoch": 2' in timings
    resumed = _weights()
    assert all(torch.equal(uninterrupted[k], resumed[k]) for k in uninterrupted)
    epochs = (processed / paths.PLOT_EPOCHS).read_text().splitlines()
    assert [line.split(",")[0] for line in epochs[1:]] == ["1", "2", "3"]


def test_a_stopped_run_waits_aside_while_a_run_of_other_params_trains(
    processed: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # Stopped, then another experiment in the workspace: the stopped run's command, run again,
    # still resumes from its last epoch.
    stopped, other = tiny_params(epochs=3), tiny_params(epochs=2, lr=0.05)
    train.run(stopped)
    uninterrupted = _weights()
    checkpoints.discard()  # as the next run does once dvc.lock holds the model
    real_eval = train.evaluate_split
    kill_at_validation(monkeypatch, 3)  # stopped in epoch 3: its checkpoint is epoch 2's
    with pytest.raises(KeyboardInterrupt):
        train.run(stopped)
    monkeypatch.setattr(train, "evaluate_split", real_eval)
    with caplog.at_level("INFO"):
        train.run(other)
    assert "another run's (other params or data), saved after its epoch 2: set aside" in (
        caplog.text
    )
    assert "epoch 1/2" in caplog.text  # the other run trained from its start
    assert "set-aside checkpoints" not in caplog.text  # one alone is named above
    caplog.clear()
    with caplog.at_level("INFO"):
        train.run(stopped)
    assert "resuming the checkpoint set aside" in caplog.text
    timings = json.loads((processed / paths.TRAIN_TIMINGS).read_text())
    assert timings["resumed_from_epoch"] == 2
    resumed = _weights()
    assert all(torch.equal(uninterrupted[k], resumed[k]) for k in uninterrupted)
    # The other run, finished but never recorded by DVC (no dvc.lock here), waits aside in turn.
    # Its finished mark waits with it (`<run>-<code>.json`), for when it comes back.
    names = sorted(p.name for p in paths.CHECKPOINT_DIR.iterdir())
    assert names[2:] == ["finished.json", "last.pt"]
    assert re.fullmatch(r"[0-9a-f]{12}-[0-9a-f]{12}\.json", names[0])
    assert names[1] == names[0].replace(".json", ".pt")
    # A third experiment sets the finished one aside too: two wait, and their total is said.
    caplog.clear()
    with caplog.at_level("INFO"):
        train.run(tiny_params(epochs=1, lr=0.07))
    assert re.search(r"checkpoints holds 2 set-aside checkpoints \(.+ in all\)", caplog.text)


def test_a_stopped_run_of_other_code_is_removed_and_said_to_start_over(
    processed: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # Stopped, then visionpipe upgraded (or a file under src/visionpipe edited): no run of the
    # new code can resume it, the same command's neither; set aside, it would wait forever.
    code = processed / "loop.py"
    code.write_text("lr = 0.1\n")
    monkeypatch.setattr(checkpoints, "code_files", lambda: [code])
    params = tiny_params(epochs=3)
    real_eval = train.evaluate_split
    kill_at_validation(monkeypatch, 3)
    with pytest.raises(KeyboardInterrupt):
        train.run(params)
    monkeypatch.setattr(train, "evaluate_split", real_eval)
    # Another experiment's checkpoint, set aside under the old code, goes too.
    stale = paths.CHECKPOINT_DIR / "0123456789ab-ba9876543210.pt"
    stale.write_bytes(b"a stopped run of other params, of the old code")
    code.write_text("lr = 0.01\n")
    with caplog.at_level("INFO"):
        train.run(params)
    assert "was saved after epoch 2 by other code (an upgrade, or an edit of" in caplog.text
    assert "removed; this run starts over" in caplog.text and "epoch 1/3" in caplog.text
    assert f"removed {stale}, a stopped run's checkpoint of other code" in caplog.text
    assert sorted(p.name for p in paths.CHECKPOINT_DIR.iterdir()) == ["finished.json", "last.pt"]


@pytest.mark.parametrize("patience", [0, 1], ids=["all epochs", "stopped: diverged"])
def test_a_run_stopped_while_writing_its_outputs_only_writes_them_again(
    processed: Path, monkeypatch: pytest.MonkeyPatch, patience: int
) -> None:
    params = tiny_params(epochs=6, lr=10.0 if patience else 0.05, patience=patience)
    ended = train.run(params)
    uninterrupted = _weights()
    checkpoints.discard()  # as the next run does once dvc.lock holds the model
    real_finish = train.finish

    def dying_finish(*args, **kwargs):
        real_finish(*args, **kwargs)
        raise KeyboardInterrupt  # Ctrl-C after the last checkpoint, with outputs half written

    monkeypatch.setattr(train, "finish", dying_finish)
    with pytest.raises(KeyboardInterrupt):
        train.run(params)
    monkeypatch.setattr(train, "finish", real_finish)
    monkeypatch.setattr(train, "run_epoch", None)  # no epoch may run again
    # As JSON: a diverged run's NaN losses are equal there.
    assert json.dumps(train.run(params)) == json.dumps(ended)
    timings = json.loads((processed / paths.TRAIN_TIMINGS).read_text())
    assert timings["resumed_from_epoch"] == ended["epochs_run"]
    assert ended["stopped_early"] is bool(patience)
    assert (ended["epochs_run"] < 6) is bool(patience)
    resumed = _weights()
    for k in uninterrupted:
        torch.testing.assert_close(resumed[k], uninterrupted[k], rtol=0, atol=0, equal_nan=True)
    assert checkpoints.FINISHED.is_file()


def test_timings_keep_the_steps_apart_from_validation(processed: Path) -> None:
    train.run(tiny_params(epochs=2))
    timings = json.loads((processed / paths.TRAIN_TIMINGS).read_text())
    steps, validation = timings["train_seconds"], timings["validation_seconds"]
    assert steps > 0 and validation > 0
    # Both are parts of the epoch loop (rounding to 0.01 s aside).
    assert steps + validation <= timings["epoch_loop_seconds"] + 0.02
    # images/s is over the steps alone, as published train-only figures are.
    labels = json.loads(paths.split_file("train").read_text())["labels"]
    # train_seconds is rounded to 0.01 s, and a tiny run's steps take a fraction of a second.
    images, rounding = 2 * len(labels), 0.005 + 1e-9
    slowest, fastest = images / (steps + rounding), images / max(steps - rounding, 1e-9)
    assert slowest - 0.05 <= timings["images_per_second"] <= fastest + 0.05, (timings, images)


def test_timings_name_the_threads_that_trained(processed: Path) -> None:
    # Another thread count trains other bits: a teammate's differing model.pt is explained here.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        train.run(tiny_params(epochs=1))
    finally:
        torch.set_num_threads(threads)
    assert json.loads((processed / paths.TRAIN_TIMINGS).read_text())["threads"] == 1


def test_other_params_start_fresh(processed: Path) -> None:
    train.run(tiny_params())
    train.run(tiny_params(lr=0.05, epochs=1))
    assert '"resumed_from_epoch": 0' in (processed / paths.TRAIN_TIMINGS).read_text()


def test_early_stopping(processed: Path) -> None:
    metrics = train.run(tiny_params(epochs=50, lr=10.0, patience=1))
    assert metrics["stopped_early"] and metrics["epochs_run"] < 50


def test_a_gain_counts_for_early_stopping_only_above_min_delta() -> None:
    def stops(losses: list[float], min_delta: float) -> list[bool]:
        p = progress.Progress()
        return [
            p.update(EpochRecord(epoch=i, train_loss=1.0, val_loss=v, val_accuracy=0.5, lr=0.01),
                     patience=2, min_delta=min_delta)
            for i, v in enumerate(losses, 1)
        ]  # fmt: skip

    creeping = [1.0, 0.9999, 0.9998, 0.9997]
    assert stops(creeping, 0.0) == [False] * 4
    assert stops(creeping, 0.001) == [False, False, True, True]
    # A gain above min_delta resets patience; the best loss it compares with is that epoch's.
    assert stops([1.0, 0.99, 0.98, 0.97], 0.005) == [False] * 4
    slowing = [1.0, 0.996, 0.992, 0.990, 0.989]
    assert stops(slowing, 0.005) == [False, False, False, False, True]
    assert stops(slowing, 0.0) == [False] * 5


def test_min_delta_stops_a_run_and_best_val_loss_is_still_the_lowest(
    processed: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level("INFO", logger="visionpipe.progress"):
        metrics = train.run(tiny_params(epochs=6, lr=0.01, patience=1, min_delta=100.0))
    assert metrics["stopped_early"] and metrics["epochs_run"] == 2
    assert "val loss has not improved by more than 100 (train.min_delta) for 1 epoch" in caplog.text
    header, *rows = (processed / paths.PLOT_EPOCHS).read_text().splitlines()
    column = header.split(",").index("val_loss")
    lowest = min(float(r.split(",")[column]) for r in rows)
    assert metrics["best_val_loss"] == round(lowest, 6)


def test_patience_run_out_at_the_last_epoch_is_no_early_stop(
    processed: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # The run ends where it would have ended: the log says nothing of an early stop, as
    # metrics/train.json says none.
    with caplog.at_level("INFO", logger="visionpipe.progress"):
        metrics = train.run(tiny_params(epochs=2, lr=0.01, patience=1, min_delta=100.0))
    assert not metrics["stopped_early"] and metrics["epochs_run"] == 2
    assert "early stopping" not in caplog.text


def test_min_delta_without_patience_says_it_changes_nothing(
    processed: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level("WARNING", logger="visionpipe.train"):
        train.run(tiny_params(epochs=1, min_delta=0.5))
    assert "train.min_delta is 0.5 but train.patience is 0 (early stopping off)" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING", logger="visionpipe.train"):
        train.run(tiny_params(epochs=1, min_delta=0.5, patience=2))
    assert "train.min_delta" not in caplog.text


@pytest.mark.parametrize(("patience", "said"), [(1, "for 1 epoch"), (3, "for 3 epochs")])
def test_why_stopped_counts_epochs_in_words(
    patience: int, said: str, caplog: pytest.LogCaptureFixture
) -> None:
    record = EpochRecord(epoch=5, train_loss=0.7, val_loss=0.9, val_accuracy=0.6, lr=0.01)
    with caplog.at_level("INFO", logger="visionpipe.progress"):
        progress.log_why_stopped(record, patience, lr=0.01)
    assert caplog.messages == [f"early stopping: val loss has not improved {said}"]


def test_batch_crop_and_flip_are_per_image_shifts() -> None:
    x = torch.arange(2 * 3 * 4 * 4, dtype=torch.uint8).view(2, 3, 4, 4)
    gen = torch.Generator().manual_seed(0)
    out = batches.batch_crop(x, 1, gen)
    assert out.shape == x.shape and out.dtype == torch.uint8
    for img_in, img_out in zip(x, out, strict=True):
        padded = torch.nn.functional.pad(img_in, (1, 1, 1, 1))
        windows = [padded[:, dy : dy + 4, dx : dx + 4] for dy in range(3) for dx in range(3)]
        assert any(torch.equal(img_out, w) for w in windows)
    flipped = batches.batch_flip_lr(x, torch.Generator().manual_seed(1))
    for img_in, img_out in zip(x, flipped, strict=True):
        assert torch.equal(img_out, img_in) or torch.equal(img_out, img_in.flip(2))


def test_lr_schedules() -> None:
    assert optim.lr_factor(0, 100, 0, "constant") == 1.0
    assert optim.lr_factor(4, 100, 10, "constant") == pytest.approx(0.5)
    assert optim.lr_factor(99, 100, 0, "cosine") < 0.01
    peak = max(range(100), key=lambda s: optim.lr_factor(s, 100, 0, "onecycle"))
    assert peak == 24 and optim.lr_factor(99, 100, 0, "onecycle") < 0.02


def test_each_epochs_lr_is_the_one_it_trained_with(processed: Path) -> None:
    train.run(tiny_params(epochs=2, lr=0.01, schedule="cosine"))
    rows = (processed / paths.PLOT_EPOCHS).read_text().splitlines()[1:]
    lrs = [float(row.split(",")[-1]) for row in rows]
    # Cosine over two epochs: the full lr at the first step, half of it halfway through.
    assert lrs == [pytest.approx(0.01), pytest.approx(0.005)]


def test_a_log_every_beyond_the_last_step_is_reported(
    processed: Path, caplog: pytest.LogCaptureFixture
) -> None:
    train.run(tiny_params(epochs=1, log_every=1000))
    assert (processed / paths.PLOT_STEPS).read_text() == "step,train_loss\n"
    assert "train.log_every is 1000 but this run has" in caplog.text
    # The bound that gets a point is the run's step count, not the ten-point suggestion.
    total = int(re.search(r"this run has (\d+) steps", caplog.text)[1])
    assert f"set train.log_every to {total} or less to get one" in caplog.text
    caplog.clear()
    train.run(tiny_params(epochs=1, log_every=2))
    assert "train.log_every" not in caplog.text
    # Ten points where some value gives about ten, not below twenty steps (1 gives 14 of 14).
    for steps, hint in ((14, ""), (25, " (2 gives about ten points)")):
        caplog.clear()
        with caplog.at_level("WARNING", logger="visionpipe.train"):
            train.warn_if_no_step_logs(TrainConfig(epochs=1, log_every=1000), steps)
        assert caplog.text.rstrip().endswith(f"to get one{hint}"), caplog.text
    train.run(tiny_params(epochs=1, log_every=2, batch_size=1024))  # the whole split at once
    assert "this run has 1 step (1 per epoch)" in caplog.text
    assert "set train.log_every to 1 to get one" in caplog.text


def test_tutorial_cnn_is_the_seeds_model() -> None:
    net = tutorial_cnn(10, 32)
    assert [type(m).__name__ for m in net] == [
        "Conv2d",
        "MaxPool2d",
        "Conv2d",
        "MaxPool2d",
        "Conv2d",
        "MaxPool2d",
        "Flatten",
        "Linear",
        "Linear",
    ]
    assert (net[0].in_channels, net[0].out_channels, net[0].kernel_size, net[0].padding) == (
        3,
        32,
        (5, 5),
        (2, 2),
    )
    assert (net[7].in_features, net[7].out_features, net[8].out_features) == (1024, 64, 10)
    assert (
        sum(p.numel() for p in net.parameters()) == 145578
    )  # the seeds model: 2432 + 25632 + 51264 + 65600 + 650


@pytest.mark.parametrize("arch", [a for a in MODELS if a != "vgg16"])
@pytest.mark.parametrize(("classes", "size"), [(10, 32), (2, 64)])
def test_every_arch_builds_for_any_classes_and_size(arch: str, classes: int, size: int) -> None:
    model = build_model(arch, classes, size, mean=[0.5] * 3, std=[0.25] * 3).eval()
    with torch.no_grad():
        assert model(torch.rand(2, 3, size, size)).shape == (2, classes)


@pytest.mark.parametrize("arch", ["tutorial_cnn", "fast"])
def test_a_channel_the_train_split_never_varies_is_not_scaled(arch: str) -> None:
    # Red/green images: blue is 0 everywhere, so its std is 0 (a division by it gave NaN).
    images = torch.randint(0, 256, (64, 3, 16, 16), dtype=torch.uint8)
    images[:, 2] = 0
    model = build_model(arch, 2, 16, mean=[0.5, 0.3, 0.0], std=[0.29, 0.2, 0.0])
    assert model.normalize.std.flatten().tolist() == pytest.approx([0.29, 0.2, 1.0])
    model.prepare(images)  # fast whitens from the normalized images: eigh failed on NaN
    with torch.no_grad():
        assert torch.isfinite(model.eval()(images.float() / 255)).all()
    # model.pt's metadata gives what the model divides by, for code that normalizes outside it.
    meta = {"image_size": 16, "mean": [0.5, 0.3, 0.0], "std": [0.29, 0.2, 0.0]}
    splits = SimpleNamespace(meta=meta, classes=["a", "b"])
    params = parse_params({"model": {"name": arch, "normalize": True}})
    assert train.model_info(params, splits).std == pytest.approx([0.29, 0.2, 1.0])


@pytest.mark.parametrize("arch", [a for a, spec in MODELS.items() if spec.pretrained])
def test_a_torchvision_model_has_torchvision_s_state_for_the_class_count(arch: str) -> None:
    # So `torchvision.models.<arch>(num_classes=...)` loads a model.pt's net (docs/deploy.md).
    import torchvision

    with torch.device("meta"):  # shapes only: vgg16's 138M parameters are never allocated
        ours = build_model(arch, 7, 32).net.state_dict()
        theirs = torchvision.models.get_model(arch, num_classes=7).state_dict()
    assert {k: v.shape for k, v in ours.items()} == {k: v.shape for k, v in theirs.items()}


def test_vgg16_classifier_is_replaced_as_the_seeds_do() -> None:
    model = build_model("vgg16", 2, 32)
    assert model.net.classifier[6].out_features == 2


def test_saved_model_is_weights_and_plain_metadata(processed: Path) -> None:
    train.run(tiny_params(epochs=1))
    blob = torch.load(paths.MODEL, weights_only=True)
    assert set(blob) == {"state_dict", "meta"}
    assert blob["meta"]["classes"] == ["cat", "dog", "frog"]  # plain values, readable as such
    model, info = load_model(paths.MODEL)
    assert info.classes == ["cat", "dog", "frog"] and info.arch == "tutorial_cnn"
    assert info.params["train"]["lr"] == 0.01 and info.visionpipe_version
    # Only what shaped the model: later stages' params would go stale in it (train does not
    # re-run when they change), and launch settings differ between machines.
    assert set(info.params) == {"recipe", "data", "preprocess", "model", "train"}
    assert model(torch.rand(1, 3, 16, 16)).shape == (1, 3)


def test_the_same_data_from_another_path_makes_the_same_model_file(processed: Path) -> None:
    # Two clones with the data at two absolute paths: DVC hashes model.pt, and train declares no
    # data.source, so a path in the file would make their dvc.lock and run cache differ.
    files = []
    for source in ("/home/a/photos.zip", "/mnt/b/photos.zip"):
        params = tiny_params(epochs=1)
        data = params.data.model_copy(update={"source": source, "sha256": "ab" * 32})
        train.run(params.model_copy(update={"data": data}))
        files.append(paths.MODEL.read_bytes())
    assert files[0] == files[1]


def test_fine_tune_from_another_runs_model(processed: Path) -> None:
    train.run(tiny_params(epochs=1))
    done = torch.load(paths.MODEL, weights_only=True)["state_dict"]
    model = build_model("tutorial_cnn", 3, 16, {"weights": str(paths.MODEL)})
    assert torch.equal(model.net[0].weight, done["net.0.weight"])
    other = build_model("tutorial_cnn", 5, 16, {"weights": str(paths.MODEL)})  # new class count
    assert torch.equal(other.net[0].weight, done["net.0.weight"])
    assert other.net[-1].out_features == 5
    with pytest.raises(FileNotFoundError, match=r"model\.weights"):
        build_model("resnet18", 2, 32, {"weights": "missing.pt"})
    # The workspace's own model.pt: DVC deletes it before train runs, so "missing" needs a why.
    paths.MODEL.unlink()
    with pytest.raises(FileNotFoundError, match=r"DVC removes models/model\.pt.*copy it"):
        build_model("tutorial_cnn", 3, 16, {"weights": str(paths.MODEL.resolve())})


def test_weights_trained_on_splits_drawn_otherwise_are_warned_of(
    processed: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # The same photos split with another data.seed: the file trained on some of this run's
    # test photos, and the run's test scores read too well.
    train.run(tiny_params(epochs=1))
    start = processed / "start.pt"
    shutil.copy(paths.MODEL, start)

    def params(seed: int) -> Any:
        p = tiny_params({"weights": str(start)}, epochs=1)
        return p.model_copy(update={"data": p.data.model_copy(update={"seed": seed})})

    with caplog.at_level("WARNING"):
        train.run(params(0))
    assert "trained on splits drawn with" not in caplog.text
    with caplog.at_level("WARNING"):
        train.run(params(1))
    assert "trained on splits drawn with data.seed: 0; this run's are drawn with data.seed: 1" in (
        caplog.text
    )
    assert "among this run's test or validation images" in caplog.text


def test_a_split_drawn_the_same_way_written_otherwise_or_a_dataset_s_own_test_folder_is_no_alarm(
    processed: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from visionpipe import split_plan, weights

    assert weights.DEFAULT_TEST_FRACTION == split_plan.DEFAULT_TEST_FRACTION
    train.run(tiny_params(epochs=1))
    data = tiny_params().data.model_dump(mode="json")
    classes = ["cat", "dog", "frog"]
    # test_fraction null is the default share: the same split as 0.2 written out.
    with caplog.at_level("WARNING"):
        weights.warn_if_other_split(paths.MODEL, {**data, "test_fraction": 0.2}, classes)
    assert not caplog.text
    # Split folders (CIFAR-10's, ants and bees'): the test folder is the dataset's, never drawn;
    # a seed draws the validation images alone, and test_fraction draws nothing.
    for other, said in (
        ({"seed": 1}, "data.seed: 1"),
        ({"val_fraction": 0.3}, "data.val_fraction: 0.3"),
    ):
        caplog.clear()
        with caplog.at_level("WARNING"):
            weights.warn_if_other_split(paths.MODEL, {**data, **other}, classes, "split folders")
        assert f"this run's are drawn with {said}" in caplog.text
        assert "among this run's validation images" in caplog.text


def test_pretrained_offline_says_which_file_to_fetch(monkeypatch: pytest.MonkeyPatch) -> None:
    from torchvision.models import _api

    from visionpipe import logs

    def offline(url: str, *args: object, **kwargs: object) -> None:
        raise OSError("Name or service not known")

    monkeypatch.setattr(_api, "load_state_dict_from_url", offline)
    with pytest.raises(WeightsError, match=r"put resnet18-\w+\.pth \(from https://") as err:
        build_model("resnet18", 2, 32, {"pretrained": True})
    assert logs.is_user_error(err.value)  # the stage prints the advice, not a traceback


def test_pretrained_says_what_it_loaded_and_what_starts_fresh(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    import torchvision
    from torchvision.models import _api

    imagenet = torchvision.models.resnet18().state_dict()  # what the hub cache would hold
    monkeypatch.setattr(_api, "load_state_dict_from_url", lambda *a, **kw: imagenet)
    with caplog.at_level("INFO"):
        model = build_model("resnet18", 2, 32, {"pretrained": True})
    assert torch.equal(model.net.conv1.weight, imagenet["conv1.weight"])
    loaded = "ImageNet weights for resnet18 loaded; classifier 'fc' starts fresh for 2 classes"
    assert f"{loaded} (ImageNet's has 1000)" in caplog.text
    # Without model.normalize, the ImageNet layers see other numbers than they learned on.
    assert "set model.normalize: true" in caplog.text
    caplog.clear()
    with caplog.at_level("INFO"):
        build_model("resnet18", 2, 32, {"pretrained": True}, mean=[0.5] * 3, std=[0.25] * 3)
    assert "model.normalize" not in caplog.text


def test_weights_of_another_model_are_refused(processed: Path) -> None:
    train.run(tiny_params(epochs=1))
    with pytest.raises(WeightsError, match=r"model\.name: tutorial_cnn; this run has model\.name"):
        build_model("alexnet", 3, 16, {"weights": str(paths.MODEL)})
    # A plain state_dict has no metadata: not one tensor of a tutorial_cnn fits alexnet, and
    # loading nothing would train from scratch.
    plain = torch.load(paths.MODEL, weights_only=True)["state_dict"]
    torch.save({k.removeprefix("net."): v for k, v in plain.items()}, processed / "plain.pt")
    with pytest.raises(WeightsError, match=r"0 of the model's \d+ tensors"):
        build_model("alexnet", 3, 16, {"weights": str(processed / "plain.pt")})
    torch.save([1, 2], processed / "list.pt")
    with pytest.raises(WeightsError, match="not a state_dict"):
        build_model("tutorial_cnn", 3, 16, {"weights": str(processed / "list.pt")})


def _saved_tutorial_cnn(
    path: Path, normalize: bool, size: int = 16, classes: tuple = ("a", "b", "c"), **own: object
) -> str:
    """A visionpipe model.pt of a tutorial_cnn built with these values, at `path`."""
    arch_params = {"activation": "none", "batch_norm": False, **own, "weights": None, "tta": 0}
    stats = ([0.5] * 3, [0.25] * 3) if normalize else (None, None)
    model = build_model("tutorial_cnn", 3, size, arch_params, *stats)
    info = ModelInfo("tutorial_cnn", 3, size, arch_params, normalize, [0.5] * 3, [0.25] * 3,
                     list(classes), {}, "test", "test")  # fmt: skip
    save_model(path, model, info)
    return str(path)


@pytest.mark.parametrize("saved", [True, False])
def test_weights_trained_with_the_other_normalize_are_refused(tmp_path: Path, saved: bool) -> None:
    # The file's mean/std are not loaded: weights trained on normalized inputs would see raw
    # pixels (or the reverse) and fine-tune from a net that computes something else.
    weights = _saved_tutorial_cnn(tmp_path / "start.pt", normalize=saved)
    normalized = ([0.5] * 3, [0.25] * 3)
    with pytest.raises(WeightsError) as err:
        build_model("tutorial_cnn", 3, 16, {"weights": weights}, *(() if saved else normalized))
    message = str(err.value)
    assert f"trained with model.normalize: {str(saved).lower()}; this run has" in message
    assert f"Set model.normalize: {str(saved).lower()}" in message and weights in message
    # Matching values load without a word.
    build_model("tutorial_cnn", 3, 16, {"weights": weights}, *(normalized if saved else ()))


def test_weights_trained_with_other_own_keys_are_refused(tmp_path: Path) -> None:
    # batch_norm shifts every layer's index: tensors would land in layers of the same shape.
    weights = _saved_tutorial_cnn(tmp_path / "start.pt", False, batch_norm=True)
    with pytest.raises(WeightsError, match=r"model\.batch_norm: true; this run has model\.batch_"):
        build_model("tutorial_cnn", 3, 16, {"weights": weights})


def test_weights_trained_at_another_size_are_loaded_with_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    weights = _saved_tutorial_cnn(tmp_path / "start.pt", False, size=16)
    with caplog.at_level("WARNING"):
        model = build_model("tutorial_cnn", 3, 32, {"weights": weights})
    assert "trained on 16-pixel images; this run's are 32 pixels" in caplog.text
    assert "preprocess.image_size: 16" in caplog.text
    saved = torch.load(weights, weights_only=True)["state_dict"]
    assert torch.equal(model.net[0].weight, saved["net.0.weight"])  # the convs still load


def test_a_classifier_trained_for_other_classes_starts_fresh(
    processed: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # Same class count, other names: the head fits by shape, but its rows mean a, b, c.
    weights = _saved_tutorial_cnn(processed / "start.pt", False)  # classes a, b, c
    saved = torch.load(weights, weights_only=True)["state_dict"]
    with caplog.at_level("INFO"):
        train.run(tiny_params({"weights": weights}, epochs=1))  # cat, dog, frog
    assert "classifier '8' starts fresh: the file's was trained for other classes" in caplog.text
    assert "(a, b, c; this run's: cat, dog, frog)" in caplog.text
    assert (
        "8 of 10 tensors loaded from" in caplog.text
        and "left fresh: 8.bias, 8.weight" in caplog.text
    )
    model = build_model("tutorial_cnn", 3, 16, {"weights": weights}, classes=["x", "y", "z"])
    assert not torch.equal(model.net[8].weight, saved["net.8.weight"])
    assert torch.equal(model.net[7].weight, saved["net.7.weight"])  # the rest is loaded
    same = build_model("tutorial_cnn", 3, 16, {"weights": weights}, classes=["a", "b", "c"])
    assert torch.equal(same.net[8].weight, saved["net.8.weight"])


@pytest.mark.parametrize("classes", [["c", "a", "b"], ["b", "c"]])
def test_classifier_rows_follow_the_class_names(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, classes: list[str]
) -> None:
    weights = _saved_tutorial_cnn(tmp_path / "start.pt", False)  # classes a, b, c
    saved = torch.load(weights, weights_only=True)["state_dict"]
    with caplog.at_level("INFO"):
        model = build_model("tutorial_cnn", len(classes), 16, {"weights": weights}, classes=classes)
    rows = [["a", "b", "c"].index(name) for name in classes]
    assert torch.equal(model.net[8].weight, saved["net.8.weight"][rows])
    assert torch.equal(model.net[8].bias, saved["net.8.bias"][rows])
    assert f"rows taken by class name: this run's classes ({', '.join(classes)})" in caplog.text


@pytest.mark.parametrize("classes", [["a", "b", "c", "d"], ["d", "c", "a"]])
def test_classes_the_file_knows_keep_their_rows_and_new_ones_start_fresh(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, classes: list[str]
) -> None:
    weights = _saved_tutorial_cnn(tmp_path / "start.pt", False)  # classes a, b, c
    saved = torch.load(weights, weights_only=True)["state_dict"]
    torch.manual_seed(5)
    fresh = build_model("tutorial_cnn", len(classes), 16, {}, classes=classes)
    torch.manual_seed(5)
    with caplog.at_level("INFO"):
        model = build_model("tutorial_cnn", len(classes), 16, {"weights": weights}, classes=classes)
    for i, name in enumerate(classes):
        want = fresh.net[8].weight[i] if name == "d" else saved["net.8.weight"]["abc".index(name)]
        assert torch.equal(model.net[8].weight[i], want), name
        want_bias = fresh.net[8].bias[i] if name == "d" else saved["net.8.bias"]["abc".index(name)]
        assert torch.equal(model.net[8].bias[i], want_bias), name
    assert torch.equal(model.net[7].weight, saved["net.7.weight"])
    assert (
        f"rows taken by class name for {len(classes) - 1} of this run's classes; fresh for the 1"
        " the file does not know (d; the file's: a, b, c)" in caplog.text
    )
    assert "10 of 10 tensors loaded" in caplog.text
    # d, c, a: b is gone and d new, as when bees/ is renamed honeybees/.
    renamed = "the file's class b is not among this run's classes, which include new ones (d)"
    assert (renamed in caplog.text) == ("b" not in classes)


def test_class_names_match_whichever_unicode_form_a_system_wrote(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # Trained on a Mac (folder names decomposed: e + U+0301), fine-tuned on Linux (one é).
    mac = ("cafe\u0301", "the\u0301", "vin")
    weights = _saved_tutorial_cnn(tmp_path / "start.pt", False, classes=mac)
    saved = torch.load(weights, weights_only=True)["state_dict"]
    with caplog.at_level("INFO"):
        same = build_model(
            "tutorial_cnn", 3, 16, {"weights": weights}, classes=["café", "thé", "vin"]
        )
        fewer = build_model("tutorial_cnn", 2, 16, {"weights": weights}, classes=["vin", "thé"])
    assert torch.equal(same.net[8].weight, saved["net.8.weight"])
    assert torch.equal(fewer.net[8].weight, saved["net.8.weight"][[2, 1]])
    assert "starts fresh" not in caplog.text


def test_a_layer_with_a_tensor_of_another_shape_starts_fresh_whole(tmp_path: Path) -> None:
    # At another size the first Linear's weight differs; its bias (64 values) fits, but a bias
    # trained for other weights means nothing beside a freshly drawn weight.
    weights = _saved_tutorial_cnn(tmp_path / "start.pt", False, size=16)
    saved = torch.load(weights, weights_only=True)["state_dict"]
    model = build_model("tutorial_cnn", 3, 32, {"weights": weights})
    assert not torch.equal(model.net[7].bias, saved["net.7.bias"])
    assert torch.equal(model.net[8].bias, saved["net.8.bias"])


def test_a_weights_file_cut_short_empty_or_of_another_kind_is_named_in_one_line(
    photo: Path,
    tmp_path: Path,
) -> None:
    from visionpipe import logs

    torch.save(build_model("tutorial_cnn", 3, 16).net.state_dict(), tmp_path / "start.pth")
    whole = (tmp_path / "start.pth").read_bytes()
    shutil.copy(photo, tmp_path / "dog.pth")  # a photo renamed
    for name, data, said in [
        ("cut.pth", whole[:1000], "cannot be read as PyTorch weights"),
        ("end.pth", whole[:-30], "cannot be read as PyTorch weights"),
        ("empty.pth", b"", "is empty"),
        ("dog.pth", None, "is not a PyTorch weights file"),
        ("text.pth", b"hello\n", "is not a PyTorch weights file"),
    ]:
        if data is not None:
            (tmp_path / name).write_bytes(data)
        with pytest.raises(WeightsError, match=said) as err:
            build_model("tutorial_cnn", 3, 16, {"weights": str(tmp_path / name)})
        assert logs.is_user_error(err.value) and "weights_only=False" not in str(err.value), name


def test_a_missing_relative_weights_path_says_where_it_was_looked_for(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # `../start.pt` works in the workspace, not in a queued run's temporary copy.
    monkeypatch.chdir(tmp_path)
    with pytest.raises(FileNotFoundError, match="temporary copy") as err:
        build_model("tutorial_cnn", 3, 16, {"weights": "../start.pt"})
    looked = f"looked for as {tmp_path.parent / 'start.pt'}"
    assert looked in str(err.value) and "give it absolute" in str(err.value)
    with pytest.raises(FileNotFoundError) as err:
        build_model("tutorial_cnn", 3, 16, {"weights": str(tmp_path / "start.pt")})
    assert "temporary copy" not in str(err.value)


def test_pretrained_with_a_cached_file_that_is_not_torchvision_s_says_to_replace_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The file under torchvision's name in the hub cache is cut short: putting it there again
    # is not the fix; replacing it is.
    from torchvision.models import ResNet18_Weights

    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    file = tmp_path / "checkpoints" / ResNet18_Weights.DEFAULT.url.rsplit("/", 1)[-1]
    file.parent.mkdir()
    file.write_bytes(b"PK\x03\x04 cut short")
    with pytest.raises(WeightsError, match=f"cache's {file} is not that file") as err:
        build_model("resnet18", 2, 32, {"pretrained": True})
    assert "delete it" in str(err.value)


@pytest.mark.parametrize(
    "wrap",
    [
        lambda sd: {f"module.{k}": v for k, v in sd.items()},  # DDP, DataParallel
        lambda sd: {f"_orig_mod.net.{k}": v for k, v in sd.items()},  # torch.compile'd Classifier
        lambda sd: {"model": sd, "epoch": 3},  # torchvision's references' checkpoint
    ],
    ids=["ddp", "compiled-classifier", "checkpoint"],
)
def test_weights_saved_from_a_wrapped_net_load(tmp_path: Path, wrap: Any) -> None:
    net = build_model("tutorial_cnn", 3, 16).net.state_dict()
    torch.save(wrap(net), tmp_path / "start.pth")
    model = build_model("tutorial_cnn", 3, 16, {"weights": str(tmp_path / "start.pth")})
    assert all(torch.equal(v, net[k]) for k, v in model.net.state_dict().items())


def test_a_checkpoint_with_pickled_objects_says_how_to_save_its_weights(tmp_path: Path) -> None:
    import argparse

    from visionpipe import logs

    # torchvision's references save their argparse arguments beside the weights.
    net = build_model("tutorial_cnn", 3, 16).net.state_dict()
    torch.save({"model": net, "args": argparse.Namespace(lr=0.1)}, tmp_path / "ckpt.pth")
    with pytest.raises(WeightsError, match=r"holds argparse\.Namespace besides tensors") as err:
        build_model("tutorial_cnn", 3, 16, {"weights": str(tmp_path / "ckpt.pth")})
    assert "torch.save(obj['model'], 'start.pth')" in str(err.value)
    assert logs.is_user_error(err.value)  # one line, not torch's page-long traceback


class _Calls:
    """A pickle that calls `call(arg)` when loaded."""

    def __init__(self, call: Any, arg: Any) -> None:
        self.call, self.arg = call, arg

    def __reduce__(self) -> tuple[Any, tuple[Any]]:
        return self.call, (self.arg,)


class _RunsCode:
    """A pickle made to run a program on load: `os.system` of a marker-writing command."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, tuple[str]]:
        import os

        return os.system, (f"touch {self.marker}",)


def test_a_weights_file_made_to_run_code_is_named_as_such_with_no_advice_to_load_it(
    tmp_path: Path,
) -> None:
    from visionpipe.modelfile import ModelFileError, load_model

    marker = tmp_path / "ran"
    evil = tmp_path / "evil.pt"
    torch.save({"state_dict": _RunsCode(marker), "meta": {}}, evil)
    with pytest.raises(WeightsError) as err:
        build_model("tutorial_cnn", 3, 16, {"weights": str(evil)})
    said = str(err.value)
    assert "system when unpickled: it was made to run a program" in said, said
    assert "weights_only=False" not in said and not marker.exists()
    with pytest.raises(ModelFileError) as err:  # predict --backend torch --model evil.pt
        load_model(evil)
    assert "made to run a program" in str(err.value) and "weights_only" not in str(err.value)
    assert not marker.exists()
    # torch.save's protocol 2 names builtins bare (`eval`) and subprocess as `commands`.
    # And the calls of its kind that take their environment or a file's deletion, and modules
    # no model pickles anything of.
    import pickle
    import shutil

    calls = [(eval, "1"), (exec, "x = 1"), (subprocess.Popen, ["true"]), (pickle.loads, b"N.")]
    calls += [(os.unlink, str(tmp_path / "none")), (shutil.rmtree, str(tmp_path / "none"))]
    for call, arg in calls:
        torch.save({"state_dict": _Calls(call, arg)}, evil)
        with pytest.raises(WeightsError, match="made to run a program"):
            build_model("tutorial_cnn", 3, 16, {"weights": str(evil)})
    # An object of the os module that runs nothing is no such file, nor an enum of signal or
    # socket a checkpoint's config may hold: the usual advice.
    import signal
    import socket

    for other in (os.stat(tmp_path), signal.SIGTERM, socket.AF_INET):
        torch.save({"model": {}, "other": other}, evil)
        with pytest.raises(WeightsError) as err:
            build_model("tutorial_cnn", 3, 16, {"weights": str(evil)})
        assert "weights_only=False" in str(err.value) and "run a program" not in str(err.value)


@pytest.mark.parametrize(
    ("schedule", "warmup_epochs", "steps_per_epoch", "warned"),
    [
        ("onecycle", 0.0, 1, "onecycle's warmup (a quarter of the run) is 1 of this run's 5"),
        ("onecycle", 0.0, 2, None),  # 2 of 10 steps: 0.5x, then the peak
        ("onecycle", 0.0, 1, "set train.warmup_epochs to 2 or more"),
        ("cosine", 0.2, 2, "train.warmup_epochs 0.2 is 0 of this run's 10"),
        ("cosine", 0.5, 2, "train.warmup_epochs 0.5 is 1 of"),
        ("cosine", 0.0, 1, None),  # no warmup asked for
        ("triangle", 0.0, 1, None),  # starts at 0.2x whatever its warmup
    ],
)
def test_a_warmup_of_one_step_or_none_is_said_to_start_at_the_peak(
    caplog: pytest.LogCaptureFixture,
    schedule: str,
    warmup_epochs: float,
    steps_per_epoch: int,
    warned: str | None,
) -> None:
    # Its ramp is (step + 1) / warmup: one step of warmup is the peak lr from the first step.
    cfg = TrainConfig(epochs=5, schedule=schedule, warmup_epochs=warmup_epochs, lr=0.2)
    with caplog.at_level("WARNING"):
        optim.warn_if_no_warmup(cfg, steps_per_epoch)
    if warned is None:
        assert caplog.text == ""
    else:
        assert warned in caplog.text and "starts at the peak train.lr 0.2" in caplog.text


def test_divergence_stops_training_and_export_stays_honest(
    processed: Path, caplog: pytest.LogCaptureFixture
) -> None:
    import json

    from visionpipe import evaluate, export
    from visionpipe.config.params import parse_params

    metrics = train.run(tiny_params(epochs=5, lr=100.0, momentum=0.99))
    assert metrics["diverged"] and metrics["epochs_run"] < 5
    saved = json.loads(paths.TRAIN_METRICS.read_text())  # strict JSON: NaN became null
    assert saved["diverged"] is True and saved["train_loss"] is None
    result = export.run(parse_params({}).export.model_copy(update={"parity_images": 20}))
    assert result["nonfinite_logits"] > 0 and result["max_abs_logit_diff"] <= 1e-4
    # A NaN row predicts nothing: wrong, not class 0 (the argmax of NaN) scored as a guess.
    with caplog.at_level("WARNING"):
        scored = evaluate.run("cpu", 16)
    assert scored["test_loss"] != scored["test_loss"]  # NaN
    assert scored["test_acc"] == 0.0, scored
    # Each class's recall agrees: every image missed, none predicted (no precision to give).
    per_class = json.loads(paths.PER_CLASS.read_text())["classes"]
    assert [(c["recall"], c["precision"]) for c in per_class if c["support"]] == [
        (0.0, None) for c in per_class if c["support"]
    ], per_class
    assert "non-finite logits for" in caplog.text and "count those images as wrong" in caplog.text

    def refuse(constant: str) -> None:
        raise ValueError(f"{constant} is not JSON")

    live = json.loads((paths.LIVE_EVAL / "metrics.json").read_text(), parse_constant=refuse)
    assert "test_loss" not in live and "test_acc" in live  # an empty cell in dvc exp show


def test_weights_made_nan_by_an_epoch_s_last_steps_are_a_divergence(
    processed: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The epoch's mean train loss is finite when only its last steps blew up; the val loss,
    # scored on the weights the epoch ends with, is NaN. A 1-epoch run (every sweep's quick
    # look) recorded `diverged: false` while evaluate, export and predict said it diverged.
    import dataclasses
    import json

    real_eval = train.evaluate_split

    def nan_val(*args: Any, **kwargs: Any) -> train.Scores:
        return dataclasses.replace(real_eval(*args, **kwargs), loss=float("nan"))

    monkeypatch.setattr(train, "evaluate_split", nan_val)
    metrics = train.run(tiny_params(epochs=3))
    assert metrics["diverged"] and metrics["epochs_run"] == 1, metrics
    assert metrics["stopped_early"] is True
    assert json.loads(paths.TRAIN_METRICS.read_text())["diverged"] is True
    # Diverged at its last epoch, a run stopped no earlier than it would have.
    checkpoints.discard()
    metrics = train.run(tiny_params(epochs=1))
    assert metrics["diverged"] and metrics["stopped_early"] is False, metrics


def test_fast_recipe_is_reproducible_and_learns(processed: Path) -> None:
    params = tiny_params(FAST_MODEL, **{**FAST_TRAIN, "epochs": 4})
    metrics = train.run(params)
    first = _weights()
    train_anew(params)
    second = _weights()
    assert all(torch.equal(first[k], second[k]) for k in first)
    assert (
        metrics["val_accuracy"] > 0.6
    )  # 3 classes (chance 1/3), told apart by their brightest channel
    model, info = load_model(paths.MODEL)
    assert model.tta == 2 and info.arch_params["tta"] == 2
    # The six TTA views are part of the exported graph, and onnxruntime agrees with PyTorch.
    from visionpipe import export
    from visionpipe.config.params import parse_params

    result = export.run(parse_params({}).export.model_copy(update={"parity_images": 30}))
    assert result["max_abs_logit_diff"] <= 1e-4 and result["top1_agreement"] == 1.0


def _fast_loop(epochs: int, **cfg: object) -> train.Loop:
    torch.manual_seed(0)
    x = torch.randint(0, 256, (64, 3, 16, 16), dtype=torch.uint8)
    y = torch.arange(64) % 3
    model = build_model("fast", 3, 16)
    init_whitening(model.net.whiten, x.float() / 255)
    model.net.whiten.weight.requires_grad_(False)
    config = TrainConfig(**{**FAST_TRAIN, "epochs": epochs, "log_every": 1000, **cfg})
    return train.make_loop(model, x, y, config, torch.device("cpu"))


def test_fast_freezes_whitening_and_norm_scales() -> None:
    loop = _fast_loop(epochs=5, lookahead=False)
    net = loop.model.net
    whiten_w = net.whiten.weight.clone()
    biases = [net.whiten.bias.clone()]
    for epoch in range(5):
        train.train_epoch(loop, epoch)
        biases.append(net.whiten.bias.clone())
    assert torch.equal(net.whiten.weight, whiten_w)  # the whitening filters never train
    assert not torch.equal(biases[0], biases[3])  # its bias trains for 3 epochs ...
    assert torch.equal(biases[3], biases[5])  # ... then stays put
    norm = net.layers[0].norm1
    assert torch.equal(norm.weight, torch.ones_like(norm.weight))  # no trainable BN scale
    assert not torch.equal(norm.bias, torch.zeros_like(norm.bias))


def test_bias_lr_scale_keeps_weight_decay_per_step() -> None:
    loop = _fast_loop(epochs=1)
    groups = {g["name"]: g for g in loop.optimizer.param_groups}
    assert set(groups) == {"default", "norm_bias", "whiten_bias"}
    cfg = loop.cfg
    norm = groups["norm_bias"]
    assert norm["initial_lr"] == pytest.approx(cfg.lr * 64)
    assert norm["initial_lr"] * norm["weight_decay"] == pytest.approx(cfg.lr * cfg.weight_decay)
    n_norm_biases = 2 * 3  # two BatchNorms in each of three conv groups
    assert len(norm["params"]) == n_norm_biases
    # The tutorial's net has no BatchNorm and no whitening: one group, as the seeds' SGD.
    plain = optim.make_optimizer(build_model("tutorial_cnn", 3, 16), TrainConfig())
    assert [g["name"] for g in plain.param_groups] == ["default"]


def test_a_frozen_backbone_trains_the_classifier_alone(
    processed: Path, caplog: pytest.LogCaptureFixture
) -> None:
    bn = {"activation": "relu", "batch_norm": True}
    train.run(tiny_params(bn, epochs=1))
    start = processed / "start.pt"
    paths.MODEL.rename(start)
    before = torch.load(start, weights_only=True)["state_dict"]
    with caplog.at_level("WARNING"):
        train.run(tiny_params({**bn, "weights": str(start)}, epochs=2, backbone_lr_scale=0.0))
    assert "backbone_lr_scale" not in caplog.text  # it starts from trained weights
    after = torch.load(paths.MODEL, weights_only=True)["state_dict"]
    head = "net." + classifier_name(build_model("tutorial_cnn", 3, 16, bn).net)
    moved = {k for k in before if not torch.equal(before[k], after[k])}
    # Everything below the classifier as it was, BatchNorm statistics and counters included.
    assert moved == {f"{head}.weight", f"{head}.bias"}


@pytest.mark.parametrize("scale", [0.0, 0.1])
def test_layers_the_weights_file_left_fresh_train_with_the_classifier(
    tmp_path: Path, scale: float
) -> None:
    # A tutorial CNN's model.pt trained at 16 px, loaded at 32: the hidden Linear sized by the
    # input starts random, and frozen or slowed with the backbone it would stay near random.
    weights = _saved_tutorial_cnn(tmp_path / "start.pt", False, size=16)
    model = build_model("tutorial_cnn", 3, 32, {"weights": weights})
    fresh = {name.split(".")[0] for name in model.fresh}
    assert len(fresh) == 1, model.fresh  # the hidden Linear; the classifier keeps its weights
    layer = model.net.get_submodule(fresh.pop())
    cfg = TrainConfig(lr=0.1, backbone_lr_scale=scale)
    if scale == 0.0:
        model.freeze_backbone()
    groups = {g["name"]: g for g in optim.param_groups(model, cfg)}
    assert all(p.requires_grad for p in layer.parameters())
    in_head = {id(p) for p in groups["classifier"]["params"]}
    assert all(id(p) in in_head for p in layer.parameters())
    assert groups["classifier"]["lr"] == 0.1


def test_finding_the_classifier_leaves_a_frozen_backbone_s_batchnorms_frozen() -> None:
    # The forward pass that finds the classifier (64 classes: two Linears of 64 outputs) puts
    # each module's mode back as it was, not the whole net's: a notebook asking for the head
    # of a frozen model in train mode must not train its BatchNorms' statistics.
    model = build_model("tutorial_cnn", 64, 32, {"activation": "relu", "batch_norm": True})
    model.freeze_backbone()
    model.train()
    norms = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert norms and not any(m.training for m in norms)
    model.head()
    assert model.training and not any(m.training for m in norms)


def test_backbone_lr_scale_slows_every_layer_but_the_classifier() -> None:
    model = build_model("tutorial_cnn", 3, 16, {"activation": "relu", "batch_norm": True})
    cfg = TrainConfig(lr=0.1, bias_lr_scale=4.0, backbone_lr_scale=0.1)
    groups = {g["name"]: g for g in optim.make_optimizer(model, cfg).param_groups}
    assert list(groups) == ["classifier", "default", "norm_bias"]
    assert [groups[n]["lr"] for n in groups] == pytest.approx([0.1, 0.01, 0.04])
    head = model.net.get_submodule(classifier_name(model.net))
    assert groups["classifier"]["params"] == [head.weight, head.bias]
    plain = optim.make_optimizer(model, TrainConfig(lr=0.1, bias_lr_scale=4.0)).param_groups
    assert [g["name"] for g in plain] == ["default", "norm_bias"]


def test_bias_lr_scale_on_a_model_without_batch_norm_warns(
    caplog: pytest.LogCaptureFixture,
) -> None:
    cfg = TrainConfig(bias_lr_scale=64.0)
    optim.make_optimizer(build_model("tutorial_cnn", 3, 16, {"batch_norm": True}), cfg)
    assert not caplog.text
    optim.make_optimizer(build_model("tutorial_cnn", 3, 16), cfg)
    assert "train.bias_lr_scale 64 multiplies the lr of BatchNorm biases" in caplog.text
    assert "set train.bias_lr_scale=1" in caplog.text
    listed = caplog.text.rsplit("(", 1)[1].split(")")[0].split(", ")
    assert {"tutorial_cnn with model.batch_norm=true", "resnet18", "fast"} <= set(listed)
    assert "alexnet" not in listed and "vgg16" not in listed


def test_the_bias_lr_scale_warning_names_every_model_with_batch_norm(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    def normed(num_classes: int, image_size: int) -> torch.nn.Module:
        return torch.nn.Sequential(torch.nn.Conv2d(3, num_classes, 3), torch.nn.BatchNorm2d(2))

    monkeypatch.setitem(MODELS, "normed", ModelSpec(normed, "a net with BatchNorm"))
    optim.make_optimizer(build_model("alexnet", 3, 16), TrainConfig(bias_lr_scale=64.0))
    assert ", normed)" in caplog.text and "alexnet" not in caplog.text


def test_a_model_of_one_size_leaves_the_bias_lr_warning_to_the_others(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A model written for 64 px alone (it refuses other sizes as it is built): another model's
    # run with train.bias_lr_scale still gets its warning, not that model's error.
    def fixed64(num_classes: int, image_size: int) -> torch.nn.Module:
        if image_size != 64:
            raise ValueError(f"written for 64 px inputs, not {image_size}")
        return torch.nn.Sequential(torch.nn.BatchNorm2d(3), torch.nn.Flatten())

    def fixed28(num_classes: int, image_size: int) -> torch.nn.Module:
        assert image_size == 28, "28 px images only"  # as researchers write it
        return torch.nn.Flatten()

    monkeypatch.setitem(MODELS, "fixed64", ModelSpec(fixed64, "64 px only", min_image_size=64))
    monkeypatch.setitem(MODELS, "fixed28", ModelSpec(fixed28, "28 px only"))
    optim.make_optimizer(build_model("tutorial_cnn", 3, 16), TrainConfig(bias_lr_scale=64.0))
    assert ", fixed64)" in caplog.text


class _SqueezeNet(torch.nn.Module):
    """A head defined before a squeeze-excitation block's Linears, as researchers write them."""

    def __init__(self, num_classes: int, image_size: int) -> None:
        super().__init__()
        self.fc = torch.nn.Linear(8, num_classes)
        self.conv = torch.nn.Conv2d(3, 8, 3, padding=1)
        self.se = torch.nn.Sequential(torch.nn.Linear(8, 2), torch.nn.ReLU(), torch.nn.Linear(2, 8))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv(x).mean((2, 3))
        return self.fc(x * torch.sigmoid(self.se(x)))


def test_the_classifier_is_the_linear_with_one_output_per_class(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(MODELS, "squeeze", ModelSpec(_SqueezeNet, "SE after its head"))
    model = build_model("squeeze", 3, 16)
    groups = optim.make_optimizer(model, TrainConfig(lr=0.1, backbone_lr_scale=0.0)).param_groups
    (head,) = [g for g in groups if g["name"] == "classifier"]
    assert head["params"] == [model.net.fc.weight, model.net.fc.bias] and head["lr"] == 0.1
    assert classifier_name(model.net, 3) == "fc"
    # With as many classes as the block's squeeze (2, the ants/bees recipe's), or as a hidden
    # layer is wide (the tutorial CNN's 64, for 64 classes): the one the net runs last.
    two = build_model("squeeze", 2, 16)
    assert classifier_name(two.net, 2, None, 16) == "fc"
    groups = optim.make_optimizer(two, TrainConfig(lr=0.1, backbone_lr_scale=0.0)).param_groups
    (head,) = [g for g in groups if g["name"] == "classifier"]
    assert head["params"] == [two.net.fc.weight, two.net.fc.bias]
    tutorial = build_model("tutorial_cnn", 64, 32)
    assert tutorial.net[7].out_features == tutorial.net[8].out_features == 64
    assert classifier_name(tutorial.net, 64, None, 32) == "8"
    # Unclear without a pass to tell (no image size): said, with the candidates, no guess.
    with pytest.raises(WeightsError, match=r"2 Linear layers with 2 outputs \(fc, se\.0\).*'NAME'"):
        classifier_name(two.net, 2)
    # A spec's head is checked: a Linear with one output per class.
    monkeypatch.setitem(MODELS, "squeeze", ModelSpec(_SqueezeNet, "SE", head="fcc"))
    with pytest.raises(WeightsError, match=r"head='fcc', which is no Linear .*: fc, se\.0"):
        build_model("squeeze", 2, 16).head()
    monkeypatch.setitem(MODELS, "squeeze", ModelSpec(_SqueezeNet, "SE", head="fc"))
    assert build_model("squeeze", 2, 16).head()[0] is not None


def test_a_torchvision_model_without_a_linear_head_needs_a_builder() -> None:
    from visionpipe.models import torchvision_classifier

    with pytest.raises(WeightsError, match=r"torchvision's squeezenet1_1 classifies with a conv"):
        torchvision_classifier("squeezenet1_1")(10, 32)


def test_a_model_without_a_linear_head_is_told_what_needs_one(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def all_conv(num_classes: int, image_size: int) -> torch.nn.Module:
        return torch.nn.Sequential(torch.nn.Conv2d(3, num_classes, 1), torch.nn.Flatten())

    monkeypatch.setitem(MODELS, "allconv", ModelSpec(all_conv, "a 1x1 conv head"))
    model = build_model("allconv", 3, 16)
    with pytest.raises(WeightsError, match=r"Sequential has no nn\.Linear layer to take as its"):
        optim.make_optimizer(model, TrainConfig(backbone_lr_scale=0.0))
    optim.make_optimizer(model, TrainConfig())  # trained whole: no head needed


@pytest.mark.parametrize("scale, says", [(0.0, "freezes"), (0.5, "slows")])
def test_backbone_lr_scale_on_random_weights_warns(
    caplog: pytest.LogCaptureFixture, scale: float, says: str
) -> None:
    train.warn_if_backbone_untrained(tiny_params(backbone_lr_scale=scale))
    assert f"train.backbone_lr_scale {scale:g} {says} every layer but the classifier" in caplog.text
    assert "set model.pretrained=true or model.weights=<file>" in caplog.text
    caplog.clear()
    train.warn_if_backbone_untrained(tiny_params({"weights": "x.pt"}, backbone_lr_scale=scale))
    assert not caplog.text


def test_lookahead_ends_on_the_slow_weights() -> None:
    model = torch.nn.Linear(2, 1)
    la = optim.Lookahead(model, total_steps=10)
    start = model.weight.detach().clone()
    with torch.no_grad():
        model.weight.add_(1.0)
    la.after_step(5)  # decay 0.95**5 * 0.5**3: slow moves most of the way
    decay = 0.95**5 * 0.5**3
    expected = start + (1 - decay) * 1.0
    assert torch.allclose(model.weight, expected) and torch.allclose(la.slow["weight"], expected)
    with torch.no_grad():
        model.weight.add_(1.0)
    la.after_step(7)  # not a lookahead step: nothing happens
    assert torch.allclose(model.weight, expected + 1.0)
    la.after_step(10)  # the last step: a lookahead step, then back to the slow weights
    assert torch.equal(model.weight, la.slow["weight"])


@pytest.mark.parametrize("steps", [4, 5])
def test_a_run_too_short_for_lookahead_to_move_says_it_learns_nothing(
    steps: int, caplog: pytest.LogCaptureFixture
) -> None:
    model = torch.nn.Linear(2, 1)
    start = model.weight.detach().clone()
    la = optim.Lookahead(model, total_steps=steps)
    for step in range(1, steps + 1):
        with torch.no_grad():
            model.weight.add_(1.0)  # what the optimizer steps would do
        la.after_step(step)
    learned = not torch.equal(model.weight, start)
    warned = "learns nothing" in caplog.text
    assert learned == (steps == 5) and warned == (not learned), caplog.text


def test_lookahead_updates_every_tensor_as_one_lerp_each() -> None:
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4))
    la = optim.Lookahead(model, total_steps=100)
    slow = {k: v.clone() for k, v in la.slow.items()}
    with torch.no_grad():
        for v in la.live.values():
            v.add_(torch.randn_like(v))
    live = {k: v.clone() for k, v in la.live.items()}
    la.after_step(50)  # a lookahead step, through the multi-tensor ops
    decay = 0.95**5 * 0.5**3
    for name, before in slow.items():
        expected = before.lerp(live[name], 1 - decay)
        assert torch.equal(la.slow[name], expected) and torch.equal(la.live[name], expected)
    # The tensors are still the model's own: the update wrote into them in place.
    assert la.live["0.weight"].data_ptr() == model[0].weight.data_ptr()


def test_freed_memory_is_kept_for_reuse_under_glibc() -> None:
    import platform

    applied = memory.keep_freed_memory()
    assert applied == (platform.system() == "Linux" and platform.libc_ver()[0] == "glibc")
    assert memory.keep_freed_memory() == applied  # calling it again is harmless


def test_to_input_converts_dtype_and_layout_in_one_copy() -> None:
    from visionpipe.models import to_input

    x = torch.randint(0, 256, (2, 3, 5, 5), dtype=torch.uint8)
    plain = to_input(x)
    last = to_input(x, torch.channels_last)
    assert plain.is_contiguous() and last.is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(plain, last) and plain.dtype == torch.float32
    assert torch.equal(plain, x.float() / 255)
    # A float tensor (ToTensor's, in [0, 1] already) is refused, never divided again in place.
    floats = torch.rand(1, 3, 4, 4)
    before = floats.clone()
    for layout in (torch.preserve_format, torch.channels_last):
        with pytest.raises(TypeError, match="to_input takes uint8 pixels"):
            to_input(floats, layout)
    assert torch.equal(floats, before)


def test_importing_train_leaves_the_warning_filters_alone() -> None:
    # A notebook's own training keeps torch's scheduler-order warning.
    code = (
        "import warnings; import visionpipe.train;"
        " assert not [f for f in warnings.filters if 'lr_scheduler' in str(f[1])]"
    )
    subprocess.run([sys.executable, "-c", code], env=env(), check=True, cwd=ROOT)


def test_alternate_flip_shows_each_image_both_ways_in_two_epochs() -> None:
    loop = _fast_loop(epochs=2, augment={"flip": "alternate"}, batch_size=64)
    seen: list[torch.Tensor] = []
    step_model = loop.step_model

    def recording(x: torch.Tensor) -> torch.Tensor:
        seen.append(x.detach().clone())
        return step_model(x)

    loop.step_model = recording
    orders = []
    for epoch in range(2):
        state = loop.batches.gen.get_state()
        orders.append(torch.randperm(64, generator=loop.batches.gen))  # the epoch's shuffle
        loop.batches.gen.set_state(state)
        train.train_epoch(loop, epoch)
    images = loop.batches.images.float() / 255
    flipped = []
    for x, order in zip(seen, orders, strict=True):
        x = x.contiguous()
        by_image = torch.empty_like(x)
        by_image[order] = x
        assert all(
            torch.equal(by_image[i], images[i]) or torch.equal(by_image[i], images[i].flip(2))
            for i in range(64)
        )
        flipped.append(torch.tensor([not torch.equal(by_image[i], images[i]) for i in range(64)]))
    assert torch.equal(flipped[0], loop.batches.flip_mask) and torch.equal(
        flipped[1], ~loop.batches.flip_mask
    )
    assert 16 < int(flipped[0].sum()) < 48


def test_reflect_crop_windows() -> None:
    x = torch.arange(2 * 3 * 4 * 4, dtype=torch.uint8).view(2, 3, 4, 4)
    out = batches.batch_crop(x, 2, torch.Generator().manual_seed(0), "reflect")
    for img_in, img_out in zip(x, out, strict=True):
        padded = torch.nn.functional.pad(img_in[None], (2, 2, 2, 2), mode="reflect")[0]
        windows = [padded[:, dy : dy + 4, dx : dx + 4] for dy in range(5) for dx in range(5)]
        assert any(torch.equal(img_out, w) for w in windows)


def test_triangle_schedule_is_airbenchs() -> None:
    f = [optim.lr_factor(s, 100, 0, "triangle") for s in range(101)]
    assert f[0] == pytest.approx(0.2) and f[23] == pytest.approx(1.0)
    assert max(range(101), key=f.__getitem__) == 23 and f[100] == pytest.approx(0.07)
    # A run of under 5 steps starts at 0.2x too, as the docs say, not at the peak.
    assert [optim.lr_factor(s, 3, 0, "triangle") for s in range(3)] == pytest.approx(
        [0.2, 1.0, 0.535]
    )


def test_tta_averages_mirrored_and_shifted_views() -> None:
    torch.manual_seed(0)
    net = tutorial_cnn(3, 16, "relu")
    x = torch.rand(5, 3, 16, 16)
    plain = Classifier(net, None, tta=0).eval()
    with torch.no_grad():
        base, mirror = plain(x), plain(x.flip(-1))
        assert torch.allclose(Classifier(net, None, tta=1).eval()(x), (base + mirror) / 2)
        padded = torch.nn.functional.pad(x, (1, 1, 1, 1), mode="reflect")
        up_left, down_right = padded[..., :16, :16], padded[..., 2:, 2:]
        shifted = sum(plain(v) + plain(v.flip(-1)) for v in (up_left, down_right)) / 4
        expected = 0.5 * (base + mirror) / 2 + 0.5 * shifted
        assert torch.allclose(Classifier(net, None, tta=2).eval()(x), expected, atol=1e-6)
        # Training sees the image as it is.
        assert torch.equal(Classifier(net, None, tta=2).train()(x), plain.net(x))


def test_amp_follows_the_param_and_the_hardware(monkeypatch: pytest.MonkeyPatch) -> None:
    cpu = torch.device("cpu")
    monkeypatch.setattr(precision, "cpu_computes_bf16", lambda: True)
    assert precision.autocast_dtype(cpu, amp=True) == torch.bfloat16
    assert precision.autocast_dtype(cpu, amp=False) is None
    monkeypatch.setattr(precision, "cpu_computes_bf16", lambda: False)  # emulated bf16 is slower
    assert precision.autocast_dtype(cpu, amp=True) is None


@pytest.mark.parametrize("variable", ["ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA"])
def test_a_onednn_isa_cap_without_bf16_trains_in_fp32(
    monkeypatch: pytest.MonkeyPatch, variable: str
) -> None:
    # A CPU with AVX512-BF16, capped to AVX2 as an AVX2 laptop computes: oneDNN would emulate bf16.
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: True, raising=False)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False, raising=False)
    monkeypatch.setattr(precision, "cpu_vendor", lambda: "AuthenticAMD")
    monkeypatch.delenv("ONEDNN_MAX_CPU_ISA", raising=False)
    monkeypatch.delenv("DNNL_MAX_CPU_ISA", raising=False)
    cpu = torch.device("cpu")
    assert precision.autocast_dtype(cpu, amp=True) == torch.bfloat16
    monkeypatch.setenv(variable, "AVX2")
    assert precision.autocast_dtype(cpu, amp=True) is None
    monkeypatch.setenv(variable, "avx512_core_bf16")
    assert precision.autocast_dtype(cpu, amp=True) == torch.bfloat16


@pytest.mark.parametrize(
    ("vendor", "avx512_bf16", "amx", "cap", "bf16"),
    [
        ("AuthenticAMD", True, False, "", True),  # Zen 4 on: bf16 scores in half fp32's time
        ("GenuineIntel", True, False, "", False),  # bf16 convolutions slower than fp32's
        ("GenuineIntel", True, True, "", True),  # AMX: 2.2x the fp32 loop's images/s
        ("GenuineIntel", True, True, "AVX512_CORE_BF16", False),  # oneDNN held below AMX
        ("GenuineIntel", False, False, "", False),
        ("AuthenticAMD", False, False, "", False),
        ("", True, False, "", False),  # no /proc/cpuinfo: fp32, never a slower bf16
    ],
)
def test_cpu_bf16_where_it_was_measured_faster(
    monkeypatch: pytest.MonkeyPatch, vendor: str, avx512_bf16: bool, amx: bool, cap: str, bf16: bool
) -> None:
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: avx512_bf16, raising=False)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx, raising=False)
    monkeypatch.setattr(precision, "cpu_vendor", lambda: vendor)
    monkeypatch.delenv("DNNL_MAX_CPU_ISA", raising=False)
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", cap)
    expected = torch.bfloat16 if bf16 else None
    assert precision.autocast_dtype(torch.device("cpu"), amp=True) == expected


def test_the_cpu_vendor_is_read_from_proc_cpuinfo() -> None:
    path = Path("/proc/cpuinfo")
    if not path.is_file():
        pytest.skip("no /proc/cpuinfo on this system")
    listed = {line.split(":", 1)[1].strip() for line in path.read_text().splitlines()
              if line.startswith("vendor_id")}  # fmt: skip
    assert precision.cpu_vendor() in listed | ({""} if not listed else set())


def test_a_last_batch_of_one_image_joins_the_batch_before() -> None:
    # resnet18's last block has a 1x1 map at 32 px: BatchNorm cannot train on one image there.
    torch.manual_seed(0)
    x = torch.randint(0, 256, (17, 3, 32, 32), dtype=torch.uint8)
    y = torch.arange(17) % 2
    model = train.place_model(build_model("resnet18", 2, 32), torch.device("cpu"), TrainConfig())
    config = TrainConfig(epochs=1, batch_size=16, log_every=1000)
    loop = train.make_loop(model, x, y, config, torch.device("cpu"))
    assert loop.batches.steps_per_epoch == 1
    assert [(b.size, b.seen) for b in loop.batches.epoch(0)] == [(17, 17)]
    assert torch.isfinite(train.train_epoch(loop, 0))
    # Any other remainder keeps its own last batch.
    loop = train.make_loop(
        model, x[:16], y[:16], TrainConfig(epochs=1, batch_size=6), torch.device("cpu")
    )
    assert [(b.size, b.seen) for b in loop.batches.epoch(0)] == [(6, 6), (6, 12), (4, 16)]


def test_checkpoint_fingerprint_reads_the_starting_weights(processed: Path) -> None:
    from visionpipe import checkpoints

    start = processed / "start.pt"
    torch.save(build_model("tutorial_cnn", 3, 16).net.state_dict(), start)
    params = tiny_params({"weights": str(start)})
    before = checkpoints.fingerprint(params)
    torch.save(build_model("tutorial_cnn", 3, 16).net.state_dict(), start)  # other weights
    assert checkpoints.fingerprint(params) != before


def test_a_checkpoint_of_other_code_is_not_resumed(
    processed: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Stopped, the loop fixed, run again: resuming would finish with epochs of both codes in
    # one model, which dvc.lock then records as the new code's.
    loop_code = processed / "train.py"
    loop_code.write_text("lr = 0.1\n")
    monkeypatch.setattr(checkpoints, "code_files", lambda: [loop_code])
    params = tiny_params()
    before = checkpoints.fingerprint(params)
    loop_code.write_text("lr = 0.01\n")
    assert checkpoints.fingerprint(params) != before


def test_train_s_code_is_what_dvc_yaml_lists_as_train_s_deps(
    processed: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The files DVC re-runs train for, and no others: a comment added to serve.py (no dep of
    # train) leaves a stopped run resumable, as DVC leaves train's outputs alone.
    monkeypatch.chdir(ROOT)
    listed = paths.code_deps("train")
    assert checkpoints.code_files() == listed
    assert {Path(m.__file__).relative_to(ROOT) for m in (train, batches, optim)} <= set(listed)
    assert Path("stages/train.py") in listed
    assert Path("src/visionpipe/serve.py") not in listed
    monkeypatch.chdir(processed)
    Path("stages").mkdir()
    Path("stages/train.py").write_text("main()\n")
    Path("stages/serve.py").write_text("serve()\n")
    Path("dvc.yaml").write_text("stages:\n  train:\n    deps: [stages/train.py, data/processed]\n")
    params = tiny_params()
    before = checkpoints.fingerprint(params)
    Path("stages/serve.py").write_text("serve()  # a comment\n")
    assert checkpoints.fingerprint(params) == before
    Path("stages/train.py").write_text("main()  # a comment\n")
    assert checkpoints.fingerprint(params) != before


def test_outside_a_project_train_s_code_is_the_package_without_editors_files(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # No dvc.yaml here: every module of the package counts, but not an editor's lock file (a
    # dangling link, `.#optim.py`) nor a notebook's hidden copies, which would fail or sway it.
    monkeypatch.chdir(tmp_path)
    package = tmp_path / "visionpipe"
    (package / "config").mkdir(parents=True)
    (package / ".ipynb_checkpoints").mkdir()
    for name in ("checkpoints.py", "optim.py", "config/train.py", ".ipynb_checkpoints/optim.py"):
        (package / name).write_text("x = 1\n")
    (package / ".#optim.py").symlink_to("probe@host.12345:1765000000")
    monkeypatch.setattr(checkpoints, "__file__", str(package / "checkpoints.py"))
    assert checkpoints.code_files() == [
        package / "checkpoints.py",
        package / "config" / "train.py",
        package / "optim.py",
    ]


def test_a_run_removes_the_temporary_files_of_a_killed_save(processed: Path) -> None:
    # SIGKILL or the OOM killer during a save leaves `.last.pt.<random>.tmp`, as large as the
    # model and its optimizer state, in folders no DVC command cleans; the next run takes them.
    stale = [
        checkpoints.CHECKPOINT.parent / ".last.pt.k1lled.tmp",
        paths.MODEL.parent / ".model.pt.k1lled.tmp",
    ]
    for file in stale:
        file.parent.mkdir(parents=True, exist_ok=True)
        file.write_bytes(b"half a model")
    keep = paths.MODEL.parent / "notes.txt"  # anything else there is the user's
    keep.write_text("mine")
    train.run(tiny_params(epochs=1))
    assert [f for f in stale if f.exists()] == []
    assert keep.read_text() == "mine" and paths.MODEL.is_file()


def test_an_empty_checkpoint_is_ignored_with_its_reason(
    processed: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from visionpipe import checkpoints

    checkpoints.CHECKPOINT.parent.mkdir(parents=True, exist_ok=True)
    checkpoints.CHECKPOINT.write_bytes(b"")  # a disk that filled up mid-write
    assert checkpoints._read("any") is None
    assert "EOFError" in caplog.text


def test_a_checkpoint_that_fails_half_way_leaves_a_fresh_start() -> None:
    from visionpipe import checkpoints

    def trainee(trained: bool) -> checkpoints.Trainee:
        torch.manual_seed(0)
        x = torch.randint(0, 256, (8, 3, 16, 16), dtype=torch.uint8)
        loop = train.make_loop(
            build_model("tutorial_cnn", 2, 16),
            x,
            torch.arange(8) % 2,
            TrainConfig(epochs=2, batch_size=4, momentum=0.9),
            torch.device("cpu"),
        )
        if trained:
            train.train_epoch(loop, 0)
        return loop.trainee()

    old = trainee(trained=True)
    ckpt = checkpoints.Checkpoint(
        progress.Progress(1),
        old.model.state_dict(),
        old.optimizer.state_dict(),  # fits, and holds momentum buffers ...
        {"last_epoch": 4},  # ... but the schedule's state is of another version
        {},
        None,
        {},
    )
    new = trainee(trained=False)
    weights = {k: v.clone() for k, v in new.model.state_dict().items()}
    assert not checkpoints.restore(ckpt, new)
    assert not new.optimizer.state, "a fresh start must not keep the checkpoint's momentum"
    assert all(torch.equal(weights[k], v) for k, v in new.model.state_dict().items())


def test_fine_tuning_fast_keeps_the_loaded_whitening(processed: Path) -> None:
    train.run(tiny_params(FAST_MODEL, **{**FAST_TRAIN, "epochs": 1, "lookahead": False}))
    start = processed / "start.pt"
    paths.MODEL.rename(start)
    loaded = torch.load(start, weights_only=True)["state_dict"]
    assert loaded["net.whiten.bias"].abs().sum() > 0  # trained in its first epoch
    # An lr of about 0: the tuned model is what it loaded, whitening included.
    model = {**FAST_MODEL, "weights": str(start)}
    train.run(tiny_params(model, **{**FAST_TRAIN, "epochs": 1, "lookahead": False, "lr": 1e-30}))
    tuned = _weights()
    for name in ("net.whiten.weight", "net.whiten.bias"):
        assert torch.allclose(tuned[name], loaded[name]), name


def test_batches_of_one_image_batchnorm_cannot_train_on_are_refused_before_a_step(
    processed: Path,
) -> None:
    # fast at 16 px: its last conv group's BatchNorm sees a 1x1 map.
    with pytest.raises(train.BatchNormBatchError) as err:
        train.run(tiny_params({"name": "fast"}, batch_size=1, epochs=1))
    for text in ("train.batch_size 1", "'fast'", "16 px", "Set train.batch_size to 2 or more"):
        assert text in str(err.value)
    assert not (processed / paths.MODEL).exists()
    # BatchNorm on the tutorial CNN's 16x16 maps trains on one image, as does fast on two.
    train.run(tiny_params({"name": "tutorial_cnn", "batch_norm": True}, batch_size=1, epochs=1))
    train.run(tiny_params({"name": "fast"}, batch_size=2, epochs=1))


def test_a_train_split_of_one_image_is_said_to_need_more_images_not_a_batch_size() -> None:
    params = parse_params({"model": {"name": "fast"}, "train": {"batch_size": 256}})
    x, y = torch.zeros(1, 3, 16, 16, dtype=torch.uint8), torch.zeros(1).long()
    loader = batches.Batches(
        x, y, params.train, torch.device("cpu"), torch.Generator(), distributed.Dist(0, 1)
    )
    with pytest.raises(train.BatchNormBatchError) as err:
        train.check_batch_norm_batch(build_model("fast", 10, 16), params, 16, loader)
    assert "with 1 training image leaves a batch of one image" in str(err.value)
    assert "Add training images, or lower data.test_fraction" in str(err.value)
    assert "train.batch_size to" not in str(err.value)


@pytest.mark.parametrize(("n_train", "refused"), [(98, True), (96, False)])
def test_a_process_s_shard_of_one_image_is_refused_before_a_step(
    n_train: int, refused: bool
) -> None:
    # 3 processes, batches of 16: 98 images end in a batch of 2, of which rank 1 takes one
    # (rank r takes r::3); 96 give each rank 5 or 6 of every batch.
    params = parse_params({"model": {"name": "fast"}, "train": {"batch_size": 16}})
    model = build_model("fast", 10, 16)
    x, y = torch.zeros(n_train, 3, 16, 16, dtype=torch.uint8), torch.zeros(n_train).long()
    ddp = distributed.Dist(rank=0, world_size=3)
    gen = torch.Generator()
    loader = batches.Batches(x, y, params.train, torch.device("cpu"), gen, ddp)
    if not refused:
        train.check_batch_norm_batch(model, params, 16, loader)
        return
    with pytest.raises(train.BatchNormBatchError) as err:
        train.check_batch_norm_batch(model, params, 16, loader)
    assert "shared by 3 processes" in str(err.value) and "6 images or more" in str(err.value)
