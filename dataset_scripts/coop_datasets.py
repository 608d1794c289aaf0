"""Readers for the 15 image-classification benchmarks of the CoOp protocol.

Every reader turns the on-disk layout that users already have from CoOp's ``DATASETS.md``
(all datasets under one root, ``$DATA``) into a :class:`datasets.DatasetDict` with two columns:

* ``image``: a :class:`datasets.Image` feature holding the *file path* (decoded lazily, never
  copied into memory as bytes);
* ``label``: a :class:`datasets.ClassLabel` whose names are the dataset's class names in label
  order (the third field of CoOp's ``split_zhou_*.json`` file when it exists).

The eleven "training" datasets come with ``train``, ``val`` and ``test`` splits; the four ImageNet
variants used for domain generalisation (``imagenetv2``, ``imagenet_sketch``, ``imagenet_a``,
``imagenet_r``) come with ``test`` only.

Where a dataset has no ``split_zhou`` file, the split is generated the way CoOp generates it for that
dataset (per-class 50/20/30 for DTD, Caltech101, Food101, Flowers102 and EuroSAT; the official train(+val)
list with 20 % validation for OxfordPets, StanfordCars, SUN397 and UCF101), classes visited in CoOp's order
(sorted folders; first appearance in an annotation list), each class shuffled by ``random.Random(SPLIT_SEED)``;
the rule and seed are recorded as the split's provenance. Where CoOp lists a folder's files it uses an
unsorted ``os.listdir`` and the global generator seeded by the first run's seed, so CoOp's own generated
splits (and its ImageNet few-shot draw, which samples from that listing) depend on the machine's file
system; here files are listed in sorted order so the result is the same on every machine. The published
results use the shipped ``split_zhou`` files, which this reader follows exactly.

ImageNet follows CoOp: train is all of ``images/train`` (the few-shot pool), and the official val set
(``images/val``) is both the val and the test split; CoOp draws no few-shot validation set for it
(``DatasetInfo.few_shot_val`` is False: pass ``sample_val=False`` to the few-shot sampler).

Bad input is never silently repaired:

* a missing folder, annotation or split file raises :class:`MissingDataError` naming the dataset
  and the path;
* an image listed in a split file but absent on disk raises :class:`MissingImageError` naming it;
* an image that PIL cannot decode (checked when ``verify_images=True``) is skipped, logged with a
  warning and counted in the :class:`ReadReport` and in every split's ``info.description``;
* a class with no images in a split raises :class:`EmptyClassError`.

Public API: :func:`list_datasets`, :func:`get_dataset_info`, :func:`load_coop_dataset`,
:func:`read_coop_dataset`, :func:`load_benchmark` and :func:`imagenet_subset_indices`.
"""

from __future__ import annotations

import json
import logging
import os
import random
import re
from collections import Counter, defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Callable

import datasets
from datasets import ClassLabel, DatasetDict, Features
from datasets import Image as ImageFeature

#: The provenance record `build_benchmark.py` writes into each config folder of a Parquet benchmark (its presence
#: also tells the trainer the rows are in the split list's order, so the few-shot draw can follow Dassl's).
PROVENANCE_FILE = "capt_benchmark.json"

logger = logging.getLogger(__name__)

#: Seed of the ``random.Random`` used to generate splits where no ``split_zhou`` file exists.
SPLIT_SEED = 1
#: CoOp's fractions for datasets split per class into train / val / test (DTD, Caltech, Food, Flowers).
TRAIN_FRACTION, VAL_FRACTION = 0.5, 0.2
#: CoOp's validation fraction when a train(+val) set is split into train and val (OxfordPets, StanfordCars).
TRAINVAL_VAL_FRACTION = 0.2
#: CoOp's EuroSAT class names (its ``NEW_CNAMES``), used when the split is generated from the class folders.
EUROSAT_RENAMED_FOLDERS = {
    "AnnualCrop": "Annual Crop Land", "Forest": "Forest", "HerbaceousVegetation": "Herbaceous Vegetation Land",
    "Highway": "Highway or Road", "Industrial": "Industrial Buildings", "Pasture": "Pasture Land",
    "PermanentCrop": "Permanent Crop Land", "Residential": "Residential Buildings", "River": "River",
    "SeaLake": "Sea or Lake",
}
#: File extensions accepted as images when a reader lists class folders.
IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm"})
#: Below this many images, image verification runs without a progress bar.
_PROGRESS_BAR_MIN_IMAGES = 2000

TRAIN_SPLITS = ("train", "val", "test")
TEST_ONLY_SPLITS = ("test",)


# --------------------------------------------------------------------------------------------
# Errors and report
# --------------------------------------------------------------------------------------------


class CoopDatasetError(Exception):
    """Base class of the errors raised while reading a CoOp-layout dataset."""


class MissingDataError(CoopDatasetError, FileNotFoundError):
    """A folder, annotation file or split file that the layout requires is missing."""


class MissingImageError(MissingDataError):
    """Images listed in a split or annotation file are absent on disk."""


class EmptyClassError(CoopDatasetError, ValueError):
    """A class has no images (in the whole dataset or in one of its splits)."""


class SplitFileError(CoopDatasetError, ValueError):
    """A split or annotation file is malformed (bad entry, inconsistent class names, ...)."""


@dataclass
class ReadReport:
    """What a reader did: where the split came from, how many rows each split has, what was skipped."""

    dataset: str
    provenance: str
    num_examples: dict[str, int] = field(default_factory=dict)
    corrupt_images: list[str] = field(default_factory=list)
    images_verified: bool = True

    @property
    def num_corrupt_images(self) -> int:
        """Number of images skipped because PIL could not decode them."""
        return len(self.corrupt_images)

    def describe(self) -> str:
        """One paragraph for ``Dataset.info.description`` and for logs."""
        counts = ", ".join(f"{split}={n}" for split, n in self.num_examples.items())
        verified = "decoded with PIL" if self.images_verified else "not verified (verify_images=False)"
        lines = [
            f"CoOp-protocol benchmark '{self.dataset}' read by capt.",
            f"Split provenance: {self.provenance}.",
            f"Examples per split: {counts}.",
            f"Images {verified}; corrupt images skipped: {self.num_corrupt_images}.",
        ]
        if self.corrupt_images:
            shown = ", ".join(self.corrupt_images[:10])
            more = "" if self.num_corrupt_images <= 10 else f" (and {self.num_corrupt_images - 10} more)"
            lines.append(f"Skipped: {shown}{more}.")
        return "\n".join(lines)


# --------------------------------------------------------------------------------------------
# Registry
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DatasetInfo:
    """Static description of one benchmark of the CoOp protocol.

    Attributes:
        name: registry key (snake_case), also the config name of the built Hub dataset.
        display_name: CoOp's class name for the dataset (``OxfordPets``, ``DescribableTextures``...).
        folder: the dataset's folder under ``$DATA``.
        template: the hand-crafted prompt template of CoOp's zero-shot trainer (``{}`` = class name).
        num_classes: number of classes of the full dataset in the papers.
        test_only: True for the ImageNet variants that only have a test split.
        image_dir: folder (relative to ``folder``) that the split file's image paths are relative to.
        split_file: name of CoOp's ``split_zhou_*.json`` file inside ``folder`` (None: no split file).
        layout: which reader handles the dataset.
        generated_split: the rule used when ``split_file`` is absent (None: the layout carries its own
            official split).
        homepage: where the original dataset, and its licence / terms of use, are published.
        few_shot_val: whether CoOp draws a few-shot validation set (False for ImageNet, whose val is its test).
    """

    name: str
    display_name: str
    folder: str
    template: str
    num_classes: int
    test_only: bool = False
    image_dir: str = ""
    split_file: str | None = None
    layout: str = "split_zhou"
    generated_split: str | None = None
    homepage: str = ""
    few_shot_val: bool = True

    @property
    def splits(self) -> tuple[str, ...]:
        """Names of the splits the reader returns."""
        return TEST_ONLY_SPLITS if self.test_only else TRAIN_SPLITS

    def dataset_dir(self, data_dir: str | os.PathLike) -> str:
        """Absolute path of the dataset's folder under ``data_dir`` (``$DATA``)."""
        return os.path.join(os.path.abspath(os.fspath(data_dir)), self.folder)

    def format_prompt(self, classname: str, template: str | None = None) -> str:
        """The hand-crafted prompt for one class, CoOp-style (underscores in class names become spaces)."""
        return (template or self.template).format(classname.replace("_", " "))


_PER_CLASS_RULE = (
    f"generated by capt like CoOp: each class folder's files (sorted by name) shuffled by "
    f"random.Random({SPLIT_SEED}) and split {TRAIN_FRACTION:.0%} train / {VAL_FRACTION:.0%} val / rest test "
    f"(counts rounded with round())"
)
_TRAINVAL_RULE = (
    f"generated by capt like CoOp: official train(+val) set split per class (classes in order of first "
    f"appearance) into train and {TRAINVAL_VAL_FRACTION:.0%} val (shuffled by random.Random({SPLIT_SEED}), count "
    f"rounded with round()), official test set as test"
)

_REGISTRY: dict[str, DatasetInfo] = {
    info.name: info
    for info in [
        DatasetInfo(
            name="imagenet",
            display_name="ImageNet",
            folder="imagenet",
            template="a photo of a {}.",
            num_classes=1000,
            layout="imagenet",
            image_dir="images",
            generated_split=(
                "as CoOp: classnames.txt (wnid order) for labels; all of images/train as train (files sorted by name); "
                "images/val (official val) as both val and test, no few-shot validation draw"
            ),
            homepage="https://image-net.org/download.php",
            few_shot_val=False,
        ),
        DatasetInfo(
            name="caltech101",
            display_name="Caltech101",
            folder="caltech-101",
            template="a photo of a {}.",
            num_classes=100,
            image_dir="101_ObjectCategories",
            split_file="split_zhou_Caltech101.json",
            layout="class_folders",
            generated_split=_PER_CLASS_RULE + "; BACKGROUND_Google and Faces_easy ignored",
            homepage="https://data.caltech.edu/records/mzrjq-6wc02",
        ),
        DatasetInfo(
            name="oxford_pets",
            display_name="OxfordPets",
            folder="oxford_pets",
            template="a photo of a {}, a type of pet.",
            num_classes=37,
            image_dir="images",
            split_file="split_zhou_OxfordPets.json",
            layout="oxford_pets",
            generated_split=_TRAINVAL_RULE + " (annotations/trainval.txt and annotations/test.txt)",
            homepage="https://www.robots.ox.ac.uk/~vgg/data/pets/",
        ),
        DatasetInfo(
            name="stanford_cars",
            display_name="StanfordCars",
            folder="stanford_cars",
            template="a photo of a {}.",
            num_classes=196,
            image_dir="",
            split_file="split_zhou_StanfordCars.json",
            layout="stanford_cars",
            generated_split=_TRAINVAL_RULE + " (devkit/cars_train_annos.mat, cars_test_annos_withlabels.mat, "
            "devkit/cars_meta.mat; year moved to the front of the class name)",
            homepage="https://ai.stanford.edu/~jkrause/cars/car_dataset.html",
        ),
        DatasetInfo(
            name="oxford_flowers",
            display_name="OxfordFlowers",
            folder="oxford_flowers",
            template="a photo of a {}, a type of flower.",
            num_classes=102,
            image_dir="jpg",
            split_file="split_zhou_OxfordFlowers.json",
            layout="oxford_flowers",
            generated_split=(
                f"generated by capt like CoOp: imagelabels.mat labels and cat_to_name.json names; each class's "
                f"images (sorted by name) shuffled by random.Random({SPLIT_SEED}) and split {TRAIN_FRACTION:.0%} "
                f"train / {VAL_FRACTION:.0%} val / rest test (counts rounded with round())"
            ),
            homepage="https://www.robots.ox.ac.uk/~vgg/data/flowers/102/",
        ),
        DatasetInfo(
            name="food101",
            display_name="Food101",
            folder="food-101",
            template="a photo of {}, a type of food.",
            num_classes=101,
            image_dir="images",
            split_file="split_zhou_Food101.json",
            layout="class_folders",
            generated_split=_PER_CLASS_RULE,
            homepage="https://data.vision.ee.ethz.ch/cvl/datasets_extra/food-101/",
        ),
        DatasetInfo(
            name="fgvc_aircraft",
            display_name="FGVCAircraft",
            folder="fgvc_aircraft",
            template="a photo of a {}, a type of aircraft.",
            num_classes=100,
            image_dir="images",
            layout="fgvc_aircraft",
            generated_split=(
                "official FGVC-Aircraft split: images_variant_{train,val,test}.txt, labels in variants.txt order"
            ),
            homepage="https://www.robots.ox.ac.uk/~vgg/data/fgvc-aircraft/",
        ),
        DatasetInfo(
            name="sun397",
            display_name="SUN397",
            folder="sun397",
            template="a photo of a {}.",
            num_classes=397,
            image_dir="SUN397",
            split_file="split_zhou_SUN397.json",
            layout="sun397",
            generated_split=_TRAINVAL_RULE + " (ClassName.txt, Training_01.txt, Testing_01.txt; class name = the "
            "folder path after the letter, reversed, joined by spaces)",
            homepage="https://vision.princeton.edu/projects/2010/SUN/",
        ),
        DatasetInfo(
            name="dtd",
            display_name="DescribableTextures",
            folder="dtd",
            template="{} texture.",
            num_classes=47,
            image_dir="images",
            split_file="split_zhou_DescribableTextures.json",
            layout="class_folders",
            generated_split=_PER_CLASS_RULE,
            homepage="https://www.robots.ox.ac.uk/~vgg/data/dtd/",
        ),
        DatasetInfo(
            name="eurosat",
            display_name="EuroSAT",
            folder="eurosat",
            template="a centered satellite photo of {}.",
            num_classes=10,
            image_dir="2750",
            split_file="split_zhou_EuroSAT.json",
            layout="class_folders",
            generated_split=_PER_CLASS_RULE + "; class folders renamed as CoOp (AnnualCrop -> Annual Crop Land, ...)",
            homepage="https://github.com/phelber/EuroSAT",
        ),
        DatasetInfo(
            name="ucf101",
            display_name="UCF101",
            folder="ucf101",
            template="a photo of a person doing {}.",
            num_classes=101,
            image_dir="UCF-101-midframes",
            split_file="split_zhou_UCF101.json",
            layout="ucf101",
            generated_split=_TRAINVAL_RULE + " (ucfTrainTestlist/classInd.txt, trainlist01.txt, testlist01.txt; "
            "class CamelCase split into words joined by '_', the .avi's mid-frame .jpg)",
            homepage="https://www.crcv.ucf.edu/data/UCF101.php",
        ),
        DatasetInfo(
            name="imagenetv2",
            display_name="ImageNetV2",
            folder="imagenetv2",
            template="a photo of a {}.",
            num_classes=1000,
            test_only=True,
            image_dir="imagenetv2-matched-frequency-format-val",
            layout="imagenet_variant",
            generated_split=(
                "whole ImageNetV2 matched-frequency set as test; folder i holds ImageNet class i (classnames.txt order)"
            ),
            homepage="https://github.com/modestyachts/ImageNetV2",
        ),
        DatasetInfo(
            name="imagenet_sketch",
            display_name="ImageNetSketch",
            folder="imagenet-sketch",
            template="a photo of a {}.",
            num_classes=1000,
            test_only=True,
            image_dir="images",
            layout="imagenet_variant",
            generated_split="whole ImageNet-Sketch as test; wnid folders, labels in classnames.txt order",
            homepage="https://github.com/HaohanWang/ImageNet-Sketch",
        ),
        DatasetInfo(
            name="imagenet_a",
            display_name="ImageNetA",
            folder="imagenet-adversarial",
            template="a photo of a {}.",
            num_classes=200,
            test_only=True,
            image_dir="imagenet-a",
            layout="imagenet_variant",
            generated_split="whole ImageNet-A as test; its 200 wnid folders, labels in ImageNet's classnames.txt order",
            homepage="https://github.com/hendrycks/natural-adv-examples",
        ),
        DatasetInfo(
            name="imagenet_r",
            display_name="ImageNetR",
            folder="imagenet-rendition",
            template="a photo of a {}.",
            num_classes=200,
            test_only=True,
            image_dir="imagenet-r",
            layout="imagenet_variant",
            generated_split="whole ImageNet-R as test; its 200 wnid folders, labels in ImageNet's classnames.txt order",
            homepage="https://github.com/hendrycks/imagenet-r",
        ),
    ]
}

#: CoOp's Caltech101 conventions: folders left out and folders renamed.
CALTECH_IGNORED_FOLDERS = ("BACKGROUND_Google", "Faces_easy")
CALTECH_RENAMED_FOLDERS = {"airplanes": "airplane", "Faces": "face", "Leopards": "leopard", "Motorbikes": "motorbike"}


#: Benchmarks outside the CoOp protocols (not in `list_datasets`, so no CoOp table includes them), readable by name:
#: Food-101N, the real-noise set of the label-noise protocol (`trainers/label_noise_protocol.py`).
_EXTRA_REGISTRY: dict[str, DatasetInfo] = {
    "food101n": DatasetInfo(
        name="food101n",
        display_name="Food101N",
        folder="Food-101N_release",
        template="a photo of {}, a type of food.",
        num_classes=101,
        image_dir="images",
        layout="food101n",
        generated_split=(f"Food-101N images (meta/imagelist.tsv, else the class folders) with their noisy labels, "
                         f"{TRAINVAL_VAL_FRACTION:.0%} per class held out as val by random.Random({SPLIT_SEED}); "
                         "Food-101's test split as test"),
        homepage="https://kuanghuei.github.io/Food-101N/",
    ),
}


def list_datasets() -> list[str]:
    """Registry keys of the 15 benchmarks, in the order of the papers' tables."""
    return list(_REGISTRY)


def _normalise_name(name: str) -> str:
    return "".join(ch for ch in name.lower() if ch.isalnum())


def get_dataset_info(name: str) -> DatasetInfo:
    """The :class:`DatasetInfo` of a benchmark, by registry key (CoOp's class name is accepted too)."""
    if name in _REGISTRY:
        return _REGISTRY[name]
    if name in _EXTRA_REGISTRY:
        return _EXTRA_REGISTRY[name]
    wanted = _normalise_name(name)
    for info in [*_REGISTRY.values(), *_EXTRA_REGISTRY.values()]:
        if wanted in (_normalise_name(info.name), _normalise_name(info.display_name)):
            return info
    raise KeyError(f"Unknown CoOp benchmark {name!r}; known: {', '.join(_REGISTRY)}")


# --------------------------------------------------------------------------------------------
# Raw split records, shared by all readers
# --------------------------------------------------------------------------------------------


@dataclass
class _RawSplits:
    """What a layout reader returns: class names in label order and (absolute path, label) per split."""

    classnames: list[str]
    splits: dict[str, list[tuple[str, int]]]
    provenance: str
    #: True when the image paths come from a list (split / annotation file) rather than from a folder listing.
    listed: bool = True
    #: Other dataset folders the splits may read from (Food-101N tests on Food-101's folder beside it).
    other_roots: tuple[str, ...] = ()


def _where(info: DatasetInfo) -> str:
    return f"{info.display_name} ('{info.name}')"


def _is_inside(path: str, folder: str) -> bool:
    """True if `path`, made absolute and normalised (`..` resolved without following links), lies under `folder`.

    Links are not followed: a dataset folder may link its images from another disk; what is refused is a list entry
    (`../../x.png`, `/abs/x.png`) that names a file outside it.
    """
    path, folder = os.path.abspath(path), os.path.abspath(folder)
    return os.path.commonpath([path, folder]) == folder


def _check_inside_dataset(info: DatasetInfo, dataset_dir: str, raw: _RawSplits) -> None:
    """Refuse any listed file outside the dataset folder (an annotation list's entry can be `../../x`, and the
    benchmark builder would embed that file's bytes in Parquet that it uploads)."""
    roots = (dataset_dir, *raw.other_roots)
    outside = [(split, path) for split, records in raw.splits.items() for path, _ in records
               if not any(_is_inside(path, root) for root in roots)]
    if outside:
        shown = "; ".join(f"{path} ({split}, resolves to {os.path.abspath(path)})" for split, path in outside[:5])
        raise SplitFileError(
            f"{_where(info)}: {raw.provenance} lists {len(outside)} file(s) outside the dataset folder {dataset_dir}: "
            f"{shown}; refusing to read them."
        )


def _require_dir(info: DatasetInfo, path: str, what: str) -> str:
    if not os.path.isdir(path):
        raise MissingDataError(
            f"{_where(info)}: {what} not found at {path}. Expected CoOp's layout: $DATA/{info.folder}/... "
            f"(see CoOp's DATASETS.md)."
        )
    return path


def _require_file(info: DatasetInfo, path: str, what: str) -> str:
    if not os.path.isfile(path):
        raise MissingDataError(f"{_where(info)}: {what} not found at {path}.")
    return path


def _list_images(folder: str) -> list[str]:
    """Sorted names of the image files of a folder (hidden and non-image files are left out, with a log line)."""
    names = sorted(os.listdir(folder))
    images = [n for n in names if not n.startswith(".") and os.path.splitext(n)[1].lower() in IMAGE_EXTENSIONS]
    others = [n for n in names if not n.startswith(".") and n not in images]
    if others:
        logger.info("Ignoring %d non-image entries in %s (e.g. %s)", len(others), folder, others[0])
    return images


def _list_subfolders(folder: str) -> list[str]:
    return sorted(n for n in os.listdir(folder) if not n.startswith(".") and os.path.isdir(os.path.join(folder, n)))


def _split_per_class(
    items_by_label: dict[int, list[str]], fractions: tuple[float, float], rng: random.Random, info: DatasetInfo
) -> dict[str, list[tuple[str, int]]]:
    """CoOp's per-class train / val / test split (counts rounded with ``round``; every part must be non-empty).

    The classes are visited in ``items_by_label``'s order, as CoOp visits them: label order for class folders
    (sorted folder names), first appearance in ``imagelabels.mat`` for Flowers102. The order decides which
    generator draws shuffle which class."""
    train_fraction, val_fraction = fractions
    splits: dict[str, list[tuple[str, int]]] = {"train": [], "val": [], "test": []}
    for label in items_by_label:
        paths = list(items_by_label[label])
        rng.shuffle(paths)
        n_train, n_val = round(len(paths) * train_fraction), round(len(paths) * val_fraction)
        n_test = len(paths) - n_train - n_val
        if min(n_train, n_val, n_test) <= 0:
            raise EmptyClassError(
                f"{_where(info)}: class {label} has {len(paths)} images, too few for a "
                f"{train_fraction:.0%}/{val_fraction:.0%}/rest split with non-empty parts."
            )
        splits["train"] += [(p, label) for p in paths[:n_train]]
        splits["val"] += [(p, label) for p in paths[n_train : n_train + n_val]]
        splits["test"] += [(p, label) for p in paths[n_train + n_val :]]
    return splits


def _split_train_val(
    items: list[tuple[str, int]], val_fraction: float, rng: random.Random, info: DatasetInfo, classnames: list[str]
) -> tuple[list[tuple[str, int]], list[tuple[str, int]]]:
    """CoOp's ``split_trainval``: per class, shuffle and hold out ``round(n * val_fraction)`` items as val.

    Classes are visited in the order of their first appearance in ``items`` (CoOp's ``defaultdict`` tracker)."""
    by_label: dict[int, list[tuple[str, int]]] = defaultdict(list)
    for item in items:
        by_label[item[1]].append(item)
    train, val = [], []
    for label in by_label:
        class_items = list(by_label[label])
        rng.shuffle(class_items)
        n_val = round(len(class_items) * val_fraction)
        if n_val <= 0 or n_val >= len(class_items):
            raise EmptyClassError(
                f"{_where(info)}: class {label} '{classnames[label]}' has {len(class_items)} training images, "
                f"too few to hold out {val_fraction:.0%} for validation and keep some for training."
            )
        val += class_items[:n_val]
        train += class_items[n_val:]
    return train, val


# --------------------------------------------------------------------------------------------
# Layout readers
# --------------------------------------------------------------------------------------------


def _read_split_zhou(info: DatasetInfo, dataset_dir: str) -> _RawSplits:
    """CoOp's ``split_zhou_*.json``: ``{"train": [[rel_path, label, classname], ...], "val": ..., "test": ...}``."""
    split_path = os.path.join(dataset_dir, info.split_file)
    _require_file(info, split_path, f"CoOp split file {info.split_file}")
    image_root = _require_dir(info, os.path.join(dataset_dir, info.image_dir), "image folder")
    try:
        with open(split_path, encoding="utf-8") as handle:
            content = json.load(handle)
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise SplitFileError(f"{_where(info)}: {split_path} is not valid JSON ({error}).") from error

    names_by_label: dict[int, str] = {}
    splits: dict[str, list[tuple[str, int]]] = {}
    for split in TRAIN_SPLITS:
        if not isinstance(content, dict) or not isinstance(content.get(split), list):
            raise SplitFileError(f"{_where(info)}: {split_path} has no '{split}' list.")
        records = []
        for position, entry in enumerate(content[split]):
            if not (
                isinstance(entry, (list, tuple))
                and len(entry) == 3
                and isinstance(entry[0], str)
                and isinstance(entry[1], int)
                and not isinstance(entry[1], bool)
            ):
                raise SplitFileError(
                    f"{_where(info)}: {split_path} {split}[{position}] should be [path, int label, classname], "
                    f"got {entry!r}."
                )
            rel_path, label, classname = entry[0], entry[1], str(entry[2])
            known = names_by_label.setdefault(label, classname)
            if known != classname:
                raise SplitFileError(
                    f"{_where(info)}: {split_path} gives label {label} two class names: {known!r} and {classname!r}."
                )
            path = os.path.normpath(os.path.join(image_root, rel_path))
            if not _is_inside(path, dataset_dir):
                raise SplitFileError(
                    f"{_where(info)}: {split_path} {split}[{position}] {entry!r} names a file outside the dataset "
                    f"folder {dataset_dir}; refusing to read it."
                )
            records.append((path, label))
        splits[split] = records

    num_classes = max(names_by_label, default=-1) + 1
    missing_labels = [label for label in range(num_classes) if label not in names_by_label]
    if min(names_by_label, default=0) < 0 or missing_labels:
        raise EmptyClassError(
            f"{_where(info)}: {split_path} has no images for label(s) {missing_labels[:10]} "
            f"(labels must run from 0 to {num_classes - 1})."
        )
    classnames = [names_by_label[label] for label in range(num_classes)]
    return _RawSplits(classnames, splits, provenance=f"CoOp split file {info.split_file} (split_zhou)")


def _read_class_folders(info: DatasetInfo, dataset_dir: str) -> _RawSplits:
    """Caltech101 / DTD / Food101 / EuroSAT: the split file if present, else CoOp's 50/20/30 per-class split of class
    folders."""
    if os.path.isfile(os.path.join(dataset_dir, info.split_file)):
        return _read_split_zhou(info, dataset_dir)
    image_root = _require_dir(info, os.path.join(dataset_dir, info.image_dir), "image folder")
    logger.info("%s: no %s, generating CoOp's per-class split", _where(info), info.split_file)
    ignored = CALTECH_IGNORED_FOLDERS if info.name == "caltech101" else ()
    renamed = {"caltech101": CALTECH_RENAMED_FOLDERS, "eurosat": EUROSAT_RENAMED_FOLDERS}.get(info.name, {})
    folders = [f for f in _list_subfolders(image_root) if f not in ignored]
    if not folders:
        raise EmptyClassError(f"{_where(info)}: no class folders in {image_root}.")
    items_by_label: dict[int, list[str]] = {}
    for label, folder in enumerate(folders):
        class_dir = os.path.join(image_root, folder)
        images = _list_images(class_dir)
        if not images:
            raise EmptyClassError(f"{_where(info)}: class folder {class_dir} has no images.")
        items_by_label[label] = [os.path.join(class_dir, name) for name in images]
    classnames = [renamed.get(folder, folder) for folder in folders]
    splits = _split_per_class(items_by_label, (TRAIN_FRACTION, VAL_FRACTION), random.Random(SPLIT_SEED), info)
    return _RawSplits(
        classnames, splits, provenance=f"{info.generated_split} (no {info.split_file} found)", listed=False
    )


def _read_oxford_pets(info: DatasetInfo, dataset_dir: str) -> _RawSplits:
    """OxfordPets: the split file if present, else ``annotations/{trainval,test}.txt`` with 20 % validation."""
    if os.path.isfile(os.path.join(dataset_dir, info.split_file)):
        return _read_split_zhou(info, dataset_dir)
    image_root = _require_dir(info, os.path.join(dataset_dir, info.image_dir), "image folder")
    names_by_label: dict[int, str] = {}

    def read_list(list_name: str) -> list[tuple[str, int]]:
        path = _require_file(info, os.path.join(dataset_dir, "annotations", list_name), f"annotation list {list_name}")
        records = []
        with open(path, encoding="utf-8") as handle:
            for line_number, line in enumerate(handle, start=1):
                line = line.strip()
                if not line or line.startswith("#"):
                    continue
                fields = line.split()
                if len(fields) < 2:
                    raise SplitFileError(
                        f"{_where(info)}: {path}:{line_number}: expected 'name class_id ...', got {line!r}."
                    )
                if not fields[1].lstrip("-").isdigit():
                    raise SplitFileError(
                        f"{_where(info)}: {path}:{line_number}: class id should be an integer, got {fields[1]!r}."
                    )
                image_name, label = fields[0], int(fields[1]) - 1
                breed = "_".join(image_name.split("_")[:-1]).lower()
                known = names_by_label.setdefault(label, breed)
                if known != breed:
                    raise SplitFileError(
                        f"{_where(info)}: {path}:{line_number}: class {label + 1} is both {known!r} and {breed!r}."
                    )
                records.append((os.path.join(image_root, image_name + ".jpg"), label))
        return records

    trainval, test = read_list("trainval.txt"), read_list("test.txt")
    classnames = _classnames_from_labels(info, names_by_label, "annotations/*.txt")
    train, val = _split_train_val(trainval, TRAINVAL_VAL_FRACTION, random.Random(SPLIT_SEED), info, classnames)
    return _RawSplits(
        classnames,
        {"train": train, "val": val, "test": test},
        provenance=f"{info.generated_split} (no {info.split_file} found)",
    )


def _classnames_from_labels(info: DatasetInfo, names_by_label: dict[int, str], source: str) -> list[str]:
    num_classes = max(names_by_label, default=-1) + 1
    missing = [label for label in range(num_classes) if label not in names_by_label]
    if not names_by_label or missing or min(names_by_label) < 0:
        raise EmptyClassError(f"{_where(info)}: {source} has no images for class index(es) {missing[:10] or 'any'}.")
    return [names_by_label[label] for label in range(num_classes)]


def _mat_scalar(value):
    """The single element of a (nested) array as loaded by ``scipy.io.loadmat``."""
    import numpy as np

    while isinstance(value, np.ndarray):
        if value.size != 1:
            raise ValueError(f"expected a single value, got an array of shape {value.shape}")
        value = value.reshape(-1)[0]
    return value.item() if hasattr(value, "item") else value


def _load_mat(info: DatasetInfo, path: str) -> dict:
    _require_file(info, path, f"annotation file {os.path.basename(path)}")
    try:
        from scipy.io import loadmat
    except ImportError as error:  # pragma: no cover - scipy is a dependency of the dataset scripts
        raise ImportError(f"{_where(info)}: reading {path} needs scipy (`pip install scipy`).") from error
    return loadmat(path)


def _read_stanford_cars(info: DatasetInfo, dataset_dir: str) -> _RawSplits:
    """StanfordCars: the split file if present, else the devkit ``.mat`` annotations with 20 % validation."""
    if os.path.isfile(os.path.join(dataset_dir, info.split_file)):
        return _read_split_zhou(info, dataset_dir)
    meta = _load_mat(info, os.path.join(dataset_dir, "devkit", "cars_meta.mat"))["class_names"]
    raw_names = [str(_mat_scalar(entry)) for entry in meta.reshape(-1)]
    # CoOp moves the year (last word) to the front: "AM General Hummer SUV 2000" -> "2000 AM General Hummer SUV".
    classnames = [" ".join([name.split(" ")[-1]] + name.split(" ")[:-1]) for name in raw_names]

    def read_annotations(image_folder: str, mat_path: str) -> list[tuple[str, int]]:
        image_dir = _require_dir(info, os.path.join(dataset_dir, image_folder), f"image folder {image_folder}")
        annotations = _load_mat(info, mat_path)["annotations"].reshape(-1)
        records = []
        for annotation in annotations:
            label = int(_mat_scalar(annotation["class"])) - 1
            if not 0 <= label < len(classnames):
                raise SplitFileError(f"{_where(info)}: {mat_path} has class {label + 1}, not in cars_meta.mat.")
            records.append((os.path.join(image_dir, str(_mat_scalar(annotation["fname"]))), label))
        return records

    trainval = read_annotations("cars_train", os.path.join(dataset_dir, "devkit", "cars_train_annos.mat"))
    test = read_annotations("cars_test", os.path.join(dataset_dir, "cars_test_annos_withlabels.mat"))
    train, val = _split_train_val(trainval, TRAINVAL_VAL_FRACTION, random.Random(SPLIT_SEED), info, classnames)
    return _RawSplits(
        classnames,
        {"train": train, "val": val, "test": test},
        provenance=f"{info.generated_split} (no {info.split_file} found)",
    )


def _read_oxford_flowers(info: DatasetInfo, dataset_dir: str) -> _RawSplits:
    """Flowers102: the split file if present, else ``imagelabels.mat`` + ``cat_to_name.json``, 50/20/30 per class."""
    if os.path.isfile(os.path.join(dataset_dir, info.split_file)):
        return _read_split_zhou(info, dataset_dir)
    image_root = _require_dir(info, os.path.join(dataset_dir, info.image_dir), "image folder")
    labels = _load_mat(info, os.path.join(dataset_dir, "imagelabels.mat"))["labels"].reshape(-1)
    names_path = _require_file(info, os.path.join(dataset_dir, "cat_to_name.json"), "class-name file cat_to_name.json")
    try:
        with open(names_path, encoding="utf-8") as handle:
            name_by_class_id = {int(key): str(value) for key, value in json.load(handle).items()}
    except (json.JSONDecodeError, UnicodeDecodeError, AttributeError, ValueError) as error:
        raise SplitFileError(
            f"{_where(info)}: {names_path} should be a JSON object {{\"<class id>\": \"<name>\", ...}} ({error})."
        ) from error
    items_by_label: dict[int, list[str]] = defaultdict(list)
    for index, class_id in enumerate(labels):
        if int(class_id) < 1:
            raise SplitFileError(
                f"{_where(info)}: imagelabels.mat gives image {index + 1} class id {int(class_id)}; ids start at 1."
            )
        items_by_label[int(class_id) - 1].append(os.path.join(image_root, f"image_{index + 1:05d}.jpg"))
    num_classes = max(len(name_by_class_id), max(items_by_label, default=-1) + 1)
    for label in range(num_classes):
        if label + 1 not in name_by_class_id:
            raise SplitFileError(f"{_where(info)}: {names_path} has no name for class {label + 1}.")
        if label not in items_by_label:
            raise EmptyClassError(
                f"{_where(info)}: class {label + 1} '{name_by_class_id[label + 1]}' has no images in imagelabels.mat."
            )
    classnames = [name_by_class_id[label + 1] for label in range(num_classes)]
    splits = _split_per_class(items_by_label, (TRAIN_FRACTION, VAL_FRACTION), random.Random(SPLIT_SEED), info)
    return _RawSplits(classnames, splits, provenance=f"{info.generated_split} (no {info.split_file} found)")


def _read_fgvc_aircraft(info: DatasetInfo, dataset_dir: str) -> _RawSplits:
    """FGVCAircraft (the ``data/`` folder): ``variants.txt`` + ``images_variant_{train,val,test}.txt`` + ``images/``."""
    image_root = _require_dir(info, os.path.join(dataset_dir, info.image_dir), "image folder")
    lists = {}
    for split in TRAIN_SPLITS:
        path = _require_file(
            info, os.path.join(dataset_dir, f"images_variant_{split}.txt"), f"split list images_variant_{split}.txt"
        )
        entries = []
        with open(path, encoding="utf-8") as handle:
            for line_number, line in enumerate(handle, start=1):
                fields = line.strip().split(" ")
                if not line.strip():
                    continue
                if len(fields) < 2:
                    raise SplitFileError(
                        f"{_where(info)}: {path}:{line_number}: expected 'image_id variant', got {line.strip()!r}."
                    )
                entries.append((fields[0], " ".join(fields[1:])))
        lists[split] = entries

    variants_path = os.path.join(dataset_dir, "variants.txt")
    if os.path.isfile(variants_path):
        with open(variants_path, encoding="utf-8") as handle:
            classnames = [line.strip() for line in handle if line.strip()]
        order = "variants.txt order"
    else:
        classnames = sorted({variant for entries in lists.values() for _, variant in entries})
        order = "sorted variant names (variants.txt absent; CoOp uses variants.txt order)"
        logger.warning(
            "%s: %s not found; labels follow sorted variant names, which may differ from CoOp's.",
            _where(info),
            variants_path,
        )
    label_of = {name: label for label, name in enumerate(classnames)}
    splits = {}
    for split, entries in lists.items():
        unknown = sorted({variant for _, variant in entries if variant not in label_of})
        if unknown:
            raise SplitFileError(
                f"{_where(info)}: images_variant_{split}.txt has variants not in variants.txt: {unknown[:5]}."
            )
        splits[split] = [
            (os.path.join(image_root, image_id + ".jpg"), label_of[variant]) for image_id, variant in entries
        ]
    return _RawSplits(
        classnames,
        splits,
        provenance=f"official FGVC-Aircraft images_variant_{{train,val,test}}.txt, labels in {order}",
    )


def read_imagenet_classnames(path: str) -> dict[str, str]:
    """``classnames.txt`` (``wnid class name`` per line) as an ordered ``{wnid: classname}`` dict."""
    classnames: dict[str, str] = {}
    with open(path, encoding="utf-8") as handle:
        for line_number, line in enumerate(handle, start=1):
            fields = line.strip().split(" ")
            if not line.strip():
                continue
            if len(fields) < 2:
                raise SplitFileError(f"{path}:{line_number}: expected 'wnid class name', got {line.strip()!r}.")
            if fields[0] in classnames:
                raise SplitFileError(f"{path}:{line_number}: wnid {fields[0]} listed twice.")
            classnames[fields[0]] = " ".join(fields[1:])
    return classnames


def _find_imagenet_classnames(info: DatasetInfo, dataset_dir: str) -> dict[str, str]:
    """ImageNet's ``classnames.txt``: in the dataset's own folder (CoOp copies it there), else in ``$DATA/imagenet``."""
    candidates = [os.path.join(dataset_dir, "classnames.txt")]
    imagenet_copy = os.path.join(os.path.dirname(dataset_dir), _REGISTRY["imagenet"].folder, "classnames.txt")
    if imagenet_copy not in candidates:
        candidates.append(imagenet_copy)
    for path in candidates:
        if os.path.isfile(path):
            return read_imagenet_classnames(path)
    raise MissingDataError(f"{_where(info)}: ImageNet's classnames.txt not found at {' or '.join(candidates)}.")


def _read_imagenet(info: DatasetInfo, dataset_dir: str) -> _RawSplits:
    """ImageNet as CoOp reads it: ``classnames.txt``; all of ``images/train/<wnid>/*`` is train; the official val set
    ``images/val/<wnid>/*`` is both val and test (CoOp evaluates the last epoch and draws no few-shot val)."""
    classnames_by_wnid = _find_imagenet_classnames(info, dataset_dir)
    image_root = _require_dir(info, os.path.join(dataset_dir, info.image_dir), "image folder")
    splits = {}
    for folder_split in ("train", "val"):
        split_dir = _require_dir(info, os.path.join(image_root, folder_split), f"images/{folder_split} folder")
        records = _read_wnid_folders(info, split_dir, list(classnames_by_wnid))
        splits[folder_split] = records
    classnames = list(classnames_by_wnid.values())
    return _RawSplits(
        classnames, {"train": splits["train"], "val": splits["val"], "test": splits["val"]},
        provenance=info.generated_split, listed=False,
    )


def _read_lines(info: DatasetInfo, path: str, what: str) -> list[str]:
    """The non-empty stripped lines of a list file CoOp generates a split from (its absence names the split file)."""
    if not os.path.isfile(path):
        raise MissingDataError(
            f"{_where(info)}: neither the CoOp split file {info.split_file} nor {what} ({path}) to generate it from "
            f"was found."
        )
    with open(path, encoding="utf-8") as handle:
        return [line.strip() for line in handle if line.strip()]


def _read_sun397(info: DatasetInfo, dataset_dir: str) -> _RawSplits:
    """SUN397: the split file if present, else CoOp's generation from ``ClassName.txt`` and the first official
    partition (``Training_01.txt`` / ``Testing_01.txt``, in the dataset folder), with 20 % validation."""
    if os.path.isfile(os.path.join(dataset_dir, info.split_file)):
        return _read_split_zhou(info, dataset_dir)
    image_root = _require_dir(info, os.path.join(dataset_dir, info.image_dir), "image folder")
    folders = [line[1:] for line in _read_lines(info, os.path.join(dataset_dir, "ClassName.txt"), "ClassName.txt")]
    label_of = {folder: label for label, folder in enumerate(folders)}
    # "/a/apartment_building/outdoor" -> "outdoor apartment_building" (CoOp: words after the letter, reversed)
    classnames = [" ".join(folder.split("/")[1:][::-1]) for folder in folders]

    def read_list(list_name: str) -> list[tuple[str, int]]:
        records = []
        for line in _read_lines(info, os.path.join(dataset_dir, list_name), list_name):
            image = line[1:]
            folder = os.path.dirname(image)
            if folder not in label_of:
                raise SplitFileError(f"{_where(info)}: {list_name} lists {line!r}, whose class is not in ClassName.txt.")
            records.append((os.path.join(image_root, image), label_of[folder]))
        return records

    trainval, test = read_list("Training_01.txt"), read_list("Testing_01.txt")
    train, val = _split_train_val(trainval, TRAINVAL_VAL_FRACTION, random.Random(SPLIT_SEED), info, classnames)
    return _RawSplits(classnames, {"train": train, "val": val, "test": test},
                      provenance=f"{info.generated_split} (no {info.split_file} found)")


def _read_ucf101(info: DatasetInfo, dataset_dir: str) -> _RawSplits:
    """UCF101: the split file if present, else CoOp's generation from ``ucfTrainTestlist`` (``classInd.txt``,
    ``trainlist01.txt``, ``testlist01.txt``) on the mid-frames, with 20 % validation."""
    if os.path.isfile(os.path.join(dataset_dir, info.split_file)):
        return _read_split_zhou(info, dataset_dir)
    image_root = _require_dir(info, os.path.join(dataset_dir, info.image_dir), "image folder")
    lists = os.path.join(dataset_dir, "ucfTrainTestlist")
    label_of: dict[str, int] = {}
    for line in _read_lines(info, os.path.join(lists, "classInd.txt"), "ucfTrainTestlist/classInd.txt"):
        fields = line.split(" ")
        if len(fields) != 2 or not fields[0].isdigit():
            raise SplitFileError(f"{_where(info)}: classInd.txt line {line!r} should be '<index> <Action>'.")
        label_of[fields[1]] = int(fields[0]) - 1
    names_by_label = {label: "_".join(re.findall("[A-Z][^A-Z]*", action)) for action, label in label_of.items()}
    classnames = _classnames_from_labels(info, names_by_label, "ucfTrainTestlist/classInd.txt")

    def read_list(list_name: str) -> list[tuple[str, int]]:
        records = []
        for line in _read_lines(info, os.path.join(lists, list_name), f"ucfTrainTestlist/{list_name}"):
            action, _, filename = line.split(" ")[0].partition("/")
            if action not in label_of or not filename:
                raise SplitFileError(f"{_where(info)}: {list_name} lists {line!r}, not '<Action>/<video>.avi' of "
                                     "a class in classInd.txt.")
            label = label_of[action]
            records.append((os.path.join(image_root, names_by_label[label], filename.replace(".avi", ".jpg")), label))
        return records

    trainval, test = read_list("trainlist01.txt"), read_list("testlist01.txt")
    train, val = _split_train_val(trainval, TRAINVAL_VAL_FRACTION, random.Random(SPLIT_SEED), info, classnames)
    return _RawSplits(classnames, {"train": train, "val": val, "test": test},
                      provenance=f"{info.generated_split} (no {info.split_file} found)")


def _read_wnid_folders(info: DatasetInfo, split_dir: str, wnids: list[str]) -> list[tuple[str, int]]:
    """Images of ``split_dir/<wnid>/*``, labelled by the wnid's position in ``wnids``; every wnid needs images."""
    extra = sorted(set(_list_subfolders(split_dir)) - set(wnids))
    if extra:
        logger.warning(
            "%s: %d folder(s) in %s are not classes of this dataset and are ignored: %s",
            _where(info),
            len(extra),
            split_dir,
            extra[:5],
        )
    records = []
    for label, wnid in enumerate(wnids):
        class_dir = os.path.join(split_dir, wnid)
        if not os.path.isdir(class_dir):
            raise EmptyClassError(f"{_where(info)}: class {wnid} has no folder {class_dir}.")
        images = _list_images(class_dir)
        if not images:
            raise EmptyClassError(f"{_where(info)}: class folder {class_dir} has no images.")
        records += [(os.path.join(class_dir, name), label) for name in images]
    return records


def _read_imagenet_variant(info: DatasetInfo, dataset_dir: str) -> _RawSplits:
    """ImageNet-V2 (folders ``0..999``), -Sketch (1000 wnid folders), -A / -R (200 wnid folders): test only."""
    classnames_by_wnid = _find_imagenet_classnames(info, dataset_dir)
    image_root = _require_dir(info, os.path.join(dataset_dir, info.image_dir), "image folder")
    if info.name == "imagenetv2":
        # Folder i holds ImageNet class i (classnames.txt order).
        folders = [str(index) for index in range(len(classnames_by_wnid))]
        records = _read_wnid_folders(info, image_root, folders)
        classnames = list(classnames_by_wnid.values())
    elif info.name == "imagenet_sketch":
        records = _read_wnid_folders(info, image_root, list(classnames_by_wnid))
        classnames = list(classnames_by_wnid.values())
    else:
        wnids = _imagenet_subset_wnids(info, image_root, classnames_by_wnid)
        records = _read_wnid_folders(info, image_root, wnids)
        classnames = [classnames_by_wnid[wnid] for wnid in wnids]
    return _RawSplits(classnames, {"test": records}, provenance=info.generated_split, listed=False)


def _imagenet_subset_wnids(info: DatasetInfo, image_root: str, classnames_by_wnid: dict[str, str]) -> list[str]:
    """The wnid folders of ImageNet-A / -R, in ImageNet's class order (unknown wnids are an error)."""
    present = set(_list_subfolders(image_root))
    unknown = sorted(present - set(classnames_by_wnid))
    if unknown:
        raise SplitFileError(
            f"{_where(info)}: folders in {image_root} are not ImageNet wnids of classnames.txt: {unknown[:5]}."
        )
    if not present:
        raise EmptyClassError(f"{_where(info)}: no class folders in {image_root}.")
    return [wnid for wnid in classnames_by_wnid if wnid in present]


def imagenet_subset_indices(name: str, data_dir: str | os.PathLike) -> list[int]:
    """For ImageNet-A / -R: the ImageNet-1k label of each of the subset's labels (``result[subset_label]``).

    Useful to restrict 1000-way ImageNet logits to the 200 classes: ``logits[:, imagenet_subset_indices(...)]``.
    """
    info = get_dataset_info(name)
    dataset_dir = info.dataset_dir(data_dir)
    classnames_by_wnid = _find_imagenet_classnames(info, dataset_dir)
    if info.name in ("imagenet", "imagenetv2", "imagenet_sketch"):
        return list(range(len(classnames_by_wnid)))
    if info.name not in ("imagenet_a", "imagenet_r"):
        raise ValueError(f"{_where(info)} is not an ImageNet variant.")
    image_root = _require_dir(info, os.path.join(dataset_dir, info.image_dir), "image folder")
    index_of = {wnid: index for index, wnid in enumerate(classnames_by_wnid)}
    return [index_of[wnid] for wnid in _imagenet_subset_wnids(info, image_root, classnames_by_wnid)]


def _read_food101n(info: DatasetInfo, dataset_dir: str) -> _RawSplits:
    """Food-101N (VisPrompt's real-noise set): its web images with their noisy folder labels as train (and a held-out
    val, CoOp's ``split_trainval``), Food-101's test split as test (``$DATA/food-101``, read as ``food101``), labels in
    Food-101N's class order matched by name. The images come from ``meta/imagelist.tsv`` when present (its header
    line skipped), else from the class folders."""
    image_root = _require_dir(info, os.path.join(dataset_dir, info.image_dir), "image folder")
    folders = _list_subfolders(image_root)
    if not folders:
        raise EmptyClassError(f"{_where(info)}: no class folders in {image_root}.")
    label_of = {folder: label for label, folder in enumerate(folders)}
    image_list = os.path.join(dataset_dir, "meta", "imagelist.tsv")
    items = []
    if os.path.isfile(image_list):
        with open(image_list, encoding="utf-8") as handle:
            entries = [line.strip() for line in handle if "/" in line and not line.startswith("class_name/")]
        for entry in entries:
            folder = entry.split("/", 1)[0]
            if folder not in label_of:
                raise SplitFileError(f"{_where(info)}: {image_list} lists {entry!r}, of no class folder.")
            items.append((os.path.join(image_root, entry), label_of[folder]))
    else:
        for folder, label in label_of.items():
            items += [(os.path.join(image_root, folder, name), label)
                      for name in _list_images(os.path.join(image_root, folder))]
    train, val = _split_train_val(items, TRAINVAL_VAL_FRACTION, random.Random(SPLIT_SEED), info, folders)
    food101 = _REGISTRY["food101"]
    food101_dir = food101.dataset_dir(os.path.dirname(dataset_dir))
    test_raw = _read_class_folders(food101, food101_dir)
    missing = sorted(set(test_raw.classnames) - set(folders))
    if missing:
        raise SplitFileError(f"{_where(info)}: Food-101 classes {missing[:5]} have no Food-101N class folder.")
    test = [(path, label_of[test_raw.classnames[label]]) for path, label in test_raw.splits["test"]]
    return _RawSplits(folders, {"train": train, "val": val, "test": test},
                      provenance=f"{info.generated_split}; Food-101 test from {test_raw.provenance}",
                      other_roots=(food101_dir,))


_READERS: dict[str, Callable[[DatasetInfo, str], _RawSplits]] = {
    "split_zhou": _read_split_zhou,
    "class_folders": _read_class_folders,
    "food101n": _read_food101n,
    "oxford_pets": _read_oxford_pets,
    "stanford_cars": _read_stanford_cars,
    "oxford_flowers": _read_oxford_flowers,
    "fgvc_aircraft": _read_fgvc_aircraft,
    "imagenet": _read_imagenet,
    "sun397": _read_sun397,
    "ucf101": _read_ucf101,
    "imagenet_variant": _read_imagenet_variant,
}


# --------------------------------------------------------------------------------------------
# Checks shared by all readers
# --------------------------------------------------------------------------------------------


def _check_listed_images_exist(info: DatasetInfo, raw: _RawSplits) -> None:
    missing = [
        (split, path) for split, records in raw.splits.items() for path, _ in records if not os.path.isfile(path)
    ]
    if missing:
        shown = "; ".join(f"{path} ({split})" for split, path in missing[:5])
        more = "" if len(missing) <= 5 else f" and {len(missing) - 5} more"
        raise MissingImageError(
            f"{_where(info)}: {len(missing)} image(s) listed by {raw.provenance} are absent on disk: {shown}{more}."
        )


def _is_decodable(path: str) -> bool:
    """True if PIL can decode the whole image (JPEGs are decoded at reduced scale, which still reads all data)."""
    from PIL import Image as PILImage

    try:
        with PILImage.open(path) as image:
            image.draft("RGB", (64, 64))
            image.load()
        return True
    except Exception:  # noqa: BLE001 - any failure to decode means the file is unusable
        return False


def _find_corrupt_images(info: DatasetInfo, paths: list[str]) -> set[str]:
    """The paths that PIL cannot decode, checked in a thread pool (with a progress bar for large datasets)."""
    from tqdm.auto import tqdm

    unique_paths = sorted(set(paths))
    workers = min(32, 2 * (os.cpu_count() or 1))
    with ThreadPoolExecutor(max_workers=workers) as pool:
        results = list(
            tqdm(
                pool.map(_is_decodable, unique_paths),
                total=len(unique_paths),
                desc=f"Verifying {info.name} images",
                unit="img",
                disable=len(unique_paths) < _PROGRESS_BAR_MIN_IMAGES,
            )
        )
    return {path for path, ok in zip(unique_paths, results) if not ok}


def _check_unique_classnames(info: DatasetInfo, raw: _RawSplits) -> None:
    """Two labels with one class name cannot be told apart in prompts (and ClassLabel refuses them)."""
    labels_of: dict[str, list[int]] = defaultdict(list)
    for label, name in enumerate(raw.classnames):
        labels_of[name].append(label)
    duplicated = {name: labels for name, labels in labels_of.items() if len(labels) > 1}
    if duplicated:
        listed = "; ".join(f"{name!r} for labels {labels}" for name, labels in list(duplicated.items())[:5])
        raise SplitFileError(f"{_where(info)}: {raw.provenance} gives one class name to several labels: {listed}.")


def _check_no_empty_class(
    info: DatasetInfo, classnames: list[str], splits: dict[str, list[tuple[str, int]]], note: str
) -> None:
    for split, records in splits.items():
        counts = Counter(label for _, label in records)
        empty = [label for label in range(len(classnames)) if counts[label] == 0]
        if empty:
            listed = ", ".join(f"{label} '{classnames[label]}'" for label in empty[:5])
            raise EmptyClassError(f"{_where(info)}: class(es) {listed} have no images in split '{split}'{note}.")


# --------------------------------------------------------------------------------------------
# Public loaders
# --------------------------------------------------------------------------------------------


def read_coop_dataset(
    name: str, data_dir: str | os.PathLike, *, verify_images: bool = True
) -> tuple[DatasetDict, ReadReport]:
    """Read a benchmark from CoOp's layout under ``data_dir`` and say what was done.

    Args:
        name: registry key (see :func:`list_datasets`).
        data_dir: the ``$DATA`` root holding every dataset's folder.
        verify_images: decode every image with PIL (in a thread pool; JPEGs at reduced scale) and skip, with a
            warning and a count, those that fail. On ImageNet's 1.3M images this takes a while; pass False to
            skip it. Listed images that are absent on disk are an error either way.

    Returns:
        The :class:`~datasets.DatasetDict` and the :class:`ReadReport` (also written to every split's
        ``info.description``).
    """
    info = get_dataset_info(name)
    dataset_dir = _require_dir(info, info.dataset_dir(data_dir), "dataset folder")
    raw = _READERS[info.layout](info, dataset_dir)
    _check_inside_dataset(info, dataset_dir, raw)  # before any listed file is opened
    _check_unique_classnames(info, raw)
    if raw.listed:
        _check_listed_images_exist(info, raw)
    _check_no_empty_class(info, raw.classnames, raw.splits, "")

    report = ReadReport(dataset=info.name, provenance=raw.provenance, images_verified=verify_images)
    splits = raw.splits
    if verify_images:
        corrupt = _find_corrupt_images(info, [path for records in splits.values() for path, _ in records])
        if corrupt:
            report.corrupt_images = sorted(corrupt)
            logger.warning(
                "%s: skipped %d image(s) that PIL cannot decode (the split is otherwise unchanged): %s",
                _where(info),
                len(corrupt),
                ", ".join(report.corrupt_images[:5]),
            )
            splits = {split: [(p, y) for p, y in records if p not in corrupt] for split, records in splits.items()}
            _check_no_empty_class(info, raw.classnames, splits, " after skipping corrupt images")

    features = Features({"image": ImageFeature(), "label": ClassLabel(names=raw.classnames)})
    report.num_examples = {split: len(records) for split, records in splits.items()}
    description = report.describe()
    dataset_dict = DatasetDict()
    for split in info.splits:
        records = splits[split]
        dataset_dict[split] = datasets.Dataset.from_dict(
            {"image": [path for path, _ in records], "label": [label for _, label in records]},
            features=features,
            info=datasets.DatasetInfo(description=description, features=features, homepage=info.homepage),
            split=datasets.NamedSplit(split),
        )
    logger.info("%s", description)
    return dataset_dict, report


def load_coop_dataset(name: str, data_dir: str | os.PathLike, *, verify_images: bool = True) -> DatasetDict:
    """Read a benchmark from CoOp's layout under ``data_dir`` (see :func:`read_coop_dataset`)."""
    dataset_dict, _ = read_coop_dataset(name, data_dir, verify_images=verify_images)
    return dataset_dict


def load_benchmark(
    name_or_path: str | os.PathLike,
    config_name: str | None = None,
    *,
    data_dir: str | os.PathLike | None = None,
    verify_images: bool = True,
    cache_dir: str | None = None,
    revision: str | None = None,
) -> DatasetDict:
    """Load a benchmark as a :class:`~datasets.DatasetDict`, whatever its source.

    * ``name_or_path`` a registry key and ``data_dir`` given: read CoOp's layout (:func:`load_coop_dataset`);
    * ``name_or_path`` a local folder written by ``build_benchmark.py``: load its Parquet config;
    * otherwise a Hub dataset id built by ``build_benchmark.py --push_to_hub``.

    ``config_name`` selects the dataset inside a multi-config folder / Hub repo; it may be omitted when the
    folder holds one config only, or when ``name_or_path`` is the registry key.
    """
    source = os.fspath(name_or_path)
    if data_dir is not None:
        return load_coop_dataset(config_name or source, data_dir, verify_images=verify_images)
    if os.path.isdir(source):
        config_name = config_name or _single_local_config(source)
        loaded = datasets.load_dataset(source, config_name, cache_dir=cache_dir)
    else:
        loaded = datasets.load_dataset(source, config_name, cache_dir=cache_dir, revision=revision)
    _check_benchmark_columns(loaded, source, config_name)
    return loaded


def _single_local_config(folder: str) -> str | None:
    """The only config of a folder written by ``build_benchmark.py`` (None lets ``datasets`` decide)."""
    configs = [
        entry
        for entry in sorted(os.listdir(folder))
        if os.path.isdir(os.path.join(folder, entry))
        and any(f.endswith(".parquet") for f in os.listdir(os.path.join(folder, entry)))
    ]
    if len(configs) > 1:
        raise ValueError(f"{folder} holds several benchmark configs ({', '.join(configs)}); pass config_name.")
    return configs[0] if configs else None


def _check_benchmark_columns(loaded: DatasetDict, source: str, config_name: str | None) -> None:
    for split, dataset in loaded.items():
        features = dataset.features
        if not isinstance(features.get("image"), ImageFeature) or not isinstance(features.get("label"), ClassLabel):
            raise ValueError(
                f"{source} (config {config_name}) split '{split}' should have an Image 'image' column and a "
                f"ClassLabel 'label' column, got {features}."
            )
