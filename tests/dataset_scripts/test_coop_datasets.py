"""Readers of the 15 CoOp benchmarks on fixture trees in each layout (see fixtures_coop.py)."""

from __future__ import annotations

import json
import logging
import os
import shutil

import pytest
from datasets import ClassLabel, DatasetDict
from datasets import Image as ImageFeature
from fixtures_coop import (
    FIXTURE_BUILDERS,
    GENERATED_SPLIT_DATASETS,
    IMAGENET_A_CLASS_INDICES,
    IMAGENET_CLASSES,
    IMAGENET_R_CLASS_INDICES,
    make_all_datasets,
    make_dtd,
    make_fgvc_aircraft,
    make_imagenet,
    make_imagenet_a,
    make_imagenet_sketch,
    make_imagenetv2,
    make_oxford_flowers,
    make_oxford_pets,
    make_sun397,
    write_corrupt_image,
    write_image,
)

from dataset_scripts import coop_datasets
from dataset_scripts.coop_datasets import (
    EmptyClassError,
    MissingDataError,
    MissingImageError,
    SplitFileError,
    get_dataset_info,
    imagenet_subset_indices,
    list_datasets,
    load_benchmark,
    load_coop_dataset,
    read_coop_dataset,
)

#: PROTOCOL.md's table: name -> (folder, number of classes, template, test only).
PROTOCOL_TABLE = {
    "imagenet": ("imagenet", 1000, "a photo of a {}.", False),
    "caltech101": ("caltech-101", 100, "a photo of a {}.", False),
    "oxford_pets": ("oxford_pets", 37, "a photo of a {}, a type of pet.", False),
    "stanford_cars": ("stanford_cars", 196, "a photo of a {}.", False),
    "oxford_flowers": ("oxford_flowers", 102, "a photo of a {}, a type of flower.", False),
    "food101": ("food-101", 101, "a photo of {}, a type of food.", False),
    "fgvc_aircraft": ("fgvc_aircraft", 100, "a photo of a {}, a type of aircraft.", False),
    "sun397": ("sun397", 397, "a photo of a {}.", False),
    "dtd": ("dtd", 47, "{} texture.", False),
    "eurosat": ("eurosat", 10, "a centered satellite photo of {}.", False),
    "ucf101": ("ucf101", 101, "a photo of a person doing {}.", False),
    "imagenetv2": ("imagenetv2", 1000, "a photo of a {}.", True),
    "imagenet_sketch": ("imagenet-sketch", 1000, "a photo of a {}.", True),
    "imagenet_a": ("imagenet-adversarial", 200, "a photo of a {}.", True),
    "imagenet_r": ("imagenet-rendition", 200, "a photo of a {}.", True),
}


@pytest.fixture(scope="module")
def all_fixtures(tmp_path_factory):
    data_dir = str(tmp_path_factory.mktemp("coop_data"))
    return data_dir, make_all_datasets(data_dir)


def _class_names(dataset_dict: DatasetDict) -> list[str]:
    return next(iter(dataset_dict.values())).features["label"].names


def _paths(dataset) -> list[str]:
    return [row["path"] for row in dataset.cast_column("image", ImageFeature(decode=False))["image"]]


# ------------------------------------------------------------------------------------------
# Registry
# ------------------------------------------------------------------------------------------


def test_registry_matches_the_protocol_table():
    assert list_datasets() == list(PROTOCOL_TABLE)
    for name, (folder, num_classes, template, test_only) in PROTOCOL_TABLE.items():
        info = get_dataset_info(name)
        assert (info.folder, info.num_classes, info.template, info.test_only) == (
            folder,
            num_classes,
            template,
            test_only,
        )
        assert info.homepage.startswith("https://")
    assert get_dataset_info("OxfordPets").name == "oxford_pets"
    assert get_dataset_info("DescribableTextures").name == "dtd"
    with pytest.raises(KeyError, match="known: imagenet"):
        get_dataset_info("mnist")


def test_format_prompt_replaces_underscores():
    assert (
        get_dataset_info("oxford_pets").format_prompt("american_bulldog")
        == "a photo of a american bulldog, a type of pet."
    )
    assert get_dataset_info("dtd").format_prompt("banded") == "banded texture."


# ------------------------------------------------------------------------------------------
# Every layout
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(PROTOCOL_TABLE))
def test_reader_counts_classnames_and_features(all_fixtures, name):
    data_dir, expected = all_fixtures
    dataset_dict = load_coop_dataset(name, data_dir)
    assert isinstance(dataset_dict, DatasetDict)
    assert {split: len(ds) for split, ds in dataset_dict.items()} == expected[name].num_examples
    assert _class_names(dataset_dict) == expected[name].classnames
    for split, dataset in dataset_dict.items():
        assert isinstance(dataset.features["image"], ImageFeature)
        assert isinstance(dataset.features["label"], ClassLabel)
        assert set(dataset["label"]) == set(range(len(expected[name].classnames))), split
        # the image column stores the path, not the bytes, and decodes lazily
        stored = dataset.data.column("image")[0].as_py()
        assert stored["bytes"] is None and os.path.isfile(stored["path"])
    first = dataset_dict["test"][0]
    assert first["image"].size == (8, 8)
    assert "corrupt images skipped: 0" in dataset_dict["test"].info.description


def test_split_zhou_labels_follow_the_split_file(all_fixtures):
    data_dir, _ = all_fixtures
    dataset_dict = load_coop_dataset("caltech101", data_dir)
    names = _class_names(dataset_dict)
    split_file = os.path.join(data_dir, "caltech-101", "split_zhou_Caltech101.json")
    with open(split_file, encoding="utf-8") as handle:
        listed = json.load(handle)["train"]
    train = dataset_dict["train"]
    # same rows, same order as the split file, labels and names as its second and third fields
    assert [
        os.path.relpath(p, os.path.join(data_dir, "caltech-101", "101_ObjectCategories")) for p in _paths(train)
    ] == [entry[0] for entry in listed]
    assert train["label"] == [entry[1] for entry in listed]
    assert [names[label] for label in train["label"]] == [entry[2] for entry in listed]


def test_folder_readers_label_by_class_folder(all_fixtures):
    data_dir, _ = all_fixtures
    dataset_dict = load_coop_dataset("imagenet", data_dir)
    wnids = [line.split()[0] for line in open(os.path.join(data_dir, "imagenet", "classnames.txt"), encoding="utf-8")]
    for split in ("train", "val", "test"):
        dataset = dataset_dict[split]
        for path, label in zip(_paths(dataset), dataset["label"]):
            assert os.path.basename(os.path.dirname(path)) == wnids[label]
    # as CoOp: train is all of images/train; the official val set is both val and test (no hold-out from train)
    assert all("/images/train/" in p for p in _paths(dataset_dict["train"]))
    assert len(dataset_dict["train"]) == len(IMAGENET_CLASSES) * 5
    assert _paths(dataset_dict["val"]) == _paths(dataset_dict["test"])
    assert all("/images/val/" in p for p in _paths(dataset_dict["test"]))
    assert get_dataset_info("imagenet").few_shot_val is False and get_dataset_info("dtd").few_shot_val


@pytest.mark.parametrize("name", GENERATED_SPLIT_DATASETS)
def test_generated_splits_are_deterministic_and_disjoint(tmp_path, name, monkeypatch):
    expected = FIXTURE_BUILDERS[name](str(tmp_path), with_split_file=False)
    first = load_coop_dataset(name, tmp_path)
    second = load_coop_dataset(name, tmp_path)
    assert {split: len(ds) for split, ds in first.items()} == expected.num_examples
    assert _class_names(first) == expected.classnames
    split_paths = {split: _paths(first[split]) for split in first}
    assert split_paths == {split: _paths(second[split]) for split in second}
    assert {split: first[split]["label"] for split in first} == {split: second[split]["label"] for split in second}
    all_paths = [p for paths in split_paths.values() for p in paths]
    assert len(all_paths) == len(set(all_paths))
    assert "generated by capt" in first["train"].info.description

    monkeypatch.setattr(coop_datasets, "SPLIT_SEED", 12345)
    reseeded = load_coop_dataset(name, tmp_path)
    assert {split: _paths(reseeded[split]) for split in reseeded} != split_paths


def test_fgvc_without_variants_file_uses_sorted_names(tmp_path, caplog):
    expected = make_fgvc_aircraft(str(tmp_path), with_variants_file=False)
    with caplog.at_level(logging.WARNING):
        dataset_dict = load_coop_dataset("fgvc_aircraft", tmp_path)
    assert _class_names(dataset_dict) == expected.classnames == sorted(expected.classnames)
    assert "variants.txt" in caplog.text


def test_imagenet_variants_fall_back_to_imagenet_classnames(tmp_path):
    make_imagenet(str(tmp_path))
    expected = make_imagenetv2(str(tmp_path), copy_classnames=False)
    dataset_dict = load_coop_dataset("imagenetv2", tmp_path)
    assert _class_names(dataset_dict) == expected.classnames
    assert list(dataset_dict) == ["test"]


def test_imagenet_subset_indices(all_fixtures):
    data_dir, _ = all_fixtures
    assert imagenet_subset_indices("imagenet_a", data_dir) == IMAGENET_A_CLASS_INDICES
    assert imagenet_subset_indices("imagenet_r", data_dir) == IMAGENET_R_CLASS_INDICES
    assert imagenet_subset_indices("imagenet_sketch", data_dir) == [0, 1, 2, 3]


def test_load_benchmark_reads_the_coop_layout(all_fixtures):
    data_dir, expected = all_fixtures
    dataset_dict = load_benchmark("dtd", data_dir=data_dir)
    assert {split: len(ds) for split, ds in dataset_dict.items()} == expected["dtd"].num_examples


# ------------------------------------------------------------------------------------------
# Bad input
# ------------------------------------------------------------------------------------------


def test_missing_dataset_folder_names_dataset_and_path(tmp_path):
    with pytest.raises(MissingDataError, match=r"EuroSAT.*eurosat") as error:
        load_coop_dataset("eurosat", tmp_path)
    assert str(tmp_path / "eurosat") in str(error.value)


def test_missing_split_file_names_it(tmp_path):
    make_sun397(str(tmp_path))
    os.remove(tmp_path / "sun397" / "split_zhou_SUN397.json")
    with pytest.raises(MissingDataError, match="SUN397.*split_zhou_SUN397.json"):
        load_coop_dataset("sun397", tmp_path)


def test_missing_annotation_file_names_it(tmp_path):
    FIXTURE_BUILDERS["oxford_pets"](str(tmp_path), with_split_file=False)
    os.remove(tmp_path / "oxford_pets" / "annotations" / "test.txt")
    with pytest.raises(MissingDataError, match=r"OxfordPets.*annotations/test.txt"):
        load_coop_dataset("oxford_pets", tmp_path)


@pytest.mark.parametrize("verify_images", [True, False])
def test_missing_listed_image_is_an_error(tmp_path, verify_images):
    make_dtd(str(tmp_path))
    missing = tmp_path / "dtd" / "images" / "blotchy" / "blotchy_val0001.jpg"
    os.remove(missing)
    with pytest.raises(MissingImageError, match="DescribableTextures") as error:
        load_coop_dataset("dtd", tmp_path, verify_images=verify_images)
    assert str(missing) in str(error.value)


def test_corrupt_image_is_skipped_counted_and_reported(tmp_path, caplog):
    expected = make_dtd(str(tmp_path))
    corrupt = write_corrupt_image(str(tmp_path / "dtd" / "images" / "banded" / "banded_train0000.jpg"))
    with caplog.at_level(logging.WARNING):
        dataset_dict, report = read_coop_dataset("dtd", tmp_path)
    assert report.num_corrupt_images == 1 and report.corrupt_images == [corrupt]
    assert len(dataset_dict["train"]) == expected.num_examples["train"] - 1
    assert len(dataset_dict["test"]) == expected.num_examples["test"]
    assert corrupt not in _paths(dataset_dict["train"])
    for dataset in dataset_dict.values():
        assert "corrupt images skipped: 1" in dataset.info.description
    assert "skipped 1 image" in caplog.text and corrupt in caplog.text

    unverified = load_coop_dataset("dtd", tmp_path, verify_images=False)
    assert len(unverified["train"]) == expected.num_examples["train"]
    assert "not verified" in unverified["train"].info.description


def test_class_left_empty_by_corrupt_images_is_an_error(tmp_path):
    make_dtd(str(tmp_path))
    for index in range(3):
        write_corrupt_image(str(tmp_path / "dtd" / "images" / "braided" / f"braided_train{index:04d}.jpg"))
    with pytest.raises(EmptyClassError, match="braided.*'train' after skipping corrupt"):
        load_coop_dataset("dtd", tmp_path)


def test_empty_class_folder_is_an_error(tmp_path):
    make_dtd(str(tmp_path), with_split_file=False)
    shutil.rmtree(tmp_path / "dtd" / "images" / "blotchy")
    os.makedirs(tmp_path / "dtd" / "images" / "blotchy")
    with pytest.raises(EmptyClassError, match="blotchy has no images"):
        load_coop_dataset("dtd", tmp_path)


def test_missing_wnid_folder_is_an_error(tmp_path):
    make_imagenet_sketch(str(tmp_path))
    shutil.rmtree(tmp_path / "imagenet-sketch" / "images" / "n01443537")
    with pytest.raises(EmptyClassError, match="n01443537"):
        load_coop_dataset("imagenet_sketch", tmp_path)


def test_split_file_with_a_label_gap_is_an_error(tmp_path):
    make_sun397(str(tmp_path))
    split_file = tmp_path / "sun397" / "split_zhou_SUN397.json"
    content = json.loads(split_file.read_text())
    content = {split: [entry for entry in entries if entry[1] != 1] for split, entries in content.items()}
    split_file.write_text(json.dumps(content))
    with pytest.raises(EmptyClassError, match=r"label\(s\) \[1\]"):
        load_coop_dataset("sun397", tmp_path)


@pytest.mark.parametrize("outside", ["../../secret.png", "ABSOLUTE"])
def test_split_file_entry_outside_the_dataset_folder_is_refused(tmp_path, outside):
    """A split file must not make the reader open (and the benchmark builder embed) a file outside the dataset."""
    make_sun397(str(tmp_path / "data"))
    secret = write_image(str(tmp_path / "secret.png"))  # a real image, so only the containment check stops it
    outside = secret if outside == "ABSOLUTE" else os.path.relpath(secret, tmp_path / "data" / "sun397" / "SUN397")
    split_file = tmp_path / "data" / "sun397" / "split_zhou_SUN397.json"
    content = json.loads(split_file.read_text())
    content["train"][2][0] = outside
    split_file.write_text(json.dumps(content))
    with pytest.raises(SplitFileError, match=r"train\[2\].*outside the dataset folder") as error:
        load_coop_dataset("sun397", tmp_path / "data")
    assert repr(outside) in str(error.value)


def test_annotation_list_entry_outside_the_dataset_folder_is_refused(tmp_path):
    make_fgvc_aircraft(str(tmp_path / "data"))
    write_image(str(tmp_path / "data" / "secret.jpg"))
    train_list = tmp_path / "data" / "fgvc_aircraft" / "images_variant_train.txt"
    lines = train_list.read_text().splitlines()
    lines[0] = "../../secret " + " ".join(lines[0].split()[1:])
    train_list.write_text("\n".join(lines) + "\n")
    with pytest.raises(SplitFileError, match="outside the dataset folder") as error:
        load_coop_dataset("fgvc_aircraft", tmp_path / "data")
    assert str(tmp_path / "data" / "secret.jpg") in str(error.value)


def test_class_absent_from_one_split_is_an_error(tmp_path):
    make_sun397(str(tmp_path))
    split_file = tmp_path / "sun397" / "split_zhou_SUN397.json"
    content = json.loads(split_file.read_text())
    content["val"] = [entry for entry in content["val"] if entry[1] != 2]
    split_file.write_text(json.dumps(content))
    with pytest.raises(EmptyClassError, match="outdoor apartment building.*'val'"):
        load_coop_dataset("sun397", tmp_path)


def test_unknown_wnid_in_imagenet_a_is_an_error(tmp_path):
    make_imagenet_a(str(tmp_path))
    os.makedirs(tmp_path / "imagenet-adversarial" / "imagenet-a" / "n99999999")
    with pytest.raises(coop_datasets.SplitFileError, match="n99999999"):
        load_coop_dataset("imagenet_a", tmp_path)


def test_duplicate_class_names_name_the_dataset_and_labels(tmp_path):
    make_sun397(str(tmp_path))
    split_file = tmp_path / "sun397" / "split_zhou_SUN397.json"
    content = json.loads(split_file.read_text())
    name_of_0 = next(c for _, y, c in content["train"] if y == 0)
    content = {split: [[p, y, name_of_0 if y == 1 else c] for p, y, c in entries] for split, entries in content.items()}
    split_file.write_text(json.dumps(content))
    with pytest.raises(coop_datasets.SplitFileError, match=r"SUN397.*one class name to several labels.*\[0, 1\]"):
        load_coop_dataset("sun397", tmp_path, verify_images=False)


def test_duplicate_fgvc_variant_is_reported_as_a_duplicate(tmp_path):
    make_fgvc_aircraft(str(tmp_path))
    variants = tmp_path / "fgvc_aircraft" / "variants.txt"
    names = variants.read_text().splitlines()
    variants.write_text("\n".join(names + [names[0]]) + "\n")
    with pytest.raises(coop_datasets.SplitFileError, match="one class name to several labels"):
        load_coop_dataset("fgvc_aircraft", tmp_path, verify_images=False)


@pytest.mark.parametrize(
    "content",
    [
        {"train": 5, "val": [], "test": []},
        {"train": [[None, 0, "a"]], "val": [], "test": []},
        {"train": [["a.jpg", True, "a"]], "val": [], "test": []},
        [["a.jpg", 0, "a"]],
    ],
)
def test_malformed_split_file_is_a_split_file_error(tmp_path, content):
    make_sun397(str(tmp_path))
    (tmp_path / "sun397" / "split_zhou_SUN397.json").write_text(json.dumps(content))
    with pytest.raises(coop_datasets.SplitFileError, match="split_zhou_SUN397.json"):
        load_coop_dataset("sun397", tmp_path, verify_images=False)


@pytest.mark.parametrize("content", ["{bad", '["a", "b"]', '{"one": "a"}'])
def test_malformed_cat_to_name_is_a_split_file_error(tmp_path, content):
    make_oxford_flowers(str(tmp_path), with_split_file=False)
    (tmp_path / "oxford_flowers" / "cat_to_name.json").write_text(content)
    with pytest.raises(coop_datasets.SplitFileError, match="cat_to_name.json"):
        load_coop_dataset("oxford_flowers", tmp_path, verify_images=False)


def test_non_integer_pet_class_id_names_the_line(tmp_path):
    make_oxford_pets(str(tmp_path), with_split_file=False)
    trainval = tmp_path / "oxford_pets" / "annotations" / "trainval.txt"
    trainval.write_text("Abyssinian_1 x 1 1\n" + trainval.read_text())
    with pytest.raises(coop_datasets.SplitFileError, match=r"trainval.txt:1: class id"):
        load_coop_dataset("oxford_pets", tmp_path, verify_images=False)


def test_flowers_class_id_zero_is_an_error_not_label_minus_one(tmp_path):
    from scipy.io import loadmat, savemat

    make_oxford_flowers(str(tmp_path), with_split_file=False)
    mat = tmp_path / "oxford_flowers" / "imagelabels.mat"
    labels = loadmat(str(mat))["labels"]
    labels[0, labels[0] == 1] = 0  # every image of class 1 relabelled 0 (not a valid 1-based id)
    savemat(str(mat), {"labels": labels})
    with pytest.raises(coop_datasets.SplitFileError, match="imagelabels.mat gives image 1 class id 0"):
        load_coop_dataset("oxford_flowers", tmp_path, verify_images=False)


# ------------------------------------------------------------------------------------------
# Labels of each image, where the reader derives them from annotations
# ------------------------------------------------------------------------------------------


def _expected_label_by_file(name: str, dataset_dir: str) -> dict[str, int]:
    """Each image's label, worked out by hand from what the fixture writes (1-based ids in the annotation files)."""
    if name == "oxford_pets":  # <Breed>_<n>.jpg, breeds in class-id order
        breeds = ["abyssinian", "american_bulldog", "yorkshire_terrier"]
        images = os.listdir(os.path.join(dataset_dir, "images"))
        return {image: breeds.index(image.rsplit("_", 1)[0].lower()) for image in images}
    if name == "stanford_cars":  # file k of cars_train / cars_test (k from 1) has class id (k - 1) % 3 + 1
        return {
            f"{folder}/{k:05d}.jpg": (k - 1) % 3
            for folder, count in (("cars_train", 15), ("cars_test", 6))
            for k in range(1, count + 1)
        }
    if name == "oxford_flowers":  # image_0000k.jpg (k from 1) has class id (k - 1) % 3 + 1 in imagelabels.mat
        return {f"image_{k:05d}.jpg": (k - 1) % 3 for k in range(1, 16)}
    raise KeyError(name)


def _coop_split_trainval(items, p_val, rng):
    """CoOp's ``OxfordPets.split_trainval`` as it behaves (written from that behaviour): a ``defaultdict`` of item
    positions per label, filled in list order and visited in that order; per class shuffle the positions, the first
    ``round(n * p_val)`` are val, the rest train."""
    tracker = {}
    for position, item in enumerate(items):
        tracker.setdefault(item[1], []).append(position)
    train, val = [], []
    for positions in tracker.values():
        n_val = round(len(positions) * p_val)
        rng.shuffle(positions)
        for n, position in enumerate(positions):
            (val if n < n_val else train).append(items[position])
    return train, val


def test_generated_train_val_split_visits_classes_in_first_appearance_order_as_coop():
    """An annotation list whose classes appear out of label order (as Cars' and SUN397's do): the hold-out is CoOp's."""
    import random

    from dataset_scripts.coop_datasets import _split_train_val

    labels = [2, 0, 2, 1, 0, 2, 1, 0, 2, 0, 1, 1, 2, 0, 1]
    items = [(f"img{i:02d}.jpg", label) for i, label in enumerate(labels)]
    info = get_dataset_info("stanford_cars")
    got = _split_train_val(items, 0.2, random.Random(1), info, ["a", "b", "c"])
    assert got == _coop_split_trainval(items, 0.2, random.Random(1))


def test_generated_per_class_split_visits_classes_in_first_appearance_order_as_coop():
    """Flowers102: CoOp's tracker is filled in imagelabels.mat order, so a class listed first is shuffled first."""
    import random

    from dataset_scripts.coop_datasets import _split_per_class

    items_by_label = {1: [f"b{i}" for i in range(5)], 0: [f"a{i}" for i in range(5)], 2: [f"c{i}" for i in range(5)]}
    rng = random.Random(1)
    expected = {"train": [], "val": [], "test": []}
    for label, paths in items_by_label.items():  # CoOp: shuffle, then 50 / 20 / rest
        paths = list(paths)
        rng.shuffle(paths)
        expected["train"] += [(p, label) for p in paths[:2]]
        expected["val"] += [(p, label) for p in paths[2:3]]
        expected["test"] += [(p, label) for p in paths[3:]]
    got = _split_per_class(items_by_label, (0.5, 0.2), random.Random(1), get_dataset_info("oxford_flowers"))
    assert got == expected


@pytest.mark.parametrize("name", ["eurosat", "sun397", "ucf101"])
def test_eurosat_sun397_ucf101_are_generated_as_coop_does_without_a_split_file(tmp_path, name):
    """CoOp generates these splits when its split file is absent; so does this reader (no refusal)."""
    import random

    expected = FIXTURE_BUILDERS[name](str(tmp_path), with_split_file=False)
    dataset_dict = load_coop_dataset(name, tmp_path, verify_images=False)
    assert _class_names(dataset_dict) == expected.classnames
    assert {split: len(ds) for split, ds in dataset_dict.items()} == expected.num_examples
    assert "generated by capt like CoOp" in dataset_dict["train"].info.description
    image_root = os.path.join(expected.dataset_dir, get_dataset_info(name).image_dir)
    for dataset in dataset_dict.values():  # each image's class is its folder's
        for path, label in zip(_paths(dataset), dataset["label"]):
            folder = os.path.dirname(os.path.relpath(path, image_root))
            if name == "sun397":
                assert " ".join(folder.split("/")[1:][::-1]) == expected.classnames[label]
            elif name == "ucf101":
                assert folder == expected.classnames[label]
            else:
                assert folder == ["AnnualCrop", "Forest", "HerbaceousVegetation"][label]
    if name != "eurosat":  # the annotation list's own order (classes interleaved, class 1 or 2 first) decides val
        lists = {"sun397": "Training_01.txt", "ucf101": os.path.join("ucfTrainTestlist", "trainlist01.txt")}
        with open(os.path.join(expected.dataset_dir, lists[name]), encoding="utf-8") as handle:
            listed = [line.split(" ")[0].strip().lstrip("/") for line in handle if line.strip()]
        def path_of(entry):
            if name == "sun397":
                return os.path.join(image_root, entry)
            action, video = entry.split("/")
            return os.path.join(image_root, expected.classnames[[c.replace("_", "") for c in expected.classnames]
                                                                 .index(action)], video.replace(".avi", ".jpg"))
        train_val = dataset_dict["train"].cast_column("image", ImageFeature(decode=False))
        label_of = dict(zip([i["path"] for i in train_val["image"]], train_val["label"]))
        val = dataset_dict["val"].cast_column("image", ImageFeature(decode=False))
        label_of.update(zip([i["path"] for i in val["image"]], val["label"]))
        items = [(path_of(entry), label_of[path_of(entry)]) for entry in listed]
        train, val_items = _coop_split_trainval(items, 0.2, random.Random(1))
        assert _paths(dataset_dict["train"]) == [p for p, _ in train]
        assert _paths(dataset_dict["val"]) == [p for p, _ in val_items]


@pytest.mark.parametrize("name", ["oxford_pets", "stanford_cars", "oxford_flowers"])
def test_generated_splits_label_each_image_by_its_annotation(tmp_path, name):
    """1-based class ids become 0-based labels of the right image, and the label's name is that class's name."""
    expected = FIXTURE_BUILDERS[name](str(tmp_path), with_split_file=False)
    dataset_dict = load_coop_dataset(name, tmp_path, verify_images=False)
    label_by_file = _expected_label_by_file(name, expected.dataset_dir)
    image_root = os.path.join(expected.dataset_dir, get_dataset_info(name).image_dir)
    seen = 0
    for dataset in dataset_dict.values():
        for path, label in zip(_paths(dataset), dataset["label"]):
            assert label == label_by_file[os.path.relpath(path, image_root)], path
            seen += 1
    assert seen == len(label_by_file)
    assert _class_names(dataset_dict) == expected.classnames


def test_imagenetv2_folder_i_is_imagenet_class_i_beyond_ten_classes(tmp_path):
    """Folders are ``0..999`` by number: a string sort (``0, 1, 10, 11, 2, ...``) would mislabel from class 2 on."""
    dataset_dir = tmp_path / "imagenetv2"
    wnids = [f"n{index:08d}" for index in range(12)]
    dataset_dir.mkdir()
    (dataset_dir / "classnames.txt").write_text("".join(f"{w} class {i}\n" for i, w in enumerate(wnids)))
    for index in range(12):
        write_image(str(dataset_dir / "imagenetv2-matched-frequency-format-val" / str(index) / "a.jpeg"), index)
    test = load_coop_dataset("imagenetv2", tmp_path, verify_images=False)["test"]
    assert test.features["label"].names == [f"class {i}" for i in range(12)]
    assert {int(os.path.basename(os.path.dirname(p))): y for p, y in zip(_paths(test), test["label"])} == {
        i: i for i in range(12)
    }


def test_generated_per_class_split_rounds_counts_with_round(tmp_path):
    """CoOp's 50 / 20 / rest rule with ``round``: 7 images give 4 / 1 / 2 (``int`` would give 3 / 1 / 3)."""
    for label, name in enumerate(["banded", "blotchy"]):
        for index in range(7):
            write_image(str(tmp_path / "dtd" / "images" / name / f"{name}_{index:04d}.jpg"), 10 * label + index)
    dataset_dict = load_coop_dataset("dtd", tmp_path, verify_images=False)
    assert {split: len(dataset) for split, dataset in dataset_dict.items()} == {"train": 8, "val": 2, "test": 4}
