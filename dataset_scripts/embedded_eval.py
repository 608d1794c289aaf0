"""Evaluation of the saved embedded default: zero-shot, and linear probes on the frozen image features.

``zero_shot_evaluate`` and ``linear_probe_evaluate`` load the model and the subset from disk, as a
user would, so the build records (and the tests reproduce) the numbers of the shipped artefacts;
``probe_table`` and ``confusions_text`` format them for the console and the model card.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from dataset_scripts.embedded_captions import caption_name
from dataset_scripts.embedded_data import read_parquet_split, sample_per_class
from dataset_scripts.embedded_processors import load_image_processor


#: The template zero-shot evaluation uses (CoOp's hand-crafted default).
ZERO_SHOT_TEMPLATE = "a photo of a {}."

#: The L2 penalty of the linear probes (logistic regression on L2-normalised image features).
PROBE_L2 = 1e-3


def top_confusions(confusion: np.ndarray, class_names: Sequence[str], k: int = 5) -> list[dict]:
    """The ``k`` largest off-diagonal cells (ties broken by true then predicted label)."""
    cells = [
        (int(confusion[t, p]), t, p)
        for t in range(confusion.shape[0])
        for p in range(confusion.shape[1])
        if t != p and confusion[t, p] > 0
    ]
    cells.sort(key=lambda c: (-c[0], c[1], c[2]))
    return [{"true": class_names[t], "predicted": class_names[p], "count": c} for c, t, p in cells[:k]]


@torch.no_grad()
def zero_shot_evaluate(
    model_dir: str | os.PathLike,
    data_dir: str | os.PathLike,
    split: str = "test",
    template: str = ZERO_SHOT_TEMPLATE,
) -> dict:
    """Zero-shot accuracy of the saved model on ``data_dir/{split}.parquet``, all loaded from disk.

    Class names are the ClassLabel names of the split (underscores read as spaces), one prompt
    per class, every image in a single batch (so the result does not depend on batching).
    """
    from transformers import AutoTokenizer, CLIPModel

    model = CLIPModel.from_pretrained(model_dir).eval()
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    image_processor = load_image_processor(model_dir)
    ds = read_parquet_split(Path(data_dir) / f"{split}.parquet")
    class_names = list(ds.features["label"].names)
    prompts = [template.format(c.replace("_", " ")) for c in class_names]
    text = tokenizer(prompts, padding=True, return_tensors="pt")
    pixel_values = image_processor(images=list(ds["image"]), return_tensors="pt")["pixel_values"]
    logits = model(**text, pixel_values=pixel_values).logits_per_image
    pred = logits.argmax(dim=-1).numpy()
    true = np.asarray(ds["label"], dtype=np.int64)
    confusion = np.zeros((len(class_names), len(class_names)), dtype=np.int64)
    np.add.at(confusion, (true, pred), 1)
    correct = int((pred == true).sum())
    return {
        "template": template,
        "split": split,
        "correct": correct,
        "total": int(len(true)),
        "accuracy": correct / len(true),
        "per_class_accuracy": {
            c: float(confusion[i, i] / max(1, confusion[i].sum())) for i, c in enumerate(class_names)
        },
        "confusion_matrix": confusion.tolist(),
        "top_confusions": top_confusions(confusion, class_names),
    }


def base_novel_split(num_classes: int) -> tuple[list[int], list[int]]:
    """CoOp's base-to-novel split: the first ``ceil(n / 2)`` labels are base, the rest novel."""
    m = math.ceil(num_classes / 2)
    return list(range(m)), list(range(m, num_classes))


def _fit_linear_probe(
    x: torch.Tensor, y: torch.Tensor, num_classes: int, l2: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Multinomial logistic regression (float64, full-batch L-BFGS) with an L2 penalty on the weights."""
    w = torch.zeros(x.shape[1], num_classes, dtype=torch.float64, requires_grad=True)
    b = torch.zeros(num_classes, dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.LBFGS(
        [w, b], lr=1.0, max_iter=500, tolerance_grad=1e-9, tolerance_change=1e-12, line_search_fn="strong_wolfe"
    )

    def closure():
        optimizer.zero_grad()
        loss = F.cross_entropy(x @ w + b, y) + 0.5 * l2 * (w * w).sum()
        loss.backward()
        return loss

    optimizer.step(closure)
    return w.detach(), b.detach()


@torch.no_grad()
def linear_probe_evaluate(
    model_dir: str | os.PathLike,
    data_dir: str | os.PathLike,
    shots: Sequence[int] = (16,),
    seed: int = 0,
    l2: float = PROBE_L2,
    template: str = ZERO_SHOT_TEMPLATE,
) -> dict:
    """Zero-shot versus linear probes on the frozen image features, on base, novel and all classes.

    For each group of classes (CoOp's base-to-novel split: ``base_novel_split``, and all
    classes), on the test images of that group: the zero-shot accuracy among the group's class
    names only (as base-to-novel evaluation does), and the accuracy of a logistic-regression probe
    on the L2-normalised image features (``get_image_features``) of ``k`` images per class drawn
    from the few-shot pool (``data_dir/train.parquet``) with ``numpy.random.default_rng(seed)``,
    for each ``k`` in ``shots``. Features are computed in one batch, the probe is fitted in
    float64, so the numbers are reproducible.
    """
    from transformers import AutoTokenizer, CLIPModel

    model = CLIPModel.from_pretrained(model_dir).eval()
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    image_processor = load_image_processor(model_dir)
    pool = read_parquet_split(Path(data_dir) / "train.parquet")
    test = read_parquet_split(Path(data_dir) / "test.parquet")
    class_names = list(test.features["label"].names)
    num_classes = len(class_names)

    def features(ds) -> torch.Tensor:
        pixels = image_processor(images=list(ds["image"]), return_tensors="pt")["pixel_values"]
        return F.normalize(model.get_image_features(pixel_values=pixels).pooler_output, dim=-1).double()

    x_pool, y_pool = features(pool), torch.as_tensor(pool["label"], dtype=torch.long)
    x_test, y_test = features(test), torch.as_tensor(test["label"], dtype=torch.long)
    prompts = [template.format(caption_name(c)) for c in class_names]
    text = tokenizer(prompts, padding=True, return_tensors="pt")
    t = F.normalize(model.get_text_features(**text).pooler_output, dim=-1).double()
    zero_shot_logits = x_test @ t.t()

    base, novel = base_novel_split(num_classes)
    groups = {"base": base, "novel": novel, "all": list(range(num_classes))}
    result = {"template": template, "seed": seed, "l2": l2, "shots": list(shots), "groups": {}}
    for group, classes in groups.items():
        if not classes:
            continue
        cls = torch.as_tensor(classes)
        remap = torch.full((num_classes,), -1, dtype=torch.long)
        remap[cls] = torch.arange(len(classes))
        in_test = remap[y_test] >= 0
        yt = remap[y_test[in_test]]
        zs_pred = zero_shot_logits[in_test][:, cls].argmax(-1)
        entry = {
            "classes": [class_names[c] for c in classes],
            "test_images": int(in_test.sum()),
            "zero_shot": float((zs_pred == yt).double().mean()),
            "linear_probe": {},
        }
        pool_idx = np.flatnonzero((remap[y_pool] >= 0).numpy())
        for k in shots:
            rng = np.random.default_rng(seed)
            chosen = sample_per_class(y_pool.numpy(), pool_idx, k, num_classes, rng)
            w, b = _fit_linear_probe(x_pool[chosen], remap[y_pool[chosen]], len(classes), l2)
            pred = (x_test[in_test] @ w + b).argmax(-1)
            entry["linear_probe"][str(k)] = {
                "train_images": int(len(chosen)),
                "accuracy": float((pred == yt).double().mean()),
            }
        result["groups"][group] = entry
    return result


def probe_table(probe: dict) -> str:
    """``linear_probe_evaluate``'s result as a Markdown table: one row per group of classes."""
    shots = [str(k) for k in probe["shots"]]
    head = ["classes", "test images", "zero-shot (%)"] + [f"{k}-shot linear probe (%)" for k in shots]
    rows = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for group, entry in probe["groups"].items():
        label = f"{group}: {', '.join(entry['classes'])}" if group != "all" else f"all {len(entry['classes'])}"
        cells = [label, str(entry["test_images"]), f"{entry['zero_shot'] * 100:.1f}"]
        cells += [f"{entry['linear_probe'][k]['accuracy'] * 100:.1f}" for k in shots]
        rows.append("| " + " | ".join(cells) + " |")
    return "\n".join(rows)


def confusions_text(pairs: list[dict]) -> str:
    """``top_confusions`` as indented lines, ``true -> predicted: count``."""
    return "\n".join(f"  {p['true']} -> {p['predicted']}: {p['count']}" for p in pairs)


def planted_confusions(info: dict) -> tuple[int, int]:
    """(zero-shot errors on the pairs the caption noise plants, all zero-shot errors) on the test split."""
    names = [caption_name(c) for c in info["class_names"]]
    confusion = np.asarray(info["zero_shot"]["confusion_matrix"])
    planted = sum(
        int(confusion[names.index(true), names.index(target)])
        for true, targets in info["caption_noise"]["map"].items()
        for target in targets
        if target in names
    )
    return planted, int(confusion.sum() - np.trace(confusion))
