"""Test-set evaluation: loss, accuracy, per-class accuracy and the confusion matrix."""

from __future__ import annotations

from typing import Any

import torch

from visionpipe import paths
from visionpipe.data import load_split
from visionpipe.fsutil import write_json
from visionpipe.models import load_model
from visionpipe.runtime import eval_batch_size, loss_and_accuracy, pick_device, predict_logits


def confusion_matrix(labels: torch.Tensor, preds: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Rows are actual classes, columns predicted ones."""
    return torch.bincount(labels * num_classes + preds, minlength=num_classes**2).view(
        num_classes, num_classes
    )


def run(device_choice: str = "auto", train_batch_size: int = 64) -> dict[str, Any]:
    """Score models/model.pt on the test split, in batches no larger than training used."""
    device = pick_device(device_choice)
    model, meta = load_model(paths.MODEL, map_location=device)
    model.to(device)
    images, labels = load_split("test")
    logits = predict_logits(model, images, device, eval_batch_size(train_batch_size, model.views))
    preds = logits.argmax(1)
    classes: list[str] = meta["classes"]
    cm = confusion_matrix(labels, preds, len(classes))
    loss, accuracy = loss_and_accuracy(logits, labels)
    metrics = {
        "test_loss": round(loss, 6),
        "test_accuracy": round(accuracy, 6),
        "test_images": len(labels),
    }
    write_json(
        paths.CONFUSION_MATRIX, {"classes": classes, "rows_actual_cols_predicted": cm.tolist()}
    )
    actual = [classes[i] for i in labels.tolist()]
    log_live(metrics, actual, [classes[i] for i in preds.tolist()], per_class_accuracy(cm, classes))
    return metrics


def per_class_accuracy(cm: torch.Tensor, classes: list[str]) -> list[dict[str, Any]]:
    """{"class", "accuracy", "images"} per class with test images; a class without any has no
    accuracy to report (0.0 would read as "all wrong"), so it is left out."""
    rows = []
    for i, cls in enumerate(classes):
        support = int(cm[i].sum())
        if support:
            rows.append(
                {"class": cls, "accuracy": round(int(cm[i, i]) / support, 6), "images": support}
            )
    return rows


def log_live(
    metrics: dict[str, Any],
    actual: list[str],
    predicted: list[str],
    per_class: list[dict[str, Any]],
) -> None:
    """The test metrics (`dvc exp show`'s headline columns) and plots through DVCLive: the
    confusion matrix, and per-class accuracy as bars rather than a column per class."""
    from dvclive import Live

    live = Live(str(paths.LIVE_EVAL), dvcyaml=None, save_dvc_exp=False, report=None)
    for name, value in metrics.items():
        live.log_metric(name, value, plot=False)
    live.log_sklearn_plot("confusion_matrix", actual, predicted, name="confusion_matrix.json")
    live.log_plot(
        "per_class_accuracy", per_class, x="accuracy", y="class", template="bar_horizontal"
    )
    live.end()
