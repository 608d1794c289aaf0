"""Tiny fixture trees in the on-disk layouts of the 15 CoOp benchmarks (plain functions, no pytest).

Every ``make_<dataset>(data_dir, ...)`` builds ``data_dir/<dataset folder>`` with a few 8x8 images per
class and the annotation / split files in their real formats, and returns an :class:`ExpectedDataset`
(class names in label order and the number of rows per split) for the reader to be checked against.
``make_all_datasets(data_dir)`` builds all 15 (split-file variants where CoOp ships a split file).

Reuse from other tests::

    from fixtures_coop import make_all_datasets, make_oxford_pets
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass

import numpy as np
from PIL import Image

#: Images per class per split in the split_zhou fixtures.
SPLIT_ZHOU_COUNTS = {"train": 3, "val": 2, "test": 2}
#: Images per class for fixtures whose split is generated (50/20/30 of 5 = 2/1/2; 20 % val of 5 = 1).
GENERATED_IMAGES_PER_CLASS = 5
#: Images per class in the official test lists of the generated-split fixtures (pets, cars).
GENERATED_TEST_IMAGES_PER_CLASS = 2

IMAGENET_CLASSES = [
    ("n01440764", "tench"),
    ("n01443537", "goldfish"),
    ("n01484850", "great white shark"),
    ("n01491361", "tiger shark"),
]


@dataclass
class ExpectedDataset:
    """What a reader should return for a fixture."""

    name: str
    classnames: list[str]
    num_examples: dict[str, int]
    dataset_dir: str


def write_image(path: str, index: int = 0, size: tuple[int, int] = (8, 8)) -> str:
    """A tiny RGB image (format from the extension), coloured by ``index``."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    colour = ((37 * index) % 256, (91 * index + 50) % 256, (53 * index + 120) % 256)
    image = Image.new("RGB", size, colour)
    image.putpixel((0, 0), (255 - colour[0], 0, 0))
    image.save(path, format="PNG" if path.lower().endswith(".png") else "JPEG")
    return path


def write_corrupt_image(path: str) -> str:
    """A file with an image extension that PIL cannot decode (a JPEG cut short after its header)."""
    write_image(path, index=7, size=(32, 32))
    with open(path, "rb") as handle:
        head = handle.read(40)
    with open(path, "wb") as handle:
        handle.write(head)
    return path


def write_split_zhou(
    dataset_dir: str, image_dir: str, split_file: str, entries: dict[str, list[tuple[str, int, str]]]
) -> None:
    """Write CoOp's ``split_zhou`` JSON and create every image it lists (paths relative to ``image_dir``)."""
    counter = 0
    for records in entries.values():
        for rel_path, _, _ in records:
            write_image(os.path.join(dataset_dir, image_dir, rel_path), counter)
            counter += 1
    with open(os.path.join(dataset_dir, split_file), "w", encoding="utf-8") as handle:
        json.dump({split: [list(record) for record in records] for split, records in entries.items()}, handle)


def _split_zhou_dataset(
    data_dir: str, name: str, folder: str, image_dir: str, split_file: str, classnames: list[str], path_of
) -> ExpectedDataset:
    """A split_zhou fixture: ``path_of(class_index, split, image_index)`` gives each relative image path.

    Entries are written in reverse label order so that label order cannot be confused with file order.
    """
    dataset_dir = os.path.join(data_dir, folder)
    entries = {}
    for split, per_class in SPLIT_ZHOU_COUNTS.items():
        entries[split] = [
            (path_of(label, split, index), label, classnames[label])
            for label in reversed(range(len(classnames)))
            for index in range(per_class)
        ]
    write_split_zhou(dataset_dir, image_dir, split_file, entries)
    counts = {split: per_class * len(classnames) for split, per_class in SPLIT_ZHOU_COUNTS.items()}
    return ExpectedDataset(name, classnames, counts, dataset_dir)


def _write_class_folders(root: str, folders: list[str], per_class: int, extension: str = ".jpg") -> None:
    counter = 0
    for folder in folders:
        for index in range(per_class):
            write_image(os.path.join(root, folder, f"{folder}_{index:04d}{extension}"), counter)
            counter += 1


def _generated_counts(num_classes: int) -> dict[str, int]:
    """Rows per split of CoOp's 50/20/30 rule with ``GENERATED_IMAGES_PER_CLASS`` images per class."""
    n = GENERATED_IMAGES_PER_CLASS
    n_train, n_val = round(n * 0.5), round(n * 0.2)
    return {"train": n_train * num_classes, "val": n_val * num_classes, "test": (n - n_train - n_val) * num_classes}


def _trainval_counts(num_classes: int) -> dict[str, int]:
    """Rows per split of CoOp's 20 % validation rule on ``GENERATED_IMAGES_PER_CLASS`` train images per class."""
    n_val = round(GENERATED_IMAGES_PER_CLASS * 0.2)
    return {
        "train": (GENERATED_IMAGES_PER_CLASS - n_val) * num_classes,
        "val": n_val * num_classes,
        "test": GENERATED_TEST_IMAGES_PER_CLASS * num_classes,
    }


# --------------------------------------------------------------------------------------------
# The 15 layouts
# --------------------------------------------------------------------------------------------


def make_imagenet(data_dir: str, *, train_per_class: int = 5, val_per_class: int = 2) -> ExpectedDataset:
    """``imagenet/classnames.txt`` + ``imagenet/images/{train,val}/<wnid>/*.JPEG``."""
    dataset_dir = os.path.join(data_dir, "imagenet")
    os.makedirs(dataset_dir, exist_ok=True)
    with open(os.path.join(dataset_dir, "classnames.txt"), "w", encoding="utf-8") as handle:
        handle.writelines(f"{wnid} {name}\n" for wnid, name in IMAGENET_CLASSES)
    wnids = [wnid for wnid, _ in IMAGENET_CLASSES]
    _write_class_folders(os.path.join(dataset_dir, "images", "train"), wnids, train_per_class, ".JPEG")
    _write_class_folders(os.path.join(dataset_dir, "images", "val"), wnids, val_per_class, ".JPEG")
    num_classes = len(IMAGENET_CLASSES)
    # as CoOp: all of images/train is train; the official val set is both val and test
    counts = {"train": train_per_class * num_classes, "val": val_per_class * num_classes,
              "test": val_per_class * num_classes}
    return ExpectedDataset("imagenet", [name for _, name in IMAGENET_CLASSES], counts, dataset_dir)


def make_caltech101(data_dir: str, *, with_split_file: bool = True) -> ExpectedDataset:
    """``caltech-101/101_ObjectCategories/<class>/image_XXXX.jpg`` (+ ``split_zhou_Caltech101.json``)."""
    if with_split_file:
        classnames = ["accordion", "airplane", "face"]
        folders = ["accordion", "airplanes", "Faces"]
        return _split_zhou_dataset(
            data_dir,
            "caltech101",
            "caltech-101",
            "101_ObjectCategories",
            "split_zhou_Caltech101.json",
            classnames,
            lambda label, split, index: f"{folders[label]}/image_{split}_{index:04d}.jpg",
        )
    dataset_dir = os.path.join(data_dir, "caltech-101")
    folders = ["accordion", "airplanes", "Faces", "BACKGROUND_Google", "Faces_easy"]
    _write_class_folders(os.path.join(dataset_dir, "101_ObjectCategories"), folders, GENERATED_IMAGES_PER_CLASS)
    # sorted folders without the ignored two: Faces, accordion, airplanes (CoOp renames two of them)
    return ExpectedDataset("caltech101", ["face", "accordion", "airplane"], _generated_counts(3), dataset_dir)


def make_oxford_pets(data_dir: str, *, with_split_file: bool = True) -> ExpectedDataset:
    """``oxford_pets/images/<Breed>_<n>.jpg`` + ``annotations/{trainval,test}.txt`` or the split file."""
    breeds = ["Abyssinian", "american_bulldog", "yorkshire_terrier"]
    if with_split_file:
        return _split_zhou_dataset(
            data_dir,
            "oxford_pets",
            "oxford_pets",
            "images",
            "split_zhou_OxfordPets.json",
            [b.lower() for b in breeds],
            lambda label, split, index: (
                f"{breeds[label]}_{ {'train': 100, 'val': 200, 'test': 300}[split] + index }.jpg"
            ),
        )
    dataset_dir = os.path.join(data_dir, "oxford_pets")
    annotations = os.path.join(dataset_dir, "annotations")
    os.makedirs(annotations, exist_ok=True)
    lists = {"trainval.txt": (1, GENERATED_IMAGES_PER_CLASS), "test.txt": (101, GENERATED_TEST_IMAGES_PER_CLASS)}
    counter = 0
    for list_name, (first_number, per_class) in lists.items():
        with open(os.path.join(annotations, list_name), "w", encoding="utf-8") as handle:
            for class_id, breed in enumerate(breeds, start=1):
                species = 1 if breed[0].isupper() else 2
                for number in range(first_number, first_number + per_class):
                    handle.write(f"{breed}_{number} {class_id} {species} {class_id}\n")
                    write_image(os.path.join(dataset_dir, "images", f"{breed}_{number}.jpg"), counter)
                    counter += 1
    return ExpectedDataset("oxford_pets", [b.lower() for b in breeds], _trainval_counts(3), dataset_dir)


def _save_cars_annotations(path: str, fnames: list[str], class_ids: list[int]) -> None:
    from scipy.io import savemat

    annotations = np.zeros((1, len(fnames)), dtype=[("bbox_x1", "O"), ("bbox_y1", "O"), ("class", "O"), ("fname", "O")])
    for index, (fname, class_id) in enumerate(zip(fnames, class_ids)):
        annotations[0, index] = (
            np.array([[1]], np.uint8),
            np.array([[1]], np.uint8),
            np.array([[class_id]], np.uint8),
            fname,
        )
    os.makedirs(os.path.dirname(path), exist_ok=True)
    savemat(path, {"annotations": annotations})


def make_stanford_cars(data_dir: str, *, with_split_file: bool = True) -> ExpectedDataset:
    """``stanford_cars/{cars_train,cars_test,devkit,cars_test_annos_withlabels.mat}`` or the split file."""
    raw_names = ["AM General Hummer SUV 2000", "Acura RL Sedan 2012", "Audi R8 Coupe 2012"]
    classnames = ["2000 AM General Hummer SUV", "2012 Acura RL Sedan", "2012 Audi R8 Coupe"]
    if with_split_file:
        return _split_zhou_dataset(
            data_dir,
            "stanford_cars",
            "stanford_cars",
            "",
            "split_zhou_StanfordCars.json",
            classnames,
            lambda label, split, index: (
                f"{'cars_test' if split == 'test' else 'cars_train'}/{split}{label}{index:03d}.jpg"
            ),
        )
    from scipy.io import savemat

    dataset_dir = os.path.join(data_dir, "stanford_cars")
    os.makedirs(os.path.join(dataset_dir, "devkit"), exist_ok=True)
    savemat(os.path.join(dataset_dir, "devkit", "cars_meta.mat"), {"class_names": np.array([raw_names], dtype=object)})
    counter = 0
    for folder, mat_path, per_class in [
        ("cars_train", os.path.join(dataset_dir, "devkit", "cars_train_annos.mat"), GENERATED_IMAGES_PER_CLASS),
        ("cars_test", os.path.join(dataset_dir, "cars_test_annos_withlabels.mat"), GENERATED_TEST_IMAGES_PER_CLASS),
    ]:
        fnames, class_ids = [], []
        for index in range(per_class * len(raw_names)):
            fnames.append(f"{index + 1:05d}.jpg")
            class_ids.append(index % len(raw_names) + 1)  # classes interleaved, as in the real files
            write_image(os.path.join(dataset_dir, folder, fnames[-1]), counter)
            counter += 1
        _save_cars_annotations(mat_path, fnames, class_ids)
    return ExpectedDataset("stanford_cars", classnames, _trainval_counts(3), dataset_dir)


def make_oxford_flowers(data_dir: str, *, with_split_file: bool = True) -> ExpectedDataset:
    """``oxford_flowers/{jpg/image_XXXXX.jpg, imagelabels.mat, cat_to_name.json}`` (+ the split file)."""
    classnames = ["pink primrose", "hard-leaved pocket orchid", "canterbury bells"]
    if with_split_file:
        return _split_zhou_dataset(
            data_dir,
            "oxford_flowers",
            "oxford_flowers",
            "jpg",
            "split_zhou_OxfordFlowers.json",
            classnames,
            lambda label, split, index: (
                f"image_{ {'train': 1, 'val': 3, 'test': 5}[split] * 1000 + label * 10 + index:05d}.jpg"
            ),
        )
    from scipy.io import savemat

    dataset_dir = os.path.join(data_dir, "oxford_flowers")
    total = GENERATED_IMAGES_PER_CLASS * len(classnames)
    labels = [index % len(classnames) + 1 for index in range(total)]
    for index in range(total):
        write_image(os.path.join(dataset_dir, "jpg", f"image_{index + 1:05d}.jpg"), index)
    savemat(os.path.join(dataset_dir, "imagelabels.mat"), {"labels": np.array([labels], dtype=np.uint8)})
    with open(os.path.join(dataset_dir, "cat_to_name.json"), "w", encoding="utf-8") as handle:
        json.dump({"3": classnames[2], "1": classnames[0], "2": classnames[1]}, handle)  # keys out of order on purpose
    return ExpectedDataset("oxford_flowers", classnames, _generated_counts(3), dataset_dir)


def make_food101(data_dir: str, *, with_split_file: bool = True) -> ExpectedDataset:
    """``food-101/images/<class>/<id>.jpg`` (+ ``split_zhou_Food101.json``)."""
    classnames = ["apple_pie", "baby_back_ribs", "baklava"]
    if with_split_file:
        return _split_zhou_dataset(
            data_dir,
            "food101",
            "food-101",
            "images",
            "split_zhou_Food101.json",
            classnames,
            lambda label, split, index: f"{classnames[label]}/{split}{index:05d}.jpg",
        )
    dataset_dir = os.path.join(data_dir, "food-101")
    _write_class_folders(os.path.join(dataset_dir, "images"), classnames, GENERATED_IMAGES_PER_CLASS)
    return ExpectedDataset("food101", classnames, _generated_counts(3), dataset_dir)


def make_fgvc_aircraft(data_dir: str, *, with_variants_file: bool = True) -> ExpectedDataset:
    """``fgvc_aircraft/{variants.txt, images_variant_{train,val,test}.txt, images/<id>.jpg}``."""
    variants = ["707-320", "Cessna 172", "A300B4"]  # variants.txt order, not sorted
    dataset_dir = os.path.join(data_dir, "fgvc_aircraft")
    os.makedirs(dataset_dir, exist_ok=True)
    if with_variants_file:
        with open(os.path.join(dataset_dir, "variants.txt"), "w", encoding="utf-8") as handle:
            handle.writelines(f"{variant}\n" for variant in variants)
    image_id = 1000000
    for split, per_class in SPLIT_ZHOU_COUNTS.items():
        with open(os.path.join(dataset_dir, f"images_variant_{split}.txt"), "w", encoding="utf-8") as handle:
            for variant in reversed(variants):
                for _ in range(per_class):
                    image_id += 1
                    handle.write(f"{image_id} {variant}\n")
                    write_image(os.path.join(dataset_dir, "images", f"{image_id}.jpg"), image_id)
    classnames = variants if with_variants_file else sorted(variants)
    counts = {split: per_class * len(variants) for split, per_class in SPLIT_ZHOU_COUNTS.items()}
    return ExpectedDataset("fgvc_aircraft", classnames, counts, dataset_dir)


def make_sun397(data_dir: str, *, with_split_file: bool = True) -> ExpectedDataset:
    """``sun397/SUN397/<letter>/<class>/sun_*.jpg`` + ``split_zhou_SUN397.json``, or without it SUN's
    ``ClassName.txt`` and first partition ``Training_01.txt`` / ``Testing_01.txt`` (classes interleaved)."""
    folders = ["a/abbey", "a/airplane_cabin", "a/apartment_building/outdoor"]
    classnames = ["abbey", "airplane cabin", "outdoor apartment building"]
    if not with_split_file:
        dataset_dir = os.path.join(data_dir, "sun397")
        os.makedirs(dataset_dir, exist_ok=True)
        with open(os.path.join(dataset_dir, "ClassName.txt"), "w", encoding="utf-8") as handle:
            handle.writelines(f"/{folder}\n" for folder in folders)
        counter = 0
        for list_name, per_class in (("Training_01.txt", GENERATED_IMAGES_PER_CLASS),
                                     ("Testing_01.txt", GENERATED_TEST_IMAGES_PER_CLASS)):
            lines = []
            for index in range(per_class * len(folders)):
                folder = folders[(index + 1) % len(folders)]  # class 1 listed first
                image = f"{folder}/sun_{list_name[:4].lower()}{index:04d}.jpg"
                write_image(os.path.join(dataset_dir, "SUN397", image), counter)
                counter += 1
                lines.append(f"/{image}\n")
            with open(os.path.join(dataset_dir, list_name), "w", encoding="utf-8") as handle:
                handle.writelines(lines)
        generated = ["abbey", "airplane_cabin", "outdoor apartment_building"]  # CoOp keeps the underscores
        return ExpectedDataset("sun397", generated, _trainval_counts(3), dataset_dir)
    return _split_zhou_dataset(
        data_dir,
        "sun397",
        "sun397",
        "SUN397",
        "split_zhou_SUN397.json",
        classnames,
        lambda label, split, index: f"{folders[label]}/sun_{split}{index:04d}.jpg",
    )


def make_dtd(data_dir: str, *, with_split_file: bool = True) -> ExpectedDataset:
    """``dtd/images/<class>/<class>_XXXX.jpg`` (+ ``split_zhou_DescribableTextures.json``)."""
    classnames = ["banded", "blotchy", "braided"]
    if with_split_file:
        return _split_zhou_dataset(
            data_dir,
            "dtd",
            "dtd",
            "images",
            "split_zhou_DescribableTextures.json",
            classnames,
            lambda label, split, index: f"{classnames[label]}/{classnames[label]}_{split}{index:04d}.jpg",
        )
    dataset_dir = os.path.join(data_dir, "dtd")
    _write_class_folders(os.path.join(dataset_dir, "images"), classnames, GENERATED_IMAGES_PER_CLASS)
    return ExpectedDataset("dtd", classnames, _generated_counts(3), dataset_dir)


def make_eurosat(data_dir: str, *, with_split_file: bool = True) -> ExpectedDataset:
    """``eurosat/2750/<Class>/<Class>_<n>.jpg`` + ``split_zhou_EuroSAT.json`` (CoOp's renamed classes)."""
    folders = ["AnnualCrop", "Forest", "HerbaceousVegetation"]
    classnames = ["Annual Crop Land", "Forest", "Herbaceous Vegetation Land"]
    if not with_split_file:
        dataset_dir = os.path.join(data_dir, "eurosat")
        _write_class_folders(os.path.join(dataset_dir, "2750"), folders, GENERATED_IMAGES_PER_CLASS)
        return ExpectedDataset("eurosat", classnames, _generated_counts(3), dataset_dir)
    return _split_zhou_dataset(
        data_dir,
        "eurosat",
        "eurosat",
        "2750",
        "split_zhou_EuroSAT.json",
        classnames,
        lambda label, split, index: f"{folders[label]}/{folders[label]}_{split}{index}.jpg",
    )


def make_ucf101(data_dir: str, *, with_split_file: bool = True) -> ExpectedDataset:
    """``ucf101/UCF-101-midframes/<Class>/v_*.jpg`` + ``split_zhou_UCF101.json``, or without it
    ``ucfTrainTestlist/{classInd,trainlist01,testlist01}.txt`` (videos ``.avi``, classes interleaved)."""
    classnames = ["Apply_Eye_Makeup", "Archery", "Baby_Crawling"]
    if not with_split_file:
        actions = [name.replace("_", "") for name in classnames]
        dataset_dir = os.path.join(data_dir, "ucf101")
        os.makedirs(os.path.join(dataset_dir, "ucfTrainTestlist"), exist_ok=True)
        with open(os.path.join(dataset_dir, "ucfTrainTestlist", "classInd.txt"), "w", encoding="utf-8") as handle:
            handle.writelines(f"{label + 1} {action}\n" for label, action in enumerate(actions))
        counter = 0
        for list_name, per_class in (("trainlist01.txt", GENERATED_IMAGES_PER_CLASS),
                                     ("testlist01.txt", GENERATED_TEST_IMAGES_PER_CLASS)):
            lines = []
            for index in range(per_class * len(actions)):
                label = (index + 2) % len(actions)  # class 2 listed first
                group = index if list_name.startswith("train") else 50 + index
                video = f"v_{actions[label]}_g{group:02d}_c01"
                write_image(os.path.join(dataset_dir, "UCF-101-midframes", classnames[label], video + ".jpg"), counter)
                counter += 1
                lines.append(f"{actions[label]}/{video}.avi" + (f" {label + 1}" if list_name.startswith("train") else "")
                             + "\n")
            with open(os.path.join(dataset_dir, "ucfTrainTestlist", list_name), "w", encoding="utf-8") as handle:
                handle.writelines(lines)
        return ExpectedDataset("ucf101", classnames, _trainval_counts(3), dataset_dir)
    return _split_zhou_dataset(
        data_dir,
        "ucf101",
        "ucf101",
        "UCF-101-midframes",
        "split_zhou_UCF101.json",
        classnames,
        lambda label, split, index: (
            f"{classnames[label]}/v_{classnames[label].replace('_', '')}_{split}_c{index:02d}.jpg"
        ),
    )


def _write_variant_classnames(dataset_dir: str, copy_classnames: bool) -> None:
    os.makedirs(dataset_dir, exist_ok=True)
    if copy_classnames:  # CoOp's DATASETS.md copies ImageNet's classnames.txt into each variant's folder
        with open(os.path.join(dataset_dir, "classnames.txt"), "w", encoding="utf-8") as handle:
            handle.writelines(f"{wnid} {name}\n" for wnid, name in IMAGENET_CLASSES)


def make_imagenetv2(data_dir: str, *, per_class: int = 2, copy_classnames: bool = True) -> ExpectedDataset:
    """``imagenetv2/imagenetv2-matched-frequency-format-val/<class index>/*.jpeg``."""
    dataset_dir = os.path.join(data_dir, "imagenetv2")
    _write_variant_classnames(dataset_dir, copy_classnames)
    folders = [str(index) for index in range(len(IMAGENET_CLASSES))]
    _write_class_folders(
        os.path.join(dataset_dir, "imagenetv2-matched-frequency-format-val"), folders, per_class, ".jpeg"
    )
    return ExpectedDataset(
        "imagenetv2", [n for _, n in IMAGENET_CLASSES], {"test": per_class * len(folders)}, dataset_dir
    )


def make_imagenet_sketch(data_dir: str, *, per_class: int = 2, copy_classnames: bool = True) -> ExpectedDataset:
    """``imagenet-sketch/images/<wnid>/*.JPEG``."""
    dataset_dir = os.path.join(data_dir, "imagenet-sketch")
    _write_variant_classnames(dataset_dir, copy_classnames)
    wnids = [wnid for wnid, _ in IMAGENET_CLASSES]
    _write_class_folders(os.path.join(dataset_dir, "images"), wnids, per_class, ".JPEG")
    return ExpectedDataset(
        "imagenet_sketch", [n for _, n in IMAGENET_CLASSES], {"test": per_class * len(wnids)}, dataset_dir
    )


#: The ImageNet classes (indices into IMAGENET_CLASSES) of the ImageNet-A and -R fixtures.
IMAGENET_A_CLASS_INDICES = [1, 3]
IMAGENET_R_CLASS_INDICES = [0, 2, 3]


def _make_imagenet_subset(
    data_dir: str, name: str, folder: str, image_dir: str, indices: list[int], per_class: int, copy_classnames: bool
) -> ExpectedDataset:
    dataset_dir = os.path.join(data_dir, folder)
    _write_variant_classnames(dataset_dir, copy_classnames)
    root = os.path.join(dataset_dir, image_dir)
    # Created in reverse order: the label order must follow ImageNet's class order, not creation order.
    _write_class_folders(root, [IMAGENET_CLASSES[i][0] for i in reversed(indices)], per_class)
    with open(os.path.join(root, "README.txt"), "w", encoding="utf-8") as handle:
        handle.write("not a class folder\n")
    return ExpectedDataset(
        name, [IMAGENET_CLASSES[i][1] for i in indices], {"test": per_class * len(indices)}, dataset_dir
    )


def make_imagenet_a(data_dir: str, *, per_class: int = 2, copy_classnames: bool = True) -> ExpectedDataset:
    """``imagenet-adversarial/imagenet-a/<wnid>/*.jpg`` (a subset of ImageNet's wnids) + ``README.txt``."""
    return _make_imagenet_subset(
        data_dir,
        "imagenet_a",
        "imagenet-adversarial",
        "imagenet-a",
        IMAGENET_A_CLASS_INDICES,
        per_class,
        copy_classnames,
    )


def make_imagenet_r(data_dir: str, *, per_class: int = 2, copy_classnames: bool = True) -> ExpectedDataset:
    """``imagenet-rendition/imagenet-r/<wnid>/*.jpg`` (a subset of ImageNet's wnids) + ``README.txt``."""
    return _make_imagenet_subset(
        data_dir, "imagenet_r", "imagenet-rendition", "imagenet-r", IMAGENET_R_CLASS_INDICES, per_class, copy_classnames
    )


FIXTURE_BUILDERS = {
    "imagenet": make_imagenet,
    "caltech101": make_caltech101,
    "oxford_pets": make_oxford_pets,
    "stanford_cars": make_stanford_cars,
    "oxford_flowers": make_oxford_flowers,
    "food101": make_food101,
    "fgvc_aircraft": make_fgvc_aircraft,
    "sun397": make_sun397,
    "dtd": make_dtd,
    "eurosat": make_eurosat,
    "ucf101": make_ucf101,
    "imagenetv2": make_imagenetv2,
    "imagenet_sketch": make_imagenet_sketch,
    "imagenet_a": make_imagenet_a,
    "imagenet_r": make_imagenet_r,
}

#: Datasets whose split is generated by the reader when CoOp's split file is absent.
GENERATED_SPLIT_DATASETS = (
    "caltech101", "oxford_pets", "stanford_cars", "oxford_flowers", "food101", "dtd", "eurosat", "sun397", "ucf101"
)


def make_all_datasets(data_dir: str) -> dict[str, ExpectedDataset]:
    """Build all 15 fixtures under ``data_dir`` (the ``$DATA`` root); returns what each reader should give."""
    return {name: builder(data_dir) for name, builder in FIXTURE_BUILDERS.items()}
