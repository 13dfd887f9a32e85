"""Evaluate: per-class precision, recall, F1 and support, and a class without test images."""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.datasets import CLASSES, tiny_params, write_processed
from visionpipe import evaluate, paths, precision, train
from visionpipe.inference import loss_and_accuracy
from visionpipe.split_files import SplitWriter


def test_scores_from_a_confusion_matrix() -> None:
    # Rows actual, columns predicted; "b" has no test images but was predicted once.
    cm = np.array([[3, 1, 0], [0, 0, 0], [1, 0, 5]])
    a, b, c = evaluate.per_class_scores(cm, ["a", "b", "c"])
    assert (a["support"], a["predicted"], a["precision"], a["recall"], a["f1"]) == (
        4, 4, 0.75, 0.75, 0.75,
    )  # fmt: skip
    assert (b["support"], b["predicted"], b["precision"], b["recall"], b["f1"]) == (
        0, 1, 0.0, None, None,
    )  # fmt: skip
    assert (c["precision"], c["recall"], c["f1"]) == (1.0, 0.833333, 0.909091)
    # As scikit-learn's f1_score(average="macro"): b, predicted though absent, counts with 0.
    assert evaluate.macro_f1([a, b, c]) == pytest.approx((0.75 + 0 + 10 / 11) / 3, abs=1e-6)
    assert evaluate.macro_f1([a, c]) == pytest.approx((0.75 + 10 / 11) / 2, abs=1e-6)


def test_many_classes_missing_from_test_are_counted_in_one_line(
    caplog: pytest.LogCaptureFixture,
) -> None:
    classes = [f"c{i}" for i in range(60)]
    cm = np.zeros((60, 60), dtype=np.int64)
    cm[0, 0] = cm[1, 1] = 3
    evaluate.warn_absent(evaluate.per_class_scores(cm, classes))
    (line,) = [r.getMessage() for r in caplog.records]
    assert line.startswith("no test images of 58 classes: no accuracy or recall for them")
    assert line.endswith("'c21' and 38 more")


def test_a_model_that_never_predicts_a_class_is_said_to(caplog: pytest.LogCaptureFixture) -> None:
    # A 90/10 set's collapsed model: all "normal", the best test_acc of a sweep, macro-F1 0.48.
    cm = np.array([[113, 0], [9, 0]])
    assert evaluate.warn_never_predicted(evaluate.per_class_scores(cm, ["normal", "abnormal"])) == [
        "abnormal"
    ]
    (line,) = [r.getMessage() for r in caplog.records]
    assert line.startswith(
        "the model predicts no test image as class 'abnormal' (9 of the 122 test images are of it)"
    )
    assert line.endswith(
        "uv run dvc metrics diff HEAD --all --targets metrics/per_class.json; docs/training.md)"
    )
    caplog.clear()
    evaluate.warn_never_predicted(evaluate.per_class_scores(np.array([[2, 0], [1, 0]]), ["a", "b"]))
    assert "(1 of the 3 test images is of it)" in caplog.text
    caplog.clear()
    # Predicting each class once at least, or nothing at all (diverged: said otherwise): no word.
    for seen in ([[110, 3], [5, 4]], [[0, 0], [0, 0]]):
        scores = evaluate.per_class_scores(np.array(seen), ["normal", "abnormal"], [113, 9])
        assert evaluate.warn_never_predicted(scores) == []
    many = np.diag([5] * 3 + [0] * 57)
    many[3:, 0] = 1
    assert len(evaluate.warn_never_predicted(evaluate.per_class_scores(many, CLASSES * 20))) == 57
    assert "as 57 classes (57 of the 72 test images are of them): 'cat', " in caplog.text


def test_a_class_missing_from_test_has_no_accuracy(
    processed: Path, caplog: pytest.LogCaptureFixture
) -> None:
    rng = np.random.default_rng(1)
    labels = np.arange(20) % 2  # cat and dog only: no frog in test
    images = rng.integers(0, 100, size=(20, 3, 16, 16), dtype=np.uint8)
    with SplitWriter(processed / paths.PROCESSED_DIR, "test", 16) as writer:
        writer.append(images, labels)
        writer.close()
    train.run(tiny_params(epochs=1))
    with caplog.at_level(logging.WARNING):
        metrics = evaluate.run("cpu", 16)
    assert "no test images of class 'frog'" in caplog.text
    assert set(metrics) == {"test_loss", "test_acc", "test_images"}
    assert json.loads(paths.EVAL_METRICS.read_text()) == metrics
    per_class = json.loads(paths.PER_CLASS.read_text())
    assert per_class["classes_without_test_images"] == ["frog"]
    frog = per_class["classes"][CLASSES.index("frog")]
    assert frog["support"] == 0 and frog["recall"] is None and frog["f1"] is None
    assert [c["support"] for c in per_class["classes"]] == [10, 10, 0]
    counted = [c["f1"] or 0 for c in per_class["classes"] if c["support"] or c["predicted"]]
    assert per_class["macro_f1"] == pytest.approx(sum(counted) / len(counted), abs=1e-6)
    # The pairs most confused, as the plot of many classes can no longer show them.
    off = [
        (n, a, p)
        for a, row in enumerate(
            json.loads(paths.CONFUSION_MATRIX.read_text())["rows_actual_cols_predicted"]
        )
        for p, n in enumerate(row)
        if a != p and n
    ]
    want = [
        (CLASSES[a], CLASSES[p], n) for n, a, p in sorted(off, key=lambda t: (-t[0], t[1], t[2]))
    ]
    got = [(c["actual"], c["predicted"], c["images"]) for c in per_class["most_confused"]]
    assert got == want[: evaluate.MOST_CONFUSED] and got, per_class["most_confused"]
    # The matrix, a row a line (a thousand classes' would be a million lines of one number).
    text = paths.CONFUSION_MATRIX.read_text()
    matrix = json.loads(text)
    assert matrix["classes"] == CLASSES
    rows = matrix["rows_actual_cols_predicted"]
    assert [sum(r) for r in rows] == [10, 10, 0]
    lines = [line.rstrip(",") for line in text.splitlines()[-2 - len(rows) : -2]]
    assert [f"    {json.dumps(r)}" for r in rows] == lines
    assert len(text.splitlines()) == len(CLASSES) + len(rows) + 6
    # The plots have no bar for an undefined figure (a 0 would read as "all wrong").
    plots = paths.LIVE_EVAL / "plots/custom"
    recall = json.loads((plots / "per_class_recall.json").read_text())
    assert [row["class"] for row in recall] == ["cat", "dog"]
    precision = json.loads((plots / "per_class_precision.json").read_text())
    assert {row["class"] for row in precision} <= {"cat", "dog", "frog"}
    # Each bar's count is what its figure is over, named as per_class.json names it: recall's,
    # the class's test images (support); precision's, the images predicted as it.
    for figure, rows, count in (
        ("recall", recall, "support"),
        ("precision", precision, "predicted"),
    ):
        of = {c["class"]: c[count] for c in per_class["classes"]}
        assert all(row.keys() == {"class", figure, count} for row in rows), rows
        assert all(row[count] == of[row["class"]] for row in rows), rows


@pytest.mark.parametrize("native", [True, False], ids=["bf16 CPU", "fp32-only CPU"])
def test_evaluate_amp_scores_in_bf16_only_where_the_cpu_computes_it(
    processed: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    native: bool,
) -> None:
    train.run(tiny_params(epochs=1))
    monkeypatch.setattr(precision, "cpu_computes_bf16", lambda: native)
    with caplog.at_level(logging.INFO):
        strict = evaluate.run("cpu", 16)
        assert "scoring 30 test images in fp32" in caplog.text
        # The run's headline, in the log `dvc repro` shows, as metrics/ has it.
        f1 = json.loads(paths.PER_CLASS.read_text())["macro_f1"]
        assert (
            f"test accuracy {100 * strict['test_acc']:.2f}% over 30 images, loss"
            f" {strict['test_loss']:.4f} (`dvc metrics show`), macro-F1 {f1:.4f}"
            f" ({paths.PER_CLASS})"
        ) in caplog.text
        caplog.clear()
        mixed = evaluate.run("cpu", 16, amp=True)
    if native:
        assert "in bf16" in caplog.text
        assert mixed["test_loss"] != strict["test_loss"]
        assert mixed["test_loss"] == pytest.approx(strict["test_loss"], rel=0.01)
    else:  # emulated bf16 would be slower than fp32: the same strict scores
        assert "in fp32 (evaluate.amp: fp32 is the fastest on cpu)" in caplog.text
        assert mixed == strict


def test_a_diverged_run_s_nan_test_loss_is_left_out_of_dvclive_metrics(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # DVCLive would write the string "nan", which `dvc exp show --sort-by test_loss` cannot
    # compare with the other runs' numbers.
    monkeypatch.chdir(tmp_path)
    metrics = {"test_loss": float("nan"), "test_acc": 0.1, "test_images": 2}
    scores = [{"class": c, "recall": None, "precision": None, "support": 1} for c in ("a", "b")]
    evaluate.log_live(metrics, ["a", "b"], ["a", "a"], scores)
    text = paths.EVAL_METRICS.read_text()
    assert json.loads(text) == {"test_acc": 0.1, "test_images": 2}


def test_top5_accuracy_is_reported_for_more_than_ten_classes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # Among a thousand classes top-1 of a young model is near 0; top-5 shows its progress.
    nan = float("nan")
    logits = torch.arange(12.0).repeat(4, 1)  # classes 11, 10, 9, 8, 7 first
    logits[3] = nan  # ranks nothing: a miss
    labels = torch.tensor([11, 7, 6, 11])
    finite = torch.isfinite(logits).all(1)
    assert evaluate.top5_accuracy(logits, labels, finite) == {"test_top5_acc": 0.5}
    assert evaluate.top5_accuracy(logits[:, :10], labels % 10, finite) == {}  # CIFAR-10: none
    classes = [f"c{i:02d}" for i in range(12)]
    write_processed(tmp_path, n_train=48, n_val=12, n_test=24, classes=classes)
    monkeypatch.chdir(tmp_path)
    train.run(tiny_params(epochs=1))
    with caplog.at_level(logging.INFO):
        metrics = evaluate.run("cpu", 16)
    assert list(metrics) == ["test_acc", "test_top5_acc", "test_loss", "test_images"]
    assert metrics["test_acc"] <= metrics["test_top5_acc"] <= 1
    assert json.loads(paths.EVAL_METRICS.read_text()) == metrics
    assert f"(top-5 {100 * metrics['test_top5_acc']:.2f}%) over 24 images" in caplog.text


def test_a_row_of_non_finite_logits_counts_as_wrong() -> None:
    # The argmax of NaN is class 0: an all-NaN model would score class 0's share of the split
    # (a high test_acc on a skewed split) in `dvc exp show`.
    nan, inf = float("nan"), float("inf")
    logits = torch.tensor([[nan, nan], [0.0, inf], [2.0, 1.0], [1.0, 2.0]])
    labels = torch.tensor([0, 1, 0, 0])
    loss, accuracy = loss_and_accuracy(logits, labels)
    assert accuracy == 0.25  # only the third: the first two have no prediction
    assert math.isnan(loss)
