"""Data for the trainer: load a source, check it, sample few-shot, split base/novel, batch for CLIP.

Sources (one per run): the embedded Fashion-MNIST subset (default), a `datasets` dataset (`--dataset_name`: a Hub
id or a local folder of Parquet files / an ImageFolder), `--train_dir/--test_dir`, or a CoOp benchmark folder
(`--dataset NAME --data_dir DATA`). Every source ends as a `DatasetDict` with an image column and a `ClassLabel`
label column; everything after that is shared.
"""

from __future__ import annotations

import glob
import logging
import os

import datasets
import torch
from datasets import ClassLabel, DatasetDict

import re

from dataset_scripts.fewshot import few_shot_indices, subsample_classes

from .args import EMBEDDED_DATA


logger = logging.getLogger(__name__)


def load_local_dataset(path: str, split: str | None = None, config_name: str | None = None):
    """A Parquet file, a folder of Parquet files, a `datasets` folder with a card (`config_name` picks one of its
    configs, e.g. a folder written by `dataset_scripts/build_benchmark.py`), or an ImageFolder tree."""
    try:
        return _load_local_unchecked(path, split, config_name)
    except ValueError as err:
        if "corresponds to no data" in str(err):
            raise ValueError(f"{path}: the {split or 'data'} split is empty ({err})") from err
        raise


def _load_local_unchecked(path: str, split: str | None, config_name: str | None = None):
    if not os.path.exists(path):
        raise FileNotFoundError(f"Data path not found: {path}")
    if os.path.isfile(path):
        if not path.endswith(".parquet"):
            raise ValueError(f"Unsupported data file {path}: give a .parquet file or a folder")
        return datasets.load_dataset("parquet", data_files={split or "train": path})
    parquet = sorted(glob.glob(os.path.join(path, "*.parquet")))
    if parquet and split is not None:
        return datasets.load_dataset("parquet", data_files={split: parquet})
    if parquet or os.path.exists(os.path.join(path, "README.md")):
        return datasets.load_dataset(path, config_name)
    return datasets.load_dataset("imagefolder", data_dir=path)


def load_source(data_args) -> DatasetDict:
    """Load the run's data source as a `DatasetDict` holding at least `train` and `test`."""
    if data_args.dataset:
        from dataset_scripts.coop_datasets import load_coop_dataset

        raw = load_coop_dataset(data_args.dataset, data_args.data_dir)
    elif data_args.train_dir:
        raw = DatasetDict(
            train=load_local_dataset(data_args.train_dir, "train")["train"],
            test=_pick_split(load_local_dataset(data_args.test_dir, "test"), ("test", "train"), data_args.test_dir),
        )
    elif data_args.dataset_name:
        if os.path.exists(data_args.dataset_name):
            raw = load_local_dataset(data_args.dataset_name, config_name=data_args.dataset_config_name)
        else:
            raw = datasets.load_dataset(data_args.dataset_name, data_args.dataset_config_name)
    else:
        raw = load_local_dataset(EMBEDDED_DATA)
    if not isinstance(raw, DatasetDict):
        raise ValueError("The data source must provide named splits (train and test)")
    if "train" not in raw:
        raise ValueError(f"The data source has no 'train' split (splits: {list(raw)})")
    if "test" not in raw:
        raise ValueError(f"The data source has no 'test' split (splits: {list(raw)})")
    return raw


def _pick_split(dataset_dict, names, path):
    for name in names:
        if name in dataset_dict:
            return dataset_dict[name]
    raise ValueError(f"{path} has none of the splits {names}")


def check_dataset(dataset, image_column: str, label_column: str, split: str) -> list[str]:
    """Check columns, label type and non-emptiness; return the class names."""
    if len(dataset) == 0:
        raise ValueError(f"The {split} split is empty")
    missing = [c for c in (image_column, label_column) if c not in dataset.column_names]
    if missing:
        raise ValueError(f"The {split} split lacks column(s) {missing} (columns: {dataset.column_names})")
    feature = dataset.features[label_column]
    if not isinstance(feature, ClassLabel):
        raise ValueError(
            f"The {split} split's '{label_column}' column must be a datasets.ClassLabel with the class names, "
            f"got {type(feature).__name__}"
        )
    labels = dataset[label_column]
    bad = [label for label in labels if not 0 <= label < feature.num_classes]
    if bad:
        raise ValueError(f"The {split} split has labels outside [0, {feature.num_classes - 1}]: {sorted(set(bad))[:5]}")
    return list(feature.names)


def prompt_class_names(names) -> list[str]:
    """Class names as they enter prompts: CoOp's split files write `american_bulldog`; prompts say `american bulldog`."""
    return [name.replace("_", " ") for name in names]


def prepare_splits(data_args, seed: int) -> dict:
    """Load, check, few-shot sample and split the data.

    Returns a dict with `train` (few-shot, base classes when `subsample_classes="base"`), `test` (same classes),
    optionally `test_novel`, and the class names of each (`train_names`, `novel_names`, `all_names`).
    """
    raw = load_source(data_args)
    names = check_dataset(raw["train"], data_args.image_column, data_args.label_column, "train")
    test_names = check_dataset(raw["test"], data_args.image_column, data_args.label_column, "test")
    if test_names != names:
        raise ValueError("The train and test splits name different classes")
    if data_args.label_column != "label":
        raw = raw.rename_column(data_args.label_column, "label")
    if data_args.image_column != "image":
        raw = raw.rename_column(data_args.image_column, "image")

    train = raw["train"]
    if data_args.shots and data_args.shots > 0:
        key = data_args.dataset or data_args.dataset_name or data_args.train_dir or "embedded-fashion-subset"
        key = re.sub(r"[^A-Za-z0-9_.-]+", "_", str(key)).strip("_")
        indices = few_shot_indices(
            DatasetDict(train=train), data_args.shots, seed, dataset_name=key, cache_dir=data_args.fewshot_cache_dir
        )
        train = train.select(indices["train"])
    test = raw["test"]
    if data_args.max_eval_samples:
        test = test.shuffle(seed=0).select(range(min(data_args.max_eval_samples, len(test))))

    result = {"all_names": prompt_class_names(names)}
    if data_args.subsample_classes == "base":
        base = subsample_classes(DatasetDict(train=train, test=test), "base")
        novel = subsample_classes(DatasetDict(test=test), "novel")
        train, test = base["train"], base["test"]
        result["test_novel"] = novel["test"]
        result["novel_names"] = prompt_class_names(novel["test"].features["label"].names)
    result.update(train=train, test=test, train_names=prompt_class_names(train.features["label"].names))
    return result


class ImageClassificationCollator:
    """Turns rows `{image, label}` into `pixel_values`, `labels` and `indices` with the CLIP image processor.

    An image that cannot be decoded raises an error naming its split and row index.
    """

    def __init__(self, image_processor, split_name: str):
        self.image_processor = image_processor
        self.split_name = split_name

    def __call__(self, rows):
        images = []
        for row in rows:
            image = row["image"]
            if getattr(image, "mode", "RGB") != "RGB":
                image = image.convert("RGB")
            images.append(image)
        pixel_values = self.image_processor(images=images, return_tensors="pt")["pixel_values"]
        return {
            "pixel_values": pixel_values,
            "labels": torch.tensor([row["label"] for row in rows], dtype=torch.long),
            "indices": torch.tensor([row["index"] for row in rows], dtype=torch.long),
        }


class IndexedImageDataset(torch.utils.data.Dataset):
    """A `datasets.Dataset` seen as rows `{image, label, index}`, with decode errors that name the row."""

    def __init__(self, dataset, split_name: str):
        self.dataset = dataset
        self.split_name = split_name

    def __len__(self):
        return len(self.dataset)

    def __getitem__(self, index):
        try:
            row = self.dataset[int(index)]
            image = row["image"]
            image.load()
        except Exception as err:  # PIL and datasets raise many types for a corrupt image
            raise ValueError(f"Cannot decode the image of {self.split_name} row {index}: {err}") from err
        return {"image": image, "label": row["label"], "index": int(index)}

    def verify(self) -> None:
        """Decode every image once (used on the small few-shot training set before any training)."""
        for index in range(len(self)):
            self[index]

    def pixel_values(self, indices, image_processor) -> torch.Tensor:
        """Processed images of the given rows, `(len(indices), 3, H, W)` (representative samples in CAPT)."""
        rows = [self[int(i)] for i in indices]
        return ImageClassificationCollator(image_processor, self.split_name)(rows)["pixel_values"]
