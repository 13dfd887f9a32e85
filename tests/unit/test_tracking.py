"""What a run records: DVCLive's live files, replayed on resume, and the images it draws."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import yaml

from tests.datasets import kill_at_validation, tiny_params
from tests.helpers import ROOT
from visionpipe import paths, train
from visionpipe.config.params import Params, parse_params
from visionpipe.models import build_model
from visionpipe.split_tensors import read_meta
from visionpipe.tracking import (
    EpochRecord,
    History,
    Tracker,
    log_model_start,
    make_grid,
    misclassified_grid,
    spread_over_classes,
)


def _rows(path: Path) -> list[list[str]]:
    return [line.split("\t") for line in path.read_text().splitlines()[1:]]


def test_dvclive_logs_every_epoch_once_and_keeps_exp_show_to_the_headline(
    processed: Path,
) -> None:
    train.run(tiny_params(epochs=3))
    live = processed / paths.LIVE_TRAIN
    summary = json.loads((live / "metrics.json").read_text())
    # Columns of `dvc exp show`: the epoch and the validation accuracy (how the run ended is in
    # metrics/train.json); the losses are curves only.
    assert set(summary) == {"step", "val_acc"}
    assert summary["step"] == 3
    for curve in ("train_loss", "val_loss", "val_acc"):
        steps = [row[0] for row in _rows(live / "plots" / "metrics" / f"{curve}.tsv")]
        assert steps == ["1", "2", "3"], curve
    assert (live / "plots" / "images" / paths.LIVE_MISCLASSIFIED_NAME).stat().st_size > 0


def test_before_the_first_epoch_every_live_file_dvc_reads_is_there(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # DVC deletes the train stage's outputs as it starts; `dvc plots show` and `dvc exp show`
    # (VS Code, Studio) poll them while it runs, and report a missing one as an error.
    monkeypatch.chdir(tmp_path)
    stage = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]["train"]
    read_live = [next(iter(entry)) for entry in stage["metrics"] + stage["plots"]]
    tracker = Tracker(enabled=True, history=History())
    try:
        for name in read_live:
            assert Path(name).exists(), f"{name} is missing until the first epoch ends"
        live = Path(paths.LIVE_TRAIN)
        assert json.loads((live / "metrics.json").read_text()) == {}
        assert (live / "plots" / "metrics" / "val_acc.tsv").read_text() == "step\tval_acc\n"
        assert (live / "plots" / "images" / paths.LIVE_MISCLASSIFIED_NAME).stat().st_size > 0
    finally:
        tracker.close()


def test_a_loss_near_zero_keeps_six_significant_digits_in_every_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # An overfitting run's losses fall to 1e-6 and below: six decimals would flatten its curves
    # to 0.000001. From 0.1 up, the files keep their six decimals.
    from visionpipe.progress import Progress

    monkeypatch.chdir(tmp_path)
    losses = [(0.523456789, 0.6234567891), (3.44512345e-06, 0.0123456789), (1.4541234e-06, 0.0)]
    progress = Progress()
    tracker = Tracker(enabled=True, history=progress.history)
    try:
        for epoch, (train_loss, val_loss) in enumerate(losses, 1):
            tracker.step(epoch, train_loss)
            record = EpochRecord(epoch, train_loss, val_loss, val_accuracy=0.5, lr=0.01)
            tracker.epoch(record)
            progress.update(record, patience=0)
    finally:
        tracker.close()
    epochs = (tmp_path / paths.PLOT_EPOCHS).read_text().splitlines()
    assert [line.split(",")[1:3] for line in epochs[1:]] == [
        ["0.523457", "0.623457"],
        ["3.44512e-06", "0.0123457"],
        ["1.45412e-06", "0.000000"],  # zero as the others from 0.1 up, not "0"
    ], epochs
    steps = (tmp_path / paths.PLOT_STEPS).read_text().splitlines()
    assert steps[1:] == ["1,0.523457", "2,3.44512e-06", "3,1.45412e-06"], steps
    live = tmp_path / paths.LIVE_TRAIN / "plots" / "metrics"
    assert [float(r[1]) for r in _rows(live / "train_loss.tsv")] == [
        0.523457,
        3.44512e-06,
        1.45412e-06,
    ]
    summary = progress.summary(3)
    assert (summary["train_loss"], summary["val_loss"], summary["best_val_loss"]) == (
        1.45412e-06,
        0.0,
        0.0,
    ), summary


def test_the_console_s_epoch_line_shows_a_loss_near_zero_in_four_significant_digits() -> None:
    from visionpipe.inference import loss_text

    losses = (0.523456, 0.0123456, 1.4541234e-05, 0.0, float("nan"), 0.099996, 4.53219e25)
    shown = [loss_text(v, 4) for v in losses]
    assert shown == ["0.5235", "0.01235", "1.454e-05", "0.0000", "nan", "0.1000", "4.532e+25"]


def _stop_at_epoch_3(params: Params, monkeypatch: pytest.MonkeyPatch) -> None:
    """Run `params` until power is lost at epoch 3's validation; the next run resumes."""
    real_eval = train.evaluate_split
    kill_at_validation(monkeypatch, 3)
    with pytest.raises(KeyboardInterrupt):
        train.run(params)
    monkeypatch.setattr(train, "evaluate_split", real_eval)


def test_a_resumed_run_replays_its_history_into_fresh_logs(
    processed: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    params = tiny_params(epochs=3)
    _stop_at_epoch_3(params, monkeypatch)
    train.run(params)  # the interrupted run's logs are still there: no epoch may double
    live = processed / paths.LIVE_TRAIN / "plots" / "metrics"
    assert [row[0] for row in _rows(live / "val_loss.tsv")] == ["1", "2", "3"]
    assert len(list((processed / paths.TB_DIR).glob("events.*"))) == 1


def _wall_times(folder: Path) -> dict[str, list[tuple[int, float]]]:
    """(step, wall time) of every scalar in a TensorBoard run, as TensorBoard reads them."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(folder))
    events.Reload()
    return {
        tag: [(e.step, e.wall_time) for e in events.Scalars(tag)]
        for tag in events.Tags()["scalars"]
    }


def test_a_resumed_run_replays_tensorboard_scalars_at_their_first_wall_times(
    processed: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # TensorBoard's Relative and Wall axes: the epochs before a stop stay where they were logged,
    # not bunched at the time of the resume.
    params = tiny_params(epochs=3)
    _stop_at_epoch_3(params, monkeypatch)
    before = _wall_times(processed / paths.TB_DIR)
    train.run(params)
    after = _wall_times(processed / paths.TB_DIR)
    assert [step for step, _ in after["val_loss"]] == [1, 2, 3]
    # What the checkpoint after epoch 2 holds: the rows logged up to that epoch's figures (the
    # stopped run's steps of epoch 3 are trained, and logged, again).
    checkpointed = before["val_loss"][1][1]
    for tag, logged in before.items():
        kept = [(step, t) for step, t in logged if t <= checkpointed]
        assert len(kept) >= 2 and after[tag][: len(kept)] == kept, tag
    times = [t for _, t in after["val_loss"]]
    assert times == sorted(times)


def test_tensorboard_s_hparams_tab_has_the_run_s_params_and_final_val_figures(
    processed: Path,
) -> None:
    # Runs side by side in TensorBoard (README, TensorBoard) compare in its HParams tab: read
    # as TensorBoard reads it, the run holds its params and names the scalars to show with them.
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams import metadata

    train.run(tiny_params(epochs=2, lr=0.02, augment={"flip": True}))
    events = EventAccumulator(str(processed / paths.TB_DIR))
    events.Reload()
    content = events.PluginTagToContent(metadata.PLUGIN_NAME)
    start = metadata.parse_session_start_info_plugin_data(content[metadata.SESSION_START_INFO_TAG])
    hparams = {k: v.number_value or v.string_value for k, v in start.hparams.items()}
    assert hparams["train.lr"] == 0.02 and hparams["train.epochs"] == 2
    assert hparams["train.augment.flip"] == "true" and hparams["model.name"] == "tutorial_cnn"
    assert hparams["data.sha256"] == "null" and hparams["recipe"] == "tutorial"
    # A null preprocess.image_size shows as the size preprocess made, a number as the others.
    assert tiny_params().preprocess.image_size is None
    assert hparams["preprocess.image_size"] == read_meta()["image_size"]
    summary = json.loads((processed / paths.LIVE_TRAIN / "metrics.json").read_text())
    assert summary["val_acc"] == round(summary["val_acc"], 6)  # not float32's 17 digits


def test_tensorboard_s_hparams_tab_opens_on_the_params_runs_differ_in(tmp_path: Path) -> None:
    # Runs side by side (README, "To compare experiments in TensorBoard"), as TensorBoard's own
    # server answers its HParams tab: the params that differ first, each marked as differing
    # (the tab shows the first five), and the runs' scalars as its metrics.
    from torch.utils.tensorboard import SummaryWriter

    from visionpipe.tracking import log_hparams

    for name, lr in (("lr-high", 0.1), ("lr-low", 0.01)):
        writer = SummaryWriter(str(tmp_path / "compare" / name))
        run = parse_params({"train": {"lr": lr}}).hparams(32)
        log_hparams(writer, run)
        writer.add_scalar("val_accuracy", lr * 5, 1)
        writer.close()
    experiment = _tensorboard_hparams_experiment(tmp_path / "compare")
    infos = experiment["hparamInfos"]
    assert [i["name"] for i in infos if i.get("differs")] == ["train.lr"]
    assert infos[0]["name"] == "train.lr" and infos[0]["type"] == "DATA_TYPE_FLOAT64"
    assert {m["name"]["tag"] for m in experiment["metricInfos"]} == {"val_accuracy"}


def test_hparams_name_where_the_data_came_from_and_model_pt_does_not() -> None:
    # A sweep over data.source differs in it alone: TensorBoard's table must show it, while
    # model.pt (run_dict) leaves it out, as train declares no data.source.
    params = parse_params({"data": {"dataset": "imagefolder", "source": "/home/me/photos"}})
    assert params.hparams(32)["data"]["source"] == "/home/me/photos"
    assert "source" not in params.run_dict()["data"]
    assert params.hparams(32)["train"] == params.run_dict()["train"]


def _tensorboard_hparams_experiment(logdir: Path) -> dict[str, Any]:
    """What `tensorboard --logdir` serves the HParams tab as its experiment."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [sys.executable, "-m", "tensorboard.main", "--logdir", str(logdir), "--port", str(port)]
    cmd += ["--host", "127.0.0.1", "--load_fast", "false"]
    server = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}/data/plugin/hparams/experiment"
    body = json.dumps({"experimentName": "", "includeMetrics": True}).encode()
    headers = {"Content-Type": "application/json", "X-XSRF-Protected": "1"}
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                request = urllib.request.Request(url, body, headers)
                with urllib.request.urlopen(request, timeout=10) as answer:
                    experiment = json.loads(answer.read())
                if experiment.get("hparamInfos"):  # the first answer may precede loading
                    return experiment
            except OSError:
                pass  # not listening yet
            assert time.monotonic() < deadline, "tensorboard did not answer in 60 s"
            time.sleep(0.5)
    finally:
        server.kill()
        server.wait()


def _hparams_status(folder: Path) -> str | None:
    """The run's status in TensorBoard's HParams tab, None while it has no session end."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams import api_pb2, metadata

    events = EventAccumulator(str(folder))
    events.Reload()
    content = events.PluginTagToContent(metadata.PLUGIN_NAME)
    if metadata.SESSION_END_INFO_TAG not in content:
        return None
    end = metadata.parse_session_end_info_plugin_data(content[metadata.SESSION_END_INFO_TAG])
    return api_pb2.Status.Name(end.status)


def test_tensorboard_s_hparams_status_says_how_the_run_ended(
    processed: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Killed during its last epoch: no end yet, as for a run still training (not a success).
    params = tiny_params(epochs=3)
    _stop_at_epoch_3(params, monkeypatch)
    assert _hparams_status(processed / paths.TB_DIR) is None
    train.run(params)
    assert _hparams_status(processed / paths.TB_DIR) == "STATUS_SUCCESS"
    assert train.run(tiny_params(epochs=5, lr=100.0, momentum=0.99))["diverged"]
    assert _hparams_status(processed / paths.TB_DIR) == "STATUS_FAILURE"


class _Writer:
    """Keeps what TensorBoard's SummaryWriter would be given."""

    def __init__(self) -> None:
        self.images: dict[str, torch.Tensor] = {}

    def add_image(self, tag: str, image: torch.Tensor, step: int) -> None:
        self.images[tag] = image

    def add_graph(self, model: torch.nn.Module, x: torch.Tensor) -> None:
        pass


def test_the_input_grid_shows_every_class_of_a_split_in_class_order() -> None:
    # An image folder's train split is in class order: its first 32 images are one class.
    labels = torch.arange(10).repeat_interleave(8)
    images = (labels * 20).to(torch.uint8).view(-1, 1, 1, 1).expand(-1, 3, 16, 16).contiguous()
    tracker = Tracker(enabled=False, history=History())
    tracker.tb = _Writer()
    tracker.start(build_model("tutorial_cnn", 10, 16), images, labels, epoch=0)
    shown = set(tracker.tb.images["inputs"].unique().tolist())
    assert {20 * k for k in range(10)} <= shown


def test_misclassified_grid_captions_each_wrong_image() -> None:
    images = torch.randint(0, 256, (40, 3, 8, 8), dtype=torch.uint8)
    labels = torch.arange(40) % 3
    preds = labels.clone()
    classes = ["cat", "dog", "frog"]
    none_wrong = misclassified_grid(images, labels, preds, classes)
    preds[[1, 4]] = 0
    two_wrong = misclassified_grid(images, labels, preds, classes)
    assert two_wrong.size == none_wrong.size  # one row: the file exists even with none wrong
    assert two_wrong.tobytes() != none_wrong.tobytes()
    preds = (labels + 1) % 3  # all 40 wrong: the grid stops at `limit`, 6 to a row
    assert misclassified_grid(images, labels, preds, classes, limit=13).size == (
        two_wrong.width,
        3 * two_wrong.height,
    )


def test_misclassified_grid_shows_every_class_of_a_split_in_class_order() -> None:
    # Ten classes of 30 images each, in class order as the val split is; each image is one
    # flat colour that says its class, and every class has mistakes.
    labels = torch.arange(10).repeat_interleave(30)
    images = (labels * 20 + 30).to(torch.uint8)[:, None, None, None].expand(-1, 3, 8, 8)
    preds = labels.clone()
    preds[::2] = (labels[::2] + 1) % 10
    sheet = np.asarray(misclassified_grid(images, labels, preds, [str(c) for c in range(10)]))
    row = sheet.shape[0] // 4  # 24 images, 6 to a row
    shown = [int(sheet[r * row + 48, c * 96 + 48, 0]) for r in range(4) for c in range(6)]
    assert sorted(set(shown)) == [c * 20 + 30 for c in range(10)]
    assert shown[:10] == [c * 20 + 30 for c in range(10)]  # one of each class first


def test_spread_over_classes_takes_each_class_in_turn_in_split_order() -> None:
    indices = [3, 5, 8, 11, 12, 20, 21]
    classes = [0, 0, 0, 2, 1, 2, 2]
    assert spread_over_classes(indices, classes, 100) == [3, 12, 11, 5, 20, 8, 21]
    assert spread_over_classes(indices, classes, 4) == [3, 12, 11, 5]
    assert spread_over_classes([], [], 4) == []


def test_make_grid_lays_out_as_torchvision() -> None:
    torchvision = pytest.importorskip("torchvision")
    for shape in [(32, 3, 16, 16), (5, 1, 8, 8), (9, 3, 4, 4)]:
        x = torch.rand(*shape)
        assert torch.equal(make_grid(x), torchvision.utils.make_grid(x, nrow=8))


def test_a_diverged_model_s_feature_maps_are_drawn_black_not_nan() -> None:
    # A run resumed only to write its outputs logs its (NaN) model again; TensorBoard would cast
    # NaN to uint8 garbage, with numpy's RuntimeWarning in the stage's output.
    model = build_model("tutorial_cnn", 3, 16)
    conv = next(m for m in model.modules() if isinstance(m, torch.nn.Conv2d))
    with torch.no_grad():
        conv.weight.fill_(float("nan"))
    writer = _Writer()
    log_model_start(writer, model, torch.randint(0, 256, (4, 3, 16, 16), dtype=torch.uint8), 0)
    maps = [img for tag, img in writer.images.items() if tag.startswith("conv1_feature_maps/")]
    assert len(maps) == 4
    assert all(torch.isfinite(img).all() for img in maps)
