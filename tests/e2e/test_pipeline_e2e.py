"""End to end: the real DVC commands a user types, on tiny data the test makes (and real data)."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from tests.helpers import (
    CIFAR_JPEG_ZIP,
    HYMENOPTERA_ZIP,
    Baseline,
    dvc,
    env,
    git,
    make_project,
    run,
    set_params,
    subset_zip,
)
from visionpipe import paths
from visionpipe.cifar_pickle import CLASSES

pytestmark = pytest.mark.slow

EPOCHS_TO_KILL = 12


def _outs_hashes(repo: Path) -> dict[str, str]:
    lock = yaml.safe_load((repo / "dvc.lock").read_text())
    return {
        f"{stage}:{out['path']}": out.get("md5") or out.get("hash", "")
        for stage, body in lock["stages"].items()
        for out in body.get("outs", [])
    }


def _check_first_repro(baseline: Baseline, repo: Path) -> None:
    """What a fresh project's first `dvc repro` wrote, its archive fetched over HTTP."""
    for stage in ("download", "preprocess", "train", "evaluate", "export", "predict"):
        assert f"Running stage '{stage}'" in baseline.repro
    assert "/cifar-10-python.tar.gz" in baseline.server.requests
    meta = json.loads((repo / "data/processed/meta.json").read_text())
    assert meta["classes"] == list(CLASSES)
    assert meta["counts"] == {"train": 180, "val": 20, "test": 60}
    evaluation = json.loads((repo / paths.EVAL_METRICS).read_text())
    assert evaluation["test_images"] == 60
    assert not any(key.startswith("per_class") for key in evaluation)  # files, not columns
    recall = json.loads((repo / "dvclive/eval/plots/custom/per_class_recall.json").read_text())
    assert {row["class"] for row in recall} == set(CLASSES)
    per_class = json.loads((repo / "metrics/per_class.json").read_text())["classes"]
    assert [c["class"] for c in per_class] == list(CLASSES)
    assert sum(c["support"] for c in per_class) == 60
    exported = json.loads((repo / "metrics/export.json").read_text())
    assert exported["top1_agreement"] == 1.0
    assert exported["max_abs_logit_diff"] <= 1e-4
    preds = json.loads((repo / "predictions/predictions.json").read_text())
    assert len(preds) == 10 and all(p["error"] is None and len(p["top"]) == 3 for p in preds)
    assert (repo / "predictions/grid.png").stat().st_size > 1000
    epochs = (repo / "metrics/plots/epochs.csv").read_text().splitlines()
    assert epochs[0].startswith("epoch,train_loss,val_loss,val_accuracy") and len(epochs) == 3
    assert any((repo / "logs/tensorboard").glob("events.out.tfevents.*"))


def test_official_format_over_http_repro_exp_metrics_plots(
    baseline: Baseline, baselined_repo: Path
) -> None:
    repo = baselined_repo
    _check_first_repro(baseline, repo)

    # Nothing changed: DVC only checks, running no stage (bench/stage_times.py times it).
    out = dvc(repo, "repro").stdout
    assert "Running stage" not in out

    # A new lr retrains without re-downloading or re-decoding: the server sees no request.
    fetched = len(baseline.server.requests)
    out = dvc(repo, "exp", "run", "-n", "lr-small", "-S", "train.lr=0.001").stdout
    assert "Running stage 'download'" not in out and "Running stage 'preprocess'" not in out
    assert "Running stage 'train'" in out
    assert len(baseline.server.requests) == fetched, baseline.server.requests[fetched:]
    params = dvc(repo, "params", "diff", "HEAD").stdout
    assert "train.lr" in params and "0.001" in params

    # DVC refuses `-S train.lr_rate=0.1` itself, but takes `+train.lr_rate` (or a hand edit of
    # params.yaml) silently: the first stage that runs must catch it, naming the key.
    refused = dvc(repo, "exp", "run", "-S", "train.lr_rate=0.1", check=False)
    assert refused.returncode != 0 and "lr_rate" in refused.stderr
    typo = dvc(repo, "exp", "run", "-S", "+train.lr_rate=0.1", check=False)
    assert typo.returncode != 0
    assert "unknown key 'train.lr_rate'" in typo.stdout + typo.stderr
    # A model knob the chosen model does not have is caught the same way, by the first stage.
    git(repo, "checkout", "params.yaml")
    knob = dvc(
        repo, "exp", "run", "-S", "model.name=fast", "-S", "model.activation=relu", check=False
    )
    assert knob.returncode != 0 and "Running stage 'train'" in knob.stdout
    assert "model.activation = \"relu\" does not apply to model 'fast'" in knob.stdout + knob.stderr
    git(repo, "checkout", "params.yaml")

    shown = dvc(repo, "metrics", "show", "--json").stdout
    assert "test_acc" in shown
    exps = dvc(repo, "exp", "show", "--json").stdout
    assert "lr-small" in exps

    dvc(repo, "plots", "diff", "HEAD", "-o", "plots_out")
    html = (repo / "plots_out" / "index.html").read_text()
    assert "vegaEmbed" in html and "cdn.jsdelivr" not in html
    assert "Confusion" in html or "confusion" in html
    assert html.count("workspace") >= 1


def test_repro_is_deterministic_on_cpu(baselined_repo: Path) -> None:
    repo = baselined_repo
    first = _outs_hashes(repo)
    assert dvc(repo, "status").stdout.strip().endswith("up to date.")
    dvc(repo, "repro", "-f")  # every stage again, the download too
    second = _outs_hashes(repo)
    timings = {k for k in first if "timings" in k or "tensorboard" in k}
    assert {k: v for k, v in first.items() if k not in timings} == {
        k: v for k, v in second.items() if k not in timings
    }
    assert "up to date" in dvc(repo, "status").stdout
    dag = dvc(repo, "dag").stdout
    for stage in ("download", "preprocess", "train", "evaluate", "export", "predict"):
        assert stage in dag


@pytest.mark.realdata
@pytest.mark.skipif(
    not CIFAR_JPEG_ZIP.is_file(), reason="../shared/datasets/cifar10-jpeg.zip absent"
)
def test_real_cifar_subset_learns(tmp_path: Path) -> None:
    source = subset_zip(CIFAR_JPEG_ZIP, tmp_path / "cifar-subset.zip", {"train": 300, "test": 50})
    repo = make_project(
        tmp_path / "repo",
        {
            "data": {"source": str(source)},
            "model": {"activation": "relu"},
            "train": {"epochs": 4, "batch_size": 32, "optimizer": "sgd", "momentum": 0.9},
        },
    )
    dvc(repo, "repro")
    meta = json.loads((repo / "data/processed/meta.json").read_text())
    assert meta["counts"] == {"train": 2700, "val": 300, "test": 500}
    acc = json.loads((repo / paths.EVAL_METRICS).read_text())["test_acc"]
    assert acc > 0.2, f"test accuracy {acc} is no better than chance (0.1) on real images"


def test_sigkilled_training_resumes_on_next_repro(baselined_repo: Path) -> None:
    # Epochs of 23 steps (180 images, batch 8): the kill lands between the first checkpoint and
    # the end.
    repo = baselined_repo
    set_params(repo, {"train": {"epochs": EPOCHS_TO_KILL, "batch_size": 8, "log_every": 50}})
    checkpoint = repo / "checkpoints" / "last.pt"
    proc = subprocess.Popen(
        [sys.executable, "-m", "dvc", "repro"],
        cwd=repo,
        env=env(),
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 300
    while not checkpoint.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)  # power loss: no cleanup runs
    proc.wait()
    assert checkpoint.exists(), "training never reached its first checkpoint"
    assert not (repo / "models/model.pt").exists(), "killed early enough to test a resume"

    out = dvc(repo, "repro").stdout
    assert "Running stage 'train'" in out
    timings = json.loads((repo / "metrics/timings/train.json").read_text())
    assert timings["resumed_from_epoch"] >= 1
    epochs = (repo / "metrics/plots/epochs.csv").read_text().splitlines()
    assert len(epochs) == 1 + EPOCHS_TO_KILL, "the resumed history has the epochs before the kill"
    # DVC deleted the interrupted run's logs before the resume; they are rebuilt from the
    # checkpoint's history, every epoch once.
    curve = (repo / paths.LIVE_TRAIN / "plots/metrics/val_acc.tsv").read_text().splitlines()
    assert [row.split("\t")[0] for row in curve[1:]] == [
        str(e) for e in range(1, EPOCHS_TO_KILL + 1)
    ], curve
    assert "up to date" in dvc(repo, "status").stdout


def test_a_run_stopped_after_its_last_epoch_writes_every_output_on_the_next_repro(
    baselined_repo: Path,
) -> None:
    # Stopped after its last epoch's checkpoint, while writing its outputs, or after the stage,
    # while DVC hashes and caches them: the next `dvc repro` trains nothing, and must still
    # write every output dvc.yaml declares, the misclassified grid (drawn after each epoch)
    # among them. The stop is made exact: the stage run by hand, which DVC never records.
    repo = baselined_repo
    set_params(repo, {"train": {"epochs": 3}})  # params the run cache has no entry for
    run([sys.executable, "stages/train.py"], repo, env={**env(), "PYTHONPATH": "src"})
    assert (repo / "checkpoints/last.pt").exists()
    grid = repo / paths.LIVE_TRAIN / "plots/images" / paths.LIVE_MISCLASSIFIED_NAME
    drawn = grid.read_bytes()

    proc = dvc(repo, "repro", check=False)
    said = proc.stdout + proc.stderr
    assert proc.returncode == 0, said[-3000:]
    assert "after epoch 3 of 3" in said and "epoch 1/3" not in said, said[-3000:]
    assert grid.read_bytes() == drawn, "the grid is the last epoch's"
    assert "up to date" in dvc(repo, "status").stdout
    # dvc.lock holds the run now: forced, it trains anew.
    forced = dvc(repo, "repro", "-f", "-s", "train")
    said = forced.stdout + forced.stderr
    assert "epoch 1/3" in said and "resuming" not in said, said[-3000:]


def test_the_model_a_refused_experiment_deleted_comes_back_as_predict_says(
    baselined_repo: Path,
) -> None:
    # DVC deletes train's outputs as the stage starts, so a param train refuses leaves no
    # model.pt; `dvc repro train` would only refuse it again.
    repo = baselined_repo
    model = (repo / paths.MODEL).read_bytes()
    refused = dvc(repo, "exp", "run", "-S", "train.epochs=0", check=False)
    assert refused.returncode != 0 and "'train.epochs' = 0" in refused.stdout + refused.stderr
    assert not (repo / paths.MODEL).exists()
    photo = next((repo / paths.SAMPLES_DIR).glob("*.png"))
    cli = [sys.executable, "-m", "visionpipe.cli", "predict", str(photo), "--backend", "torch"]
    missing = run(cli, repo, check=False)
    advice = re.search(r"'uv run dvc (checkout[^']*)'", missing.stderr)
    assert missing.returncode == 2 and advice, missing.stderr
    dvc(repo, *advice[1].split())
    assert (repo / paths.MODEL).read_bytes() == model
    run(cli, repo)


def _check_hymenoptera(repo: Path) -> None:
    meta = json.loads((repo / "data/processed/meta.json").read_text())
    assert meta["classes"] == ["ants", "bees"] and meta["test_split_source"] == "val"
    assert meta["counts"]["test"] == 153 and meta["counts"]["train"] + meta["counts"]["val"] == 245
    assert json.loads((repo / paths.EVAL_METRICS).read_text())["test_images"] == 153
    preds = json.loads((repo / "predictions/predictions.json").read_text())
    assert [Path(p["file"]).name for p in preds] == ["00_ants.png", "01_bees.png"]


@pytest.mark.realdata
@pytest.mark.skipif(not HYMENOPTERA_ZIP.is_file(), reason="../shared hymenoptera_data.zip absent")
def test_hymenoptera_through_mirror_and_through_source(tmp_path: Path) -> None:
    repo = make_project(
        tmp_path / "repo",
        {
            "preprocess": {"image_size": 32},
            "train": {"epochs": 1, "batch_size": 32},
        },
    )
    mirror = {**env(), "DATA_MIRROR": str(HYMENOPTERA_ZIP.parent)}
    out = dvc(repo, "exp", "run", "-S", "data.dataset=hymenoptera", env=mirror).stdout
    for stage in ("download", "preprocess", "train", "evaluate", "export", "predict"):
        assert f"Running stage '{stage}'" in out
    _check_hymenoptera(repo)
    processed = _outs_hashes(repo)["preprocess:data/processed"]

    # The same zip as data.source: fetched and decoded again into the same arrays, so what the
    # mirror's run trained from them, still in the workspace, stands.
    source = f"data.source={HYMENOPTERA_ZIP}"
    out = dvc(repo, "exp", "run", "-S", "data.dataset=hymenoptera", "-S", source).stdout
    assert "Running stage 'download'" in out and "Running stage 'preprocess'" in out
    assert _outs_hashes(repo)["preprocess:data/processed"] == processed
    for stage in ("train", "evaluate", "export", "predict"):
        assert f"Stage '{stage}' didn't change, skipping" in out, out
    _check_hymenoptera(repo)


def test_a_folder_source_that_a_mac_or_a_nas_has_opened_reruns_nothing(tmp_path: Path) -> None:
    """The photos of a folder source, then a Mac's .DS_Store and a NAS's @eaDir/ thumbnails
    beside them: the download forced again packs the same data/raw, so preprocess and the
    data.sha256 pinned before both stand."""
    photos = tmp_path / "photos"
    rng = np.random.default_rng(0)
    for cls in ("ants", "bees"):
        (photos / cls).mkdir(parents=True)
        for i in range(6):
            pixels = rng.integers(0, 256, (20, 20, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(photos / cls / f"{i}.png")
    repo = make_project(tmp_path / "repo", {"preprocess": {"image_size": 16}})
    data = ("-S", "data.dataset=imagefolder", "-S", f"data.source={photos}")
    dvc(repo, "exp", "run", *data, "preprocess")
    sha256 = json.loads((repo / "data" / "raw" / "source.json").read_text())["sha256"]
    (photos / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")
    (photos / "ants" / "@eaDir" / "0.png").mkdir(parents=True)
    (photos / "ants" / "@eaDir" / "0.png" / "SYNOPHOTO_THUMB_M.jpg").write_bytes(b"thumbnail")
    dvc(repo, "repro", "-f", "-s", "download")  # what docs/datasets.md says after a change
    out = dvc(repo, "repro", "preprocess").stdout
    assert "Stage 'preprocess' didn't change, skipping" in out, out
    # The checksum taken before holds: the download does not stop on a mismatch.
    dvc(repo, "exp", "run", *data, "-S", f"data.sha256={sha256}", "download")
