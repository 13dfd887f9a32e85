"""End to end: the real DVC commands a user types, on tiny data the test makes (and real data)."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from tests.cifar_archive import write_cifar_python_archive
from tests.helpers import (
    CIFAR_JPEG_ZIP,
    HYMENOPTERA_ZIP,
    dvc,
    env,
    git,
    http_server,
    make_project,
    subset_zip,
)
from visionpipe import paths
from visionpipe.cifar_pickle import CLASSES

pytestmark = pytest.mark.slow

TINY_TRAIN = {"epochs": 2, "batch_size": 16, "log_every": 5}


def _outs_hashes(repo: Path) -> dict[str, str]:
    lock = yaml.safe_load((repo / "dvc.lock").read_text())
    return {
        f"{stage}:{out['path']}": out.get("md5") or out.get("hash", "")
        for stage, body in lock["stages"].items()
        for out in body.get("outs", [])
    }


def test_official_format_over_http_repro_exp_metrics_plots(tmp_path: Path) -> None:
    served = tmp_path / "served"
    served.mkdir()
    archive = served / "cifar-10-python.tar.gz"
    write_cifar_python_archive(archive, n_train_per_batch=40, n_test=60, seed=1)
    sha256 = hashlib.sha256(archive.read_bytes()).hexdigest()

    with http_server(served) as base:
        repo = make_project(
            tmp_path / "repo",
            {
                "data": {"source": f"{base}/cifar-10-python.tar.gz", "sha256": sha256},
                "train": TINY_TRAIN,
            },
        )
        out = dvc(repo, "repro").stdout

    for stage in ("download", "preprocess", "train", "evaluate", "export", "predict"):
        assert f"Running stage '{stage}'" in out
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

    git(repo, "add", "-A")
    git(repo, "commit", "-qm", "baseline run")

    # Nothing changed: DVC only checks, quickly.
    started = time.perf_counter()
    out = dvc(repo, "repro").stdout
    assert "Running stage" not in out
    assert time.perf_counter() - started < 30

    # A new lr retrains without re-downloading or re-decoding (the HTTP server is gone now).
    out = dvc(repo, "exp", "run", "-n", "lr-small", "-S", "train.lr=0.001").stdout
    assert "Running stage 'download'" not in out and "Running stage 'preprocess'" not in out
    assert "Running stage 'train'" in out
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


def test_repro_is_deterministic_on_cpu(tmp_path: Path) -> None:
    archive = tmp_path / "cifar-10-python.tar.gz"
    write_cifar_python_archive(archive, n_train_per_batch=20, n_test=30, seed=2)
    repo = make_project(tmp_path / "repo", {"data": {"source": str(archive)}, "train": TINY_TRAIN})
    dvc(repo, "repro")
    first = _outs_hashes(repo)
    assert dvc(repo, "status").stdout.strip().endswith("up to date.")
    dvc(repo, "repro", "-f")
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


def test_sigkilled_training_resumes_on_next_repro(tmp_path: Path) -> None:
    archive = tmp_path / "cifar-10-python.tar.gz"
    write_cifar_python_archive(archive, n_train_per_batch=100, n_test=20, seed=3)
    repo = make_project(
        tmp_path / "repo",
        {
            "data": {"source": str(archive)},
            "train": {"epochs": 6, "batch_size": 8, "log_every": 50},
        },
    )
    dvc(repo, "repro", "preprocess")
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
    assert len(epochs) == 1 + 6, "the resumed run's history includes the epochs before the kill"
    # DVC deleted the interrupted run's logs before the resume; they are rebuilt from the
    # checkpoint's history, every epoch once.
    curve = (repo / paths.LIVE_TRAIN / "plots/metrics/val_acc.tsv").read_text().splitlines()
    assert [row.split("\t")[0] for row in curve[1:]] == [str(e) for e in range(1, 7)], curve
    assert "up to date" in dvc(repo, "status").stdout


@pytest.mark.realdata
@pytest.mark.skipif(not HYMENOPTERA_ZIP.is_file(), reason="../shared hymenoptera_data.zip absent")
@pytest.mark.parametrize("route", ["mirror", "source"])
def test_hymenoptera_through_mirror_or_source(tmp_path: Path, route: str) -> None:
    repo = make_project(
        tmp_path / "repo",
        {
            "preprocess": {"image_size": 32},
            "train": {"epochs": 1, "batch_size": 32},
        },
    )
    run_env = env()
    if route == "mirror":
        run_env["DATA_MIRROR"] = str(HYMENOPTERA_ZIP.parent)
        args = ["exp", "run", "-S", "data.dataset=hymenoptera"]
    else:
        args = [
            "exp",
            "run",
            "-S",
            "data.dataset=hymenoptera",
            "-S",
            f"data.source={HYMENOPTERA_ZIP}",
        ]
    out = dvc(repo, *args, env=run_env).stdout
    for stage in ("download", "preprocess", "train", "evaluate", "export", "predict"):
        assert f"Running stage '{stage}'" in out
    meta = json.loads((repo / "data/processed/meta.json").read_text())
    assert meta["classes"] == ["ants", "bees"] and meta["test_split_source"] == "val"
    assert meta["counts"]["test"] == 153 and meta["counts"]["train"] + meta["counts"]["val"] == 245
    assert json.loads((repo / paths.EVAL_METRICS).read_text())["test_images"] == 153
    preds = json.loads((repo / "predictions/predictions.json").read_text())
    assert [Path(p["file"]).name for p in preds] == ["00_ants.png", "01_bees.png"]
