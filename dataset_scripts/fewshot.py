"""Few-shot sampling and base-to-novel class subsampling of the CoOp protocol.

Few-shot sampling (``PROTOCOL.md``, Dassl's ``generate_fewshot_dataset``): one ``random.Random(seed)``
draws, class by class, ``rng.sample(indices_of_class, k)`` from the train split (a class with fewer than
``k`` images gives all of them), then the same generator draws ``min(k, 4)`` shots per class from the val
split (none for ImageNet, whose val split is its test split, as in CoOp). The test split is never touched.

The classes are visited in the order Dassl's ``split_dataset_by_label`` visits them: the order in which each
label *first appears* in the split list (a dict filled in row order), not sorted order. The split files of
StanfordCars and Flowers102 list classes out of label order, so only this order draws the published images.
``class_order="sorted"`` keeps the sorted visit for sources that have no published draw: the trainer uses it
for every source but the CoOp benchmarks, so the embedded default (whose rows are shuffled) keeps its draw. The sampled row indices are cached as JSON (never pickle) under
``cache_dir/<dataset>/shot_<k>-seed_<seed>.json``, written atomically, together with a fingerprint of
the split's labels so that a cache made for a different split is detected and regenerated.

Base-to-novel (``PROTOCOL.md``): sort the label set, ``m = ceil(K / 2)``; base = the first ``m``
labels, novel = the rest; each subset is relabelled from 0 and its ``ClassLabel`` names are the
subset's names. Subsampling is applied after few-shot sampling.

Public API: :func:`sample_per_class`, :func:`few_shot_indices`, :func:`select_few_shot`,
:func:`few_shot_dataset_dict`, :func:`base_novel_labels`, :func:`subsample_classes`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import random
from collections import defaultdict
from collections.abc import Sequence

import numpy as np
from dataset_scripts.atomic_io import write_json_atomic
from datasets import ClassLabel, Dataset, DatasetDict

logger = logging.getLogger(__name__)

#: The validation split gets ``min(num_shots, MAX_VAL_SHOTS)`` shots per class.
MAX_VAL_SHOTS = 4
#: Splits that few-shot sampling subsamples (in this order, from one random generator).
FEW_SHOT_SPLITS = ("train", "val")
SUBSAMPLE_CHOICES = ("all", "base", "novel")
#: How the classes are visited: Dassl's first appearance in the split list, or sorted labels.
CLASS_ORDERS = ("first_appearance", "sorted")
_CACHE_FORMAT_VERSION = 1


def label_array(dataset: Dataset) -> np.ndarray:
    """The ``label`` column of a dataset as an integer array (respects ``select``-ed rows)."""
    column = dataset.with_format("arrow")["label"]
    return np.asarray(column.to_numpy() if hasattr(column, "to_numpy") else column, dtype=np.int64)


def sample_per_class(
    labels: Sequence[int], num_shots: int, rng: random.Random, class_order: str = "first_appearance"
) -> list[int]:
    """Row indices of ``num_shots`` items per class, drawn with ``rng.sample`` class by class.

    ``class_order="first_appearance"`` (Dassl's ``split_dataset_by_label``) visits the classes in the order
    their first row appears; ``"sorted"`` in sorted label order. A class with fewer than ``num_shots`` items
    gives all of them (in row order). The result lists the classes one after the other, in the visiting
    order, each class's rows in the order ``rng.sample`` returned them.
    """
    if num_shots < 1:
        raise ValueError(f"num_shots must be >= 1, got {num_shots}")
    if class_order not in CLASS_ORDERS:
        raise ValueError(f"class_order must be one of {CLASS_ORDERS}, got {class_order!r}")
    rows_by_label: dict[int, list[int]] = defaultdict(list)  # insertion order = first appearance
    for row, label in enumerate(labels):
        rows_by_label[int(label)].append(row)
    visit = sorted(rows_by_label) if class_order == "sorted" else list(rows_by_label)
    sampled: list[int] = []
    for label in visit:
        rows = rows_by_label[label]
        sampled += rng.sample(rows, num_shots) if len(rows) >= num_shots else rows
    return sampled


def _labels_fingerprint(labels: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(labels, dtype=np.int64).tobytes()).hexdigest()[:16]


def few_shot_cache_path(cache_dir: str | os.PathLike, dataset_name: str, num_shots: int, seed: int) -> str:
    """Where the indices for (dataset, shots, seed) are cached."""
    return os.path.join(os.fspath(cache_dir), dataset_name, f"shot_{num_shots}-seed_{seed}.json")


def _read_cache(cache_path: str, expected: dict, splits: list[str]) -> dict[str, list[int]] | None:
    """The cached indices, or None when the file is corrupt, malformed or made for other splits."""
    try:
        with open(cache_path, encoding="utf-8") as handle:
            cached = json.load(handle)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    if not isinstance(cached, dict) or cached.get("version") != _CACHE_FORMAT_VERSION:
        return None
    if cached.get("splits") != expected or not isinstance(cached.get("indices"), dict):
        return None
    result = {}
    for split in splits:
        rows = cached["indices"].get(split)
        num_rows = expected[split]["num_rows"]
        if not isinstance(rows, list) or not all(type(i) is int and 0 <= i < num_rows for i in rows):
            return None
        result[split] = rows
    return result


def few_shot_indices(
    dataset_dict: DatasetDict,
    num_shots: int,
    seed: int,
    *,
    dataset_name: str | None = None,
    cache_dir: str | os.PathLike | None = None,
    class_order: str = "first_appearance",
    sample_val: bool = True,
) -> dict[str, list[int]]:
    """Few-shot row indices ``{"train": [...], "val": [...]}`` (``min(k, 4)`` shots per class for val).

    With ``cache_dir`` (and ``dataset_name``), the indices are read from / written to the JSON cache;
    a cache whose split sizes, label fingerprints or class order differ is regenerated (warning).
    Splits absent from ``dataset_dict`` are absent from the result; with ``sample_val=False`` (ImageNet, whose
    val split is its test split) the val split is not drawn from and is absent from the result too.
    ``class_order``: see :func:`sample_per_class`.
    """
    if cache_dir is not None and not dataset_name:
        raise ValueError("dataset_name is required to cache few-shot indices")
    if class_order not in CLASS_ORDERS:
        raise ValueError(f"class_order must be one of {CLASS_ORDERS}, got {class_order!r}")
    splits = [split for split in FEW_SHOT_SPLITS if split in dataset_dict and (sample_val or split != "val")]
    if "train" not in splits:
        raise ValueError(f"few-shot sampling needs a 'train' split, got {list(dataset_dict)}")
    labels = {split: label_array(dataset_dict[split]) for split in splits}
    expected = {
        split: {"num_rows": len(labels[split]), "labels_sha256": _labels_fingerprint(labels[split])} for split in splits
    }
    if class_order != "sorted":  # caches written before the order was recorded were drawn in sorted order
        expected["train"]["class_order"] = class_order

    cache_path = few_shot_cache_path(cache_dir, dataset_name, num_shots, seed) if cache_dir is not None else None
    if cache_path is not None and os.path.isfile(cache_path):
        cached = _read_cache(cache_path, expected, splits)
        if cached is not None:
            logger.info("Loaded few-shot indices from %s", cache_path)
            return cached
        logger.warning(
            "Few-shot cache %s was made for a different split of %s, or is unreadable; regenerating it.",
            cache_path,
            dataset_name,
        )

    rng = random.Random(seed)
    shots = {"train": num_shots, "val": min(num_shots, MAX_VAL_SHOTS)}
    indices = {split: sample_per_class(labels[split], shots[split], rng, class_order) for split in splits}

    if cache_path is not None:
        write_json_atomic(
            cache_path,
            {
                "version": _CACHE_FORMAT_VERSION,
                "dataset": dataset_name,
                "num_shots": num_shots,
                "seed": seed,
                "shots_per_class": {split: shots[split] for split in splits},
                "splits": expected,
                "indices": indices,
            },
            indent=None,
        )
        logger.info("Cached few-shot indices in %s", cache_path)
    return indices


def select_few_shot(dataset_dict: DatasetDict, indices: dict[str, list[int]]) -> DatasetDict:
    """A new DatasetDict whose splits named in ``indices`` keep only those rows (others unchanged)."""
    return DatasetDict(
        {
            split: dataset.select(indices[split]) if split in indices else dataset
            for split, dataset in dataset_dict.items()
        }
    )


def few_shot_dataset_dict(
    dataset_dict: DatasetDict,
    num_shots: int,
    seed: int,
    *,
    dataset_name: str | None = None,
    cache_dir: str | os.PathLike | None = None,
    class_order: str = "first_appearance",
    sample_val: bool = True,
) -> DatasetDict:
    """``dataset_dict`` with few-shot train / val splits and the full test split (see :func:`few_shot_indices`)."""
    indices = few_shot_indices(dataset_dict, num_shots, seed, dataset_name=dataset_name, cache_dir=cache_dir,
                               class_order=class_order, sample_val=sample_val)
    return select_few_shot(dataset_dict, indices)


def base_novel_labels(num_classes: int) -> tuple[list[int], list[int]]:
    """``(base, novel)`` labels: the first ``ceil(K / 2)`` sorted labels are base, the rest novel."""
    labels = list(range(num_classes))
    middle = math.ceil(num_classes / 2)
    return labels[:middle], labels[middle:]


def _class_label(dataset_dict: DatasetDict) -> ClassLabel:
    class_labels = [dataset.features["label"] for dataset in dataset_dict.values()]
    first = class_labels[0]
    if not isinstance(first, ClassLabel) or any(other.names != first.names for other in class_labels[1:]):
        raise ValueError("all splits need the same ClassLabel 'label' feature to subsample classes")
    return first


def subsample_classes(dataset_dict: DatasetDict, subsample: str) -> DatasetDict:
    """Keep the ``"base"`` or ``"novel"`` classes (or ``"all"``) of every split, relabelled from 0.

    The label set is the ClassLabel's ``range(K)`` (every split of a CoOp benchmark holds every class).
    The returned splits have ``ClassLabel(names=<subset names>)`` and keep their other columns.
    """
    if subsample not in SUBSAMPLE_CHOICES:
        raise ValueError(f"subsample must be one of {SUBSAMPLE_CHOICES}, got {subsample!r}")
    if subsample == "all":
        return dataset_dict
    class_label = _class_label(dataset_dict)
    base, novel = base_novel_labels(class_label.num_classes)
    kept = base if subsample == "base" else novel
    new_label_of = np.full(class_label.num_classes, -1, dtype=np.int64)
    new_label_of[kept] = np.arange(len(kept))
    new_class_label = ClassLabel(names=[class_label.names[label] for label in kept])

    result = DatasetDict()
    for split, dataset in dataset_dict.items():
        # Relabel every row first (dropped classes get -1), then select the kept rows: on a split without an
        # indices mapping (e.g. a full test split) this replaces the label column only and copies no images.
        new_labels = new_label_of[label_array(dataset)]
        relabelled = dataset.remove_columns("label").add_column("label", new_labels, feature=new_class_label)
        result[split] = relabelled.select(np.flatnonzero(new_labels >= 0))
    return result
