"""Classification metrics with torchmetrics: accuracy, per-class accuracy, confusion matrix."""

from __future__ import annotations

import csv
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from torch import Tensor
from torchmetrics.functional.classification import multiclass_accuracy, multiclass_confusion_matrix

__all__ = ["classification_metrics"]


def classification_metrics(
    pred: Tensor, target: Tensor, classes: Sequence[str], out_dir: str | Path | None = None
) -> dict[str, Any]:
    """Overall accuracy (micro), per-class accuracy (recall of each class) and the confusion matrix.

    Args:
        pred: ``(N,)`` predicted class indices.
        target: ``(N,)`` true class indices.
        classes: Class names in index order.
        out_dir: When given, the confusion matrix is written to ``out_dir/confusion.csv`` (rows:
            true class, columns: predicted) and its path returned; else it is returned as lists.

    Returns:
        ``accuracy``, ``balanced_accuracy``, ``per_class_accuracy`` (name -> value, ``None`` for
        classes absent from ``target``) and ``confusion_matrix``.
    """
    n = len(classes)
    pred, target = pred.long().cpu(), target.long().cpu()
    matrix = multiclass_confusion_matrix(pred, target, num_classes=n)
    support = matrix.sum(1)
    per_class = {name: (float(matrix[i, i] / support[i]) if support[i] else None)
                 for i, name in enumerate(classes)}
    result: dict[str, Any] = {
        "accuracy": float(multiclass_accuracy(pred, target, num_classes=n, average="micro")),
        "balanced_accuracy": float(multiclass_accuracy(pred, target, num_classes=n, average="macro")),
        "per_class_accuracy": per_class,
    }
    if out_dir is None:
        result["confusion_matrix"] = matrix.tolist()
        return result
    path = Path(out_dir) / "confusion.csv"
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["true \\ predicted", *classes])
        for name, row in zip(classes, matrix.tolist(), strict=True):
            writer.writerow([name, *row])
    result["confusion_matrix"] = str(path)
    return result
