"""Data for the trainer: load a source, check it, sample few-shot, split base/novel, batch for CLIP.

Sources (one per run): the embedded Fashion-MNIST subset (default), a `datasets` dataset (`--dataset_name`: a Hub
id or a local folder of Parquet files / an ImageFolder), `--train_dir/--test_dir`, or a CoOp benchmark folder
(`--dataset NAME --data_dir DATA`). Every source ends as a `DatasetDict` with an image column and a `ClassLabel`
label column; everything after that is shared.
"""

from __future__ import annotations

import glob
import logging
import math
import os
import re
from dataclasses import dataclass, field

import datasets
import huggingface_hub
import numpy as np
import torch
from datasets import ClassLabel, DatasetDict
from PIL import Image

from dataset_scripts.coop_datasets import PROVENANCE_FILE, get_dataset_info, list_datasets
from dataset_scripts.data_fingerprint import training_set_fingerprint
from dataset_scripts.fewshot import CLASS_ORDERS, few_shot_indices, label_array, subsample_classes
from dataset_scripts.label_noise import (
    check_noise_options, inject_label_noise, noise_record, noise_seed, read_noisy_labels,
)
from dataset_scripts.paths import EMBEDDED_DATA


logger = logging.getLogger(__name__)

@dataclass
class DataArguments:
    dataset_name: str | None = field(
        default=None,
        metadata={"help": "A `datasets` image-classification dataset: Hub id, or a local folder (Parquet/ImageFolder)."},
    )
    dataset_config_name: str | None = field(default=None, metadata={"help": "Config of --dataset_name."})
    dataset: str | None = field(
        default=None, metadata={"help": "A CoOp benchmark name (e.g. oxford_pets), read from --data_dir."}
    )
    data_dir: str | None = field(default=None, metadata={"help": "Root of the CoOp dataset folders."})
    train_dir: str | None = field(default=None, metadata={"help": "Training images: Parquet file/folder or ImageFolder."})
    test_dir: str | None = field(default=None, metadata={"help": "Test images: Parquet file/folder or ImageFolder."})
    image_column: str = field(default="image", metadata={"help": "Column holding the images."})
    label_column: str = field(default="label", metadata={"help": "ClassLabel column holding the labels."})
    shots: int = field(default=16, metadata={"help": "Training images per class (0 or negative: all)."})
    subsample_classes: str = field(
        default="base", metadata={"help": "base (train on base, evaluate base and novel), or all."}
    )
    max_eval_samples: int | None = field(
        default=None, metadata={"help": "Cap the test split, before its base/novel split (for quick runs)."}
    )
    fewshot_cache_dir: str | None = field(default=None, metadata={"help": "Where few-shot indices are cached (JSON)."})
    class_order: str = field(
        default="auto",
        metadata={"help": "The order the few-shot draw visits the classes: first_appearance (Dassl's, so a CoOp "
                          "benchmark gets the published images), sorted, or auto (first_appearance for --dataset and "
                          "for a benchmark build_benchmark.py wrote, sorted otherwise)."},
    )
    noise_rate: float = field(
        default=0.0, metadata={"help": "Label noise: share of training labels corrupted, exactly int(r N), in [0, 1)."}
    )
    noise_type: str = field(
        default="sym",
        metadata={"help": "sym (another class, uniformly), asym (y -> y + 1 mod K), or a JSON map class -> class(es) "
                          "(inline or a file; the embedded default's semantic map: "
                          "dataset_scripts/noise_maps/fashion_subset_asym.json)."},
    )
    noise_per_class: int = field(
        default=0, metadata={"help": "Per-class label noise (PTNL): m samples of every class are other classes' "
                                     "images relabelled (instead of --noise_rate)."}
    )
    noisy_labels_file: str | None = field(
        default=None, metadata={"help": "Reuse the noisy labels a run saved (noisy_labels.json); refused for another "
                                        "training set."}
    )

    def __post_init__(self):
        if self.class_order not in ("auto", *CLASS_ORDERS):
            raise ValueError(f"--class_order must be auto, first_appearance or sorted, got {self.class_order!r}")
        if self.subsample_classes not in ("base", "all"):
            raise ValueError(f"--subsample_classes must be base or all, got {self.subsample_classes!r}")
        if self.max_eval_samples is not None and self.max_eval_samples < 1:
            raise ValueError(f"--max_eval_samples must be at least 1 (or left out for the whole test split), "
                             f"got {self.max_eval_samples}")
        check_local_path("dataset_name", self.dataset_name)
        check_noise_options(self.noise_rate, self.noise_type, self.noise_per_class)
        check_local_path("noisy_labels_file", self.noisy_labels_file, always_local=True)
        sources = [bool(self.dataset_name), bool(self.dataset), bool(self.train_dir or self.test_dir)]
        if sum(sources) > 1:
            raise ValueError("Give one data source: --dataset_name, --dataset/--data_dir, or --train_dir/--test_dir")
        if self.dataset and not self.data_dir:
            raise ValueError("--dataset needs --data_dir (the root of the CoOp dataset folders)")
        if bool(self.train_dir) != bool(self.test_dir):
            raise ValueError("--train_dir and --test_dir go together")
        # always local paths, never Hub ids: a missing one is named here, before any model or data is loaded
        for flag in ("train_dir", "test_dir", "data_dir"):
            check_local_path(flag, getattr(self, flag), always_local=True)


def check_local_path(flag: str, value: str | None, always_local: bool = False) -> None:
    """Raise `FileNotFoundError` naming `--flag` when `value` is a local path (or, `always_local`, any value) that
    does not exist. Hub ids are left to their loaders."""
    if value and (always_local or _looks_like_local_path(value)) and not os.path.exists(value):
        raise FileNotFoundError(f"--{flag}: no such file or folder: {value}")


def _looks_like_local_path(value: str) -> bool:
    """A value no Hub id can be (absolute, `./`/`../`/`~`, or more than one `/`): a missing one is a missing path,
    not a repository to look up (which would fail with a confusing repo-id error)."""
    value = str(value)
    return (os.path.isabs(value) or value.startswith((".", "~")) or os.sep in value.replace("/", "", 1)
            or value.count("/") > 1)


def resolve_template(model_args, data_args) -> str:
    if model_args.template:
        return model_args.template
    if data_args.dataset:
        return get_dataset_info(data_args.dataset).template
    if data_args.dataset_config_name in list_datasets():  # a Parquet benchmark built by build_benchmark.py
        return get_dataset_info(data_args.dataset_config_name).template
    return "a photo of a {}."


def load_local_dataset(path: str, split: str | None = None, config_name: str | None = None):
    """A Parquet file, a folder of Parquet files, a `datasets` folder with a card (`config_name` picks one of its
    configs, e.g. a folder written by `dataset_scripts/build_benchmark.py`), a folder written by `save_to_disk`, or
    an ImageFolder tree."""
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
    if os.path.isfile(os.path.join(path, "dataset_dict.json")):  # `DatasetDict.save_to_disk`
        return datasets.load_from_disk(path)
    if os.path.isfile(os.path.join(path, "state.json")) and os.path.isfile(os.path.join(path, "dataset_info.json")):
        return DatasetDict({split or "train": datasets.load_from_disk(path)})  # `Dataset.save_to_disk`
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
    """Check columns, image and label types and non-emptiness; return the class names."""
    if len(dataset) == 0:
        raise ValueError(f"The {split} split is empty")
    missing = [c for c in (image_column, label_column) if c not in dataset.column_names]
    if missing:
        raise ValueError(f"The {split} split lacks column(s) {missing} (columns: {dataset.column_names})")
    if not isinstance(dataset.features[image_column], datasets.Image):
        raise ValueError(
            f"The {split} split's '{image_column}' column must be a datasets.Image column, got "
            f"{dataset.features[image_column]!r} (a column of file paths becomes one with "
            f"`dataset.cast_column({image_column!r}, datasets.Image())`)"
        )
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


def standard_columns(data, image_column: str, label_column: str):
    """`data` (a `Dataset` or `DatasetDict`) with only its image and label columns, named `image` and `label`.

    The other columns are dropped first: a source whose `--label_column` is, say, `fine_label` may also hold a column
    named `label` (or `image`), which renaming onto would collide with; and the rows decode faster without them.
    """
    data = data.select_columns([image_column, label_column])
    if label_column != "label":
        data = data.rename_column(label_column, "label")
    if image_column != "image":
        data = data.rename_column(image_column, "image")
    return data


def relabel_by_name(dataset, label_column: str, names: list[str]):
    """`dataset` with its `ClassLabel` column re-expressed in `names` (a superset of its own class names)."""
    own = dataset.features[label_column].names
    new_label_of = np.array([names.index(name) for name in own], dtype=np.int64)
    column = dataset.with_format("arrow")[label_column]
    labels = np.asarray(column.to_numpy() if hasattr(column, "to_numpy") else column, dtype=np.int64)
    return dataset.remove_columns(label_column).add_column(
        label_column, new_label_of[labels], feature=ClassLabel(names=list(names))
    )


def fewshot_cache_key(data_args) -> str:
    """The name of the training data in the few-shot index cache: the CoOp benchmark, the `datasets` source (with its
    config: one cache file per config of a benchmark folder), the training folder, or the embedded default."""
    key = data_args.dataset or data_args.dataset_name or data_args.train_dir or "embedded-fashion-subset"
    if data_args.dataset_name and data_args.dataset_config_name:
        key = f"{key}-{data_args.dataset_config_name}"
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", str(key)).strip("_")


def resolve_class_order(data_args) -> str:
    """The few-shot draw's class order. `auto`: Dassl's (first appearance in the split list) for a CoOp benchmark, read
    from its folders (`--dataset`) or from the Parquet `build_benchmark.py` wrote (rows kept in the split list's order,
    recognised by its provenance record, locally or on the Hub), so the draw is the published one; sorted for any
    other source, which has no published draw (the embedded default's draw is unchanged)."""
    if data_args.class_order != "auto":
        return data_args.class_order
    built = data_args.dataset_name and _is_built_benchmark(data_args.dataset_name, data_args.dataset_config_name)
    return "first_appearance" if data_args.dataset or built else "sorted"


def _is_built_benchmark(name: str, config: str | None) -> bool:
    record = f"{config}/{PROVENANCE_FILE}" if config else PROVENANCE_FILE
    if os.path.exists(name):
        return os.path.isfile(os.path.join(name, record))
    try:
        return bool(huggingface_hub.file_exists(name, record, repo_type="dataset"))
    except Exception as err:  # offline, gated, ...: the draw cannot follow Dassl's without knowing; say so
        logger.warning("Could not check whether %s is a CoOp benchmark built by build_benchmark.py (%s): the few-shot "
                       "draw visits the classes in sorted order; pass --class_order first_appearance for the "
                       "published draw of a CoOp benchmark.", name, err)
        return False


#: The column `prepare_splits` adds to every split: each row's index in the source split it was sampled from, so an
#: error about a row of the few-shot (or evaluation) subset names the row of the data the user has.
SOURCE_ROW_COLUMN = "source_row"


def prompt_class_names(names) -> list[str]:
    """Class names as they enter prompts: CoOp's split files write `american_bulldog`; prompts say `american bulldog`.

    Two names that become one (`sea_lake` and `sea lake`) are refused, naming both as the data spells them.
    """
    names = list(names)
    prompts = [name.replace("_", " ") for name in names]
    first_of: dict[str, str] = {}
    clashes = []
    for name, prompt in zip(names, prompts):
        earlier = first_of.setdefault(prompt, name)
        if earlier != name:
            clashes.append((earlier, name))
    if clashes:
        listed = "; ".join(f"{a!r} and {b!r} (both {a.replace('_', ' ')!r})" for a, b in clashes[:5])
        raise ValueError(f"Class names that are one name once underscores become spaces: {listed}. Rename one of "
                         "each pair in the data.")
    return prompts


def prepare_splits(data_args, seed: int) -> dict:
    """Load, check, few-shot sample and split the data.

    Returns a dict with `train` (few-shot, base classes when `subsample_classes="base"`), `test` (same classes),
    optionally `test_novel`, and the class names of each (`train_names`, `novel_names`, `all_names`). With label
    noise (`apply_label_noise`) `train` carries the noisy labels and `label_noise` the record to save with the run
    (true labels included).
    """
    raw = load_source(data_args)
    names = check_dataset(raw["train"], data_args.image_column, data_args.label_column, "train")
    test_names = check_dataset(raw["test"], data_args.image_column, data_args.label_column, "test")
    if test_names != names:
        unknown = [name for name in test_names if name not in names]
        if unknown or len(set(test_names)) != len(test_names):
            raise ValueError(f"The train and test splits name different classes (test classes not in train: "
                             f"{unknown[:5]})")
        # e.g. an ImageFolder test tree without a folder for a class that has no test image: read the test labels
        # by name in the training split's classes
        raw["test"] = relabel_by_name(raw["test"], data_args.label_column, names)
    raw = standard_columns(raw, data_args.image_column, data_args.label_column)
    raw = DatasetDict({split: rows.add_column(SOURCE_ROW_COLUMN, np.arange(len(rows), dtype=np.int64))
                       for split, rows in raw.items()})

    train = raw["train"]
    if data_args.shots and data_args.shots > 0:
        warn_fewer_images_than_shots(train, data_args.shots)
        indices = few_shot_indices(
            DatasetDict(train=train), data_args.shots, seed, dataset_name=fewshot_cache_key(data_args),
            cache_dir=data_args.fewshot_cache_dir, class_order=resolve_class_order(data_args),
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
    apply_label_noise(result, data_args, seed)
    return result


def apply_label_noise(splits: dict, data_args, seed: int) -> None:
    """Corrupt the training labels of `splits` in place, per `--noise_rate` / `--noise_per_class` / `--noise_type`
    (or load them from `--noisy_labels_file`), and keep the record (`splits["label_noise"]`) the trainer saves."""
    # callers that build their own namespace of data options (evaluation, tests) may have no noise options
    if not any(getattr(data_args, name, None) for name in ("noise_rate", "noise_per_class", "noisy_labels_file")):
        return
    train = splits["train"]
    true_labels = np.asarray(train["label"], dtype=np.int64)
    fingerprint = training_set_fingerprint(train)
    if data_args.noisy_labels_file:
        record = read_noisy_labels(data_args.noisy_labels_file, fingerprint)
        noisy = np.asarray(record["labels"], dtype=np.int64)
    else:
        amount = data_args.noise_per_class or data_args.noise_rate
        settings = {"noise_rate": data_args.noise_rate, "noise_type": data_args.noise_type,
                    "noise_per_class": data_args.noise_per_class, "seed": seed, "shots": data_args.shots,
                    "dataset": fewshot_cache_key(data_args)}
        generator_seed = noise_seed(seed, settings["dataset"], data_args.shots, amount,
                                    "per_class" if data_args.noise_per_class else data_args.noise_type)
        noisy = inject_label_noise(true_labels, train.features["label"].names, data_args.noise_rate,
                                   data_args.noise_type, data_args.noise_per_class, seed=generator_seed)
        record = noise_record(true_labels, noisy, fingerprint, **settings)
    feature = train.features["label"]
    splits["train"] = train.remove_columns("label").add_column("label", noisy.tolist(), feature=feature)
    splits["label_noise"] = record
    logger.info("label noise: %d of %d training labels corrupted", record["num_flipped"], len(noisy))


def class_counts(dataset) -> np.ndarray:
    """Rows per class of a dataset with a `ClassLabel` `label` column (0 for a class without rows)."""
    return np.bincount(label_array(dataset), minlength=dataset.features["label"].num_classes)


def warn_fewer_images_than_shots(train, shots: int) -> None:
    """Warn when classes hold fewer than `shots` training images: they are used whole (CoOp's rule), so the
    training set is smaller than `shots` per class."""
    counts = class_counts(train)
    short = [(name, int(count)) for name, count in zip(train.features["label"].names, counts) if count < shots]
    if short:
        listed = ", ".join(f"{name!r} ({count})" for name, count in short[:5]) + (", ..." if len(short) > 5 else "")
        logger.warning("--shots %d: %d of %d classes have fewer training images, used whole: %s", shots, len(short),
                       len(counts), listed)


def classes_without_images(dataset) -> list[str]:
    """The class names of a dataset's `ClassLabel` `label` column that no row has."""
    counts = class_counts(dataset)
    return [name for name, count in zip(dataset.features["label"].names, counts) if count == 0]


def processor_crop_size(image_processor) -> tuple[int, int]:
    """`(height, width)` of the images the CLIP image processor outputs (its `crop_size`, else its `size`)."""
    def field(size, name):  # a dict (transformers 4) or a SizeDict (transformers 5)
        return size.get(name) if isinstance(size, dict) else getattr(size, name, None)

    for attribute in ("crop_size", "size"):
        size = getattr(image_processor, attribute, None)
        if isinstance(size, int):
            return size, size
        if size is None:
            continue
        if field(size, "height") and field(size, "width"):
            return int(field(size, "height")), int(field(size, "width"))
        if field(size, "shortest_edge"):
            return int(field(size, "shortest_edge")), int(field(size, "shortest_edge"))
    raise ValueError(f"Cannot read the output size of {type(image_processor).__name__} (no crop_size or size)")


class RandomResizedCropFlip:
    r"""CoOp's training augmentation on PIL images: a random resized crop, then a horizontal flip with probability
    `flip_probability`. Runs before the CLIP image processor, whose resize and centre crop are then no-ops.

    The crop takes an area fraction drawn uniformly from `scale` and a log-uniform aspect ratio from `ratio` (10
    tries; otherwise the largest centred crop whose ratio is within `ratio`), and is resized to `size` (bicubic, as
    CLIP's processor). Random numbers come from `generator`, or torch's global generator (seeded by
    `accelerate.utils.set_seed`, and per worker by the DataLoader), so a seeded run is reproducible.

    Args:
        size (`tuple[int, int]`): output `(height, width)`: the processor's crop size.
        scale (`tuple[float, float]`, *optional*, defaults to `(0.08, 1.0)`): range of the crop's area fraction.
        ratio (`tuple[float, float]`, *optional*, defaults to `(3/4, 4/3)`): range of the crop's width / height.
        flip_probability (`float`, *optional*, defaults to 0.5): chance of a horizontal flip.
    """

    def __init__(self, size, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3), flip_probability: float = 0.5):
        height, width = (size, size) if isinstance(size, int) else size
        if height < 1 or width < 1:
            raise ValueError(f"augmentation size must be positive, got {size}")
        if not 0 < scale[0] <= scale[1] <= 1:
            raise ValueError(f"augmentation scale must satisfy 0 < min <= max <= 1, got {tuple(scale)}")
        if not 0 < ratio[0] <= ratio[1]:
            raise ValueError(f"augmentation ratio must satisfy 0 < min <= max, got {tuple(ratio)}")
        if not 0 <= flip_probability <= 1:
            raise ValueError(f"flip_probability must be in [0, 1], got {flip_probability}")
        self.size = (int(height), int(width))
        self.scale = (float(scale[0]), float(scale[1]))
        self.ratio = (float(ratio[0]), float(ratio[1]))
        self.flip_probability = float(flip_probability)

    def _uniform(self, low: float, high: float, generator) -> float:
        return low + (high - low) * float(torch.rand((), generator=generator))

    def crop_box(self, width: int, height: int, generator: torch.Generator | None = None) -> tuple[int, int, int, int]:
        """`(left, top, crop_width, crop_height)` of a random crop of a `width` x `height` image."""
        area = width * height
        log_low, log_high = math.log(self.ratio[0]), math.log(self.ratio[1])
        for _ in range(10):
            target_area = area * self._uniform(*self.scale, generator)
            aspect = math.exp(self._uniform(log_low, log_high, generator))
            crop_width = int(round(math.sqrt(target_area * aspect)))
            crop_height = int(round(math.sqrt(target_area / aspect)))
            if 0 < crop_width <= width and 0 < crop_height <= height:
                top = int(torch.randint(0, height - crop_height + 1, (), generator=generator))
                left = int(torch.randint(0, width - crop_width + 1, (), generator=generator))
                return left, top, crop_width, crop_height
        aspect = width / height  # fallback: the whole image, trimmed to the allowed ratio, centred
        if aspect < self.ratio[0]:
            crop_width, crop_height = width, int(round(width / self.ratio[0]))
        elif aspect > self.ratio[1]:
            crop_width, crop_height = int(round(height * self.ratio[1])), height
        else:
            crop_width, crop_height = width, height
        return (width - crop_width) // 2, (height - crop_height) // 2, crop_width, crop_height

    def __call__(self, image: Image.Image, generator: torch.Generator | None = None) -> Image.Image:
        left, top, crop_width, crop_height = self.crop_box(image.width, image.height, generator)
        height, width = self.size
        image = image.resize((width, height), Image.BICUBIC, box=(left, top, left + crop_width, top + crop_height))
        if float(torch.rand((), generator=generator)) < self.flip_probability:
            image = image.transpose(Image.FLIP_LEFT_RIGHT)
        return image

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(size={self.size}, scale={self.scale}, ratio=({self.ratio[0]:.4g}, "
                f"{self.ratio[1]:.4g}), flip_probability={self.flip_probability})")


def to_rgb(image: Image.Image) -> Image.Image:
    """An 8-bit RGB copy of a decoded image of any PIL mode.

    - 16-bit greyscale (`I;16*`, as Pillow decodes 16-bit PNG and TIFF) is scaled to 8 bits (`/ 257`); `I` and `F`
      images are read as 16-bit when a value exceeds 255 (`F` in `[0, 1]` as fractions of white). A plain
      `convert("RGB")` clips them instead, which turns almost every 16-bit image white.
    - An image with transparency (`RGBA`, `LA`, `PA`, a `P` or `L` image with a transparent colour) is composited onto
      white, as the CLIP image processor does (`transformers.image_transforms.convert_to_rgb`); a plain
      `convert("RGB")` shows whatever the transparent pixels hide, often black.
    """
    if image.mode == "RGB":
        return image
    if image.mode.startswith("I;16") or image.mode in ("I", "F"):
        values = np.asarray(image, dtype=np.float64)
        peak = float(values.max()) if values.size else 0.0
        if image.mode.startswith("I;16") or peak > 255:
            values = values / 257.0
        elif image.mode == "F" and peak <= 1.0:
            values = values * 255.0
        image = Image.fromarray(np.clip(np.rint(values), 0, 255).astype(np.uint8))  # mode L
    if "A" in image.getbands() or image.info.get("transparency") is not None:
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


class ImageClassificationCollator:
    """Turns rows `{image, label}` into `pixel_values`, `labels` and `indices` with the CLIP image processor.

    Every image is made 8-bit RGB first ([`to_rgb`]: 16-bit images scaled, transparency composited onto white), then
    `augment` (e.g. [`RandomResizedCropFlip`]) is applied to it (training only). An image
    that cannot be decoded raises an error naming its split and row index.
    """

    def __init__(self, image_processor, split_name: str, augment=None):
        self.image_processor = image_processor
        self.split_name = split_name
        self.augment = augment

    def __call__(self, rows):
        images = []
        for row in rows:
            image = row["image"]
            if getattr(image, "mode", "RGB") != "RGB":
                image = to_rgb(image)
            if self.augment is not None:
                image = self.augment(image)
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
            raise ValueError(f"Cannot decode the image of {self.describe_row(index)}: {err}") from err
        return {"image": image, "label": row["label"], "index": int(index)}

    def describe_row(self, index) -> str:
        """`index` as the user can find it: the row of the source split (`prepare_splits` records it; the rows here
        are a sampled subset) and the image's file when the row holds a path (a CoOp folder, an ImageFolder)."""
        where = f"{self.split_name} row {index}"
        try:
            dataset = self.dataset
            if isinstance(dataset.features.get("image"), datasets.Image):  # read the row without decoding it
                dataset = dataset.cast_column("image", datasets.Image(decode=False))
            row = dataset[int(index)]
        except Exception:  # noqa: BLE001 - the description must not hide the decode error
            return where
        if SOURCE_ROW_COLUMN in row:
            where = (f"{self.split_name} row {row[SOURCE_ROW_COLUMN]} of the source split (row {index} of the sampled "
                     "subset)")
        image = row.get("image")
        if isinstance(image, dict) and image.get("path"):
            where += f", file {image['path']}"
        return where

    def verify(self) -> None:
        """Decode every image once (used on the small few-shot training set before any training)."""
        for index in range(len(self)):
            self[index]

    def pixel_values(self, indices, image_processor) -> torch.Tensor:
        """Processed images of the given rows, `(len(indices), 3, H, W)` (representative samples in CAPT)."""
        rows = [self[int(i)] for i in indices]
        return ImageClassificationCollator(image_processor, self.split_name)(rows)["pixel_values"]


def make_loader(dataset, image_processor, batch_size, shuffle, num_workers, split_name, seed=0, augment=None):
    generator = torch.Generator().manual_seed(seed)
    return torch.utils.data.DataLoader(
        IndexedImageDataset(dataset, split_name),
        batch_size=batch_size,
        shuffle=shuffle,
        num_workers=num_workers,
        collate_fn=ImageClassificationCollator(image_processor, split_name, augment=augment),
        generator=generator if shuffle else None,
    )
