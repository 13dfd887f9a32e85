"""Test-set evaluation: loss, accuracy, macro-F1, per-class precision/recall/F1/support and the
confusion matrix.

A class with no test images has no recall (and so no accuracy): it is reported with support 0 and
null figures, never as 0.0, and left out of the macro-F1. DVCLive's dvclive/eval/metrics.json keeps
the few figures `dvc exp show` compares (test loss, accuracy, images); macro-F1 and the per-class
table go to metrics/per_class.json, and recall and precision to bar charts, never to columns.
"""

from __future__ import annotations

import json
import logging
import math
from typing import Any

import numpy as np
import torch

from visionpipe import memory, paths
from visionpipe.devices import pick_device
from visionpipe.fsutil import json_pretty, write_json, write_text
from visionpipe.inference import (
    eval_batch_size,
    loss_and_accuracy,
    loss_figure,
    loss_text,
    predict_logits,
)
from visionpipe.modelfile import load_model
from visionpipe.names import listed
from visionpipe.precision import autocast_dtype, precision_name
from visionpipe.split_tensors import load_split

log = logging.getLogger(__name__)


def confusion_matrix(labels: torch.Tensor, preds: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Rows are actual classes, columns predicted ones."""
    return torch.bincount(labels * num_classes + preds, minlength=num_classes**2).view(
        num_classes, num_classes
    )


def _ratio(num: int, den: int) -> float | None:
    return round(num / den, 6) if den else None


def per_class_scores(
    cm: np.ndarray, classes: list[str], supports: np.ndarray | None = None
) -> list[dict[str, Any]]:
    """Precision, recall, F1 and support of each class from a confusion matrix (rows actual);
    `supports`: the test images per class where the matrix leaves some out (default: its rows).

    None where a figure is undefined: recall and F1 without test images, precision when the
    class was never predicted.
    """
    rows = []
    if supports is None:
        supports = cm.sum(1)
    for i, cls in enumerate(classes):
        tp, support, predicted = int(cm[i, i]), int(supports[i]), int(cm[:, i].sum())
        rows.append(
            {
                "class": cls,
                "support": support,
                "predicted": predicted,
                "precision": _ratio(tp, predicted),
                "recall": _ratio(tp, support),
                # 2TP / (2TP + FP + FN); without test images the class has no F1 to speak of.
                "f1": _ratio(2 * tp, support + predicted) if support else None,
            }
        )
    return rows


def warn_absent(scores: list[dict[str, Any]]) -> list[str]:
    """Name the classes without test images (a line, however many); return them."""
    absent = [s["class"] for s in scores if s["support"] == 0]
    if len(absent) == 1:
        log.warning(
            "no test images of class %r: no accuracy or recall for it (support 0 in %s)",
            absent[0],
            paths.PER_CLASS,
        )
    elif absent:
        log.warning(
            "no test images of %d classes: no accuracy or recall for them (support 0 in %s): %s",
            len(absent),
            paths.PER_CLASS,
            listed([repr(c) for c in absent]),
        )
    return absent


def warn_never_predicted(scores: list[dict[str, Any]]) -> list[str]:
    """Name the classes with test images the model never predicts (a line, however many):
    on an imbalanced set, a model answering the big classes alone can score the best test_acc
    of a sweep, which macro-F1 shows. None named when it predicts nothing (diverged: said)."""
    if not any(s["predicted"] for s in scores):
        return []
    never = [s for s in scores if s["support"] and not s["predicted"]]
    if not never:
        return []
    images = sum(s["support"] for s in never)
    what = f"class {never[0]['class']!r}" if len(never) == 1 else f"{len(never)} classes"
    names = "" if len(never) == 1 else f": {listed([repr(s['class']) for s in never])}"
    log.warning(
        "the model predicts no test image as %s (%d of the %d test images %s%s)%s; compare "
        "runs by macro-F1 too (this run against the last commit's:"
        " uv run dvc metrics diff HEAD --all --targets %s; docs/training.md)",
        what,
        images,
        sum(s["support"] for s in scores),
        "is" if images == 1 else "are",
        " of it" if len(never) == 1 else " of them",
        names,
        paths.PER_CLASS,
    )
    return [s["class"] for s in never]


def macro_f1(scores: list[dict[str, Any]]) -> float | None:
    """Mean F1 over the classes that have test images or were predicted (as scikit-learn's
    average="macro" takes them): a class with none that the model still predicts counts with
    F1 0, its wrong guesses against it. None if no class counts."""
    counted = [s["f1"] or 0.0 for s in scores if s["support"] > 0 or s["predicted"] > 0]
    return round(sum(counted) / len(counted), 6) if counted else None


def run(
    device_choice: str = "auto", train_batch_size: int = 64, amp: bool = False
) -> dict[str, Any]:
    """Score models/model.pt on the test split, in batches no larger than training used; in
    strict fp32, or with `amp` in the mixed precision training would use on this device."""
    device = pick_device(device_choice)
    model, info = load_model(paths.MODEL, map_location=device)
    model.to(device)
    images, labels = load_split("test", in_memory=False)  # read batch by batch
    dtype = autocast_dtype(device, amp)
    log.info(
        "scoring %d test images in %s%s",
        len(labels),
        precision_name(dtype),
        "" if dtype or not amp else f" (evaluate.amp: fp32 is the fastest on {device})",
    )
    batch = eval_batch_size(train_batch_size, model.views, device)
    memory.keep_freed_memory()  # each batch reuses the last one's host memory: 0.78x the time
    logits = predict_logits(model, images, device, batch, amp=dtype)
    classes = info.classes
    # A row with a non-finite logit predicts nothing (its argmax, class 0, means nothing): it is
    # a miss of its class, and no prediction of any.
    finite = torch.isfinite(logits).all(1)
    if broken := int((~finite).sum()):
        log.warning(
            "the model gives non-finite logits for %d of %d test images: training diverged "
            "(see metrics/train.json); test_loss is nan (left out of dvc exp show), test_acc "
            "and each class's recall count those images as wrong, and the confusion matrix "
            "leaves them out",
            broken,
            len(labels),
        )
    preds, kept = logits.argmax(1)[finite], labels[finite]
    cm = confusion_matrix(kept, preds, len(classes))
    support = torch.bincount(labels, minlength=len(classes)).numpy()
    scores = per_class_scores(cm.numpy(), classes, support)
    absent = warn_absent(scores)
    never = warn_never_predicted(scores)
    loss, accuracy = loss_and_accuracy(logits, labels)
    # Short names: these are `dvc exp show` columns, in this order, and a sweep's table must fit
    # 120 columns.
    metrics = {
        "test_acc": round(accuracy, 6),
        **top5_accuracy(logits, labels, finite),
        "test_loss": loss_figure(loss),
        "test_images": len(labels),
    }
    per_class = {
        "macro_f1": macro_f1(scores),
        "classes_without_test_images": absent,
        "classes_never_predicted": never,
        "most_confused": most_confused(cm.numpy(), classes),
    }
    _log_headline(accuracy, len(labels), loss, per_class["macro_f1"], metrics.get("test_top5_acc"))
    write_json(paths.PER_CLASS, {**per_class, "classes": scores})
    # Names as write_json writes them (a name that is not UTF-8 as its bytes' escapes).
    write_text(paths.CONFUSION_MATRIX, matrix_json(classes, cm.tolist()), "backslashreplace")
    actual = [classes[i] for i in kept.tolist()]
    log_live(metrics, actual, [classes[i] for i in preds.tolist()], scores)
    return metrics


MOST_CONFUSED = 10  # pairs listed: what a plot of a hundred classes' matrix no longer shows


def most_confused(cm: np.ndarray, classes: list[str]) -> list[dict[str, Any]]:
    """The MOST_CONFUSED (actual, predicted) pairs of different classes with the most test
    images, most first (ties in class order): with many classes the confusion plot's labels
    overlap, and these are what it would show."""
    off = cm.copy()
    np.fill_diagonal(off, 0)
    order = np.argsort(-off, axis=None, kind="stable")[:MOST_CONFUSED]
    pairs = [np.unravel_index(i, off.shape) for i in order]
    return [
        {"actual": classes[a], "predicted": classes[p], "images": int(off[a, p])}
        for a, p in pairs
        if off[a, p] > 0
    ]


def matrix_json(classes: list[str], rows: list[list[int]]) -> str:
    """The confusion matrix as JSON with a row a line: as `json_pretty` writes it, a 1,000-class
    matrix would be a million lines (9 MB, in the cache again every run); so, 2 MB of rows an
    editor shows as the grid they are."""
    listed = ",\n".join(f"    {json.dumps(row)}" for row in rows)
    names = json_pretty(classes).rstrip("\n").replace("\n", "\n  ")
    return f'{{\n  "classes": {names},\n  "rows_actual_cols_predicted": [\n{listed}\n  ]\n}}\n'


# Top-5 accuracy is reported for more classes than this: among CIFAR-10's ten it says little, among
# a thousand it is what a young model's progress shows in (ImageNet's second figure).
TOP5_OVER = 10


def top5_accuracy(logits: torch.Tensor, labels: torch.Tensor, finite: torch.Tensor) -> dict:
    """`test_top5_acc`, the share of test images whose class is among the model's five first
    (a row of non-finite logits ranks nothing: a miss), for more than TOP5_OVER classes; else
    nothing."""
    if logits.shape[1] <= TOP5_OVER or len(labels) == 0:
        return {}
    hits = (logits.topk(5, dim=1).indices == labels[:, None]).any(1) & finite
    return {"test_top5_acc": round(hits.float().mean().item(), 6)}


def _log_headline(
    accuracy: float, images: int, loss: float, f1: float | None, top5: float | None = None
) -> None:
    """The run's headline in the log `dvc repro` shows, as metrics/ holds it."""
    log.info(
        "test accuracy %.2f%%%s over %d images, loss %s (`dvc metrics show`), macro-F1 %s (%s)",
        100 * accuracy,
        "" if top5 is None else f" (top-5 {100 * top5:.2f}%)",
        images,
        loss_text(loss, 4),  # an overfitting run's 2.5e-05, not 0.0000
        "n/a" if f1 is None else f"{f1:.4f}",
        paths.PER_CLASS,  # with the per-class table: no `dvc exp show` column
    )


def log_live(
    metrics: dict[str, Any],
    actual: list[str],
    predicted: list[str],
    scores: list[dict[str, Any]],
) -> None:
    """The test metrics (`dvc exp show`'s headline columns) and plots through DVCLive: the
    confusion matrix, and per-class recall (the class's accuracy) and precision as bars. A class
    whose figure is undefined (no test images; never predicted) has no bar, not a 0."""
    from dvclive import Live

    live = Live(str(paths.LIVE_EVAL), dvcyaml=None, save_dvc_exp=False, report=None)
    for name, value in metrics.items():
        # DVCLive writes NaN as the string "nan": a string among numbers breaks
        # `dvc exp show --sort-by test_loss` and makes the column text in Studio and VS Code.
        if value is not None and math.isfinite(value):
            live.log_metric(name, value, plot=False)
    live.log_sklearn_plot("confusion_matrix", actual, predicted, name="confusion_matrix.json")
    for figure in ("recall", "precision"):
        # What the figure is over, named as metrics/per_class.json names it (the two files join
        # on it): recall over the class's test images, precision over the images predicted as it.
        over = "support" if figure == "recall" else "predicted"
        rows = [
            {"class": s["class"], figure: s[figure], over: s[over]}
            for s in scores
            if s[figure] is not None
        ]
        # dvc.yaml names the template (.dvc/plots/fraction_bars.json); this Live writes none.
        live.log_plot(f"per_class_{figure}", rows, x=figure, y="class")
    live.end()
