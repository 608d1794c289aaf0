"""Classification metrics, computed locally (no Hub download): plain functions on label/prediction arrays.

`evaluate.load("accuracy")` fetches its script from the Hub, which these machines cannot reach. The package once
wrapped these functions as an `evaluate.Metric` too, but nothing used it, and `import evaluate` (which imports
`transformers.pipelines`) slowed every run's start-up, so `evaluate` is no longer a dependency.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from dataset_scripts import bank as confusion_bank


def confusion_matrix(labels: Sequence[int] | torch.Tensor, preds: Sequence[int] | torch.Tensor, num_classes: int):
    """`M[a, b]` = number of samples of true class `a` predicted as `b`, as a `(num_classes, num_classes)` long tensor."""
    labels = torch.as_tensor(labels, dtype=torch.long).flatten()
    preds = torch.as_tensor(preds, dtype=torch.long).flatten()
    if labels.shape != preds.shape:
        raise ValueError(f"labels and preds differ in length: {labels.numel()} vs {preds.numel()}")
    for name, values in (("labels", labels), ("preds", preds)):
        if values.numel() and (int(values.min()) < 0 or int(values.max()) >= num_classes):
            raise ValueError(f"{name} out of range [0, {num_classes - 1}]: {int(values.min())}..{int(values.max())}")
    flat = labels * num_classes + preds
    return torch.bincount(flat, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def classification_metrics(labels, preds, class_names: Sequence[str]) -> dict:
    """Accuracy (in %), per-class accuracy (in %, `None` for a class with no test sample) and the confusion matrix."""
    matrix = confusion_matrix(labels, preds, len(class_names))
    total = int(matrix.sum())
    if total == 0:
        raise ValueError("No samples were evaluated")
    per_class_total = matrix.sum(dim=1)
    per_class = {
        name: (100.0 * int(matrix[i, i]) / int(per_class_total[i]) if int(per_class_total[i]) else None)
        for i, name in enumerate(class_names)
    }
    return {
        "accuracy": 100.0 * int(matrix.diagonal().sum()) / total,
        "num_samples": total,
        "per_class_accuracy": per_class,
        "confusion_matrix": matrix.tolist(),
    }


def harmonic_mean(base: float, novel: float) -> float:
    """`HM = 2BN / (B + N)`; 0 when both are 0."""
    return 0.0 if base + novel == 0 else 2.0 * base * novel / (base + novel)


def top_confused_pairs(matrix, class_names: Sequence[str], k: int = 5) -> list[dict]:
    """The `k` largest off-diagonal cells of a confusion matrix, as `{"true", "predicted", "count"}` records."""
    pairs = confusion_bank.top_confused_pairs(torch.as_tensor(matrix), class_names, k)
    return [{"true": true, "predicted": predicted, "count": count} for true, predicted, count in pairs]


def finite_or_none(value: float | None) -> float | None:
    """JSON-friendly: NaN and infinities become `None`."""
    return None if value is None or not math.isfinite(value) else value
