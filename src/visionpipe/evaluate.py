"""Test-set evaluation: loss, accuracy, per-class accuracy and the confusion matrix."""

from __future__ import annotations

from typing import Any

import torch

from visionpipe import paths
from visionpipe.data import load_split
from visionpipe.fsutil import write_json, write_text
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
    per_class = {
        c: round(cm[i, i].item() / max(1, cm[i].sum().item()), 6) for i, c in enumerate(classes)
    }
    loss, accuracy = loss_and_accuracy(logits, labels)
    metrics = {
        "test_loss": round(loss, 6),
        "test_accuracy": round(accuracy, 6),
        "test_images": len(labels),
        "per_class_accuracy": per_class,
    }
    write_json(paths.EVAL_METRICS, metrics)
    write_json(
        paths.CONFUSION_MATRIX, {"classes": classes, "rows_actual_cols_predicted": cm.tolist()}
    )
    # One row per test image, as DVC's confusion template expects.
    rows = ["actual,predicted"] + [
        f"{classes[a]},{classes[p]}" for a, p in zip(labels.tolist(), preds.tolist(), strict=True)
    ]
    write_text(paths.PLOT_CONFUSION, "\n".join(rows) + "\n")
    return metrics
