"""Few-shot sampling, its JSON cache, and base-to-novel subsampling (PROTOCOL.md's rules)."""

from __future__ import annotations

import json
import os
import random
from collections import Counter

import pytest
from datasets import ClassLabel, Dataset, DatasetDict, Features, Image, Value
from fixtures_coop import make_oxford_pets

from dataset_scripts import fewshot
from dataset_scripts.coop_datasets import load_coop_dataset
from dataset_scripts.fewshot import (
    base_novel_labels,
    few_shot_cache_path,
    few_shot_dataset_dict,
    few_shot_indices,
    sample_per_class,
    subsample_classes,
)


def synthetic_dataset_dict(per_class: dict[str, list[int]], num_classes: int) -> DatasetDict:
    """Splits with ``per_class[split][c]`` rows of class ``c`` (rows interleaved across classes)."""
    features = Features(
        {"image": Value("string"), "label": ClassLabel(names=[f"class_{c}" for c in range(num_classes)])}
    )
    splits = {}
    for split, counts in per_class.items():
        labels = [label for round_ in range(max(counts)) for label in range(num_classes) if round_ < counts[label]]
        splits[split] = Dataset.from_dict(
            {"image": [f"{split}/{i}.jpg" for i in range(len(labels))], "label": labels}, features=features
        )
    return DatasetDict(splits)


@pytest.fixture()
def dataset_dict():
    # class 2 has only 3 training images and 2 validation images
    return synthetic_dataset_dict({"train": [20, 20, 3, 20, 20], "val": [10, 10, 2, 10, 10], "test": [5] * 5}, 5)


def _per_class(dataset_dict, indices, split):
    labels = dataset_dict[split]["label"]
    return Counter(labels[i] for i in indices[split])


def test_sample_per_class_matches_random_sample():
    labels = [0, 1, 0, 1, 0, 1, 0]
    rng, reference = random.Random(7), random.Random(7)
    assert sample_per_class(labels, 2, rng) == reference.sample([0, 2, 4, 6], 2) + reference.sample([1, 3, 5], 2)


@pytest.mark.parametrize("num_shots", [1, 2, 4, 8, 16])
def test_shots_per_class_and_val_rule(dataset_dict, num_shots):
    indices = few_shot_indices(dataset_dict, num_shots, seed=1)
    assert set(indices) == {"train", "val"}
    train, val = _per_class(dataset_dict, indices, "train"), _per_class(dataset_dict, indices, "val")
    assert train == {0: num_shots, 1: num_shots, 2: min(num_shots, 3), 3: num_shots, 4: num_shots}
    val_shots = min(num_shots, 4)
    assert val == {0: val_shots, 1: val_shots, 2: min(val_shots, 2), 3: val_shots, 4: val_shots}
    assert len(set(indices["train"])) == len(indices["train"])


def test_same_seed_same_indices_other_seed_other_indices(dataset_dict):
    first = few_shot_indices(dataset_dict, 4, seed=1)
    assert few_shot_indices(dataset_dict, 4, seed=1) == first
    assert few_shot_indices(dataset_dict, 4, seed=2)["train"] != first["train"]


def test_few_shot_dataset_dict_keeps_test(dataset_dict):
    shots = few_shot_dataset_dict(dataset_dict, 2, seed=3)
    assert (len(shots["train"]), len(shots["val"]), len(shots["test"])) == (10, 10, 25)
    assert shots["train"].features == dataset_dict["train"].features


def test_json_cache_round_trip(dataset_dict, tmp_path, monkeypatch):
    indices = few_shot_indices(dataset_dict, 4, seed=1, dataset_name="toy", cache_dir=tmp_path)
    path = few_shot_cache_path(tmp_path, "toy", 4, 1)
    assert path == str(tmp_path / "toy" / "shot_4-seed_1.json")
    with open(path, encoding="utf-8") as handle:
        cached = json.load(handle)
    assert cached["indices"] == indices and (cached["dataset"], cached["num_shots"], cached["seed"]) == ("toy", 4, 1)
    assert sorted(os.listdir(tmp_path / "toy")) == ["shot_4-seed_1.json"]  # no temp or pickle files left

    def fail(*args, **kwargs):
        raise AssertionError("indices should come from the cache")

    monkeypatch.setattr(fewshot, "sample_per_class", fail)
    assert few_shot_indices(dataset_dict, 4, seed=1, dataset_name="toy", cache_dir=tmp_path) == indices


def test_stale_cache_is_regenerated(dataset_dict, tmp_path, caplog):
    few_shot_indices(dataset_dict, 2, seed=1, dataset_name="toy", cache_dir=tmp_path)
    other = synthetic_dataset_dict({"train": [6] * 5, "val": [3] * 5}, 5)
    indices = few_shot_indices(other, 2, seed=1, dataset_name="toy", cache_dir=tmp_path)
    assert "different split" in caplog.text
    assert max(indices["train"]) < len(other["train"])
    assert indices == few_shot_indices(other, 2, seed=1)


@pytest.mark.parametrize(
    "content", ['{"version": 1, "spl', "[1, 2]", '{"version": 1}', "\xff\xfe", "null", "VALID_WITH_BAD_INDICES"]
)
def test_corrupt_cache_is_regenerated(dataset_dict, tmp_path, caplog, content):
    expected = few_shot_indices(dataset_dict, 2, seed=1, dataset_name="toy", cache_dir=tmp_path)
    path = few_shot_cache_path(tmp_path, "toy", 2, 1)
    if content == "VALID_WITH_BAD_INDICES":
        with open(path, encoding="utf-8") as handle:
            cached = json.load(handle)
        cached["indices"]["train"] = [10**6]
        content = json.dumps(cached)
    with open(path, "w", encoding="utf-8", errors="surrogateescape") as handle:
        handle.write(content)
    assert few_shot_indices(dataset_dict, 2, seed=1, dataset_name="toy", cache_dir=tmp_path) == expected
    assert "unreadable" in caplog.text
    with open(path, encoding="utf-8") as handle:  # the cache was rewritten
        assert json.load(handle)["indices"] == expected


def test_cache_needs_a_dataset_name(dataset_dict, tmp_path):
    with pytest.raises(ValueError, match="dataset_name"):
        few_shot_indices(dataset_dict, 2, seed=1, cache_dir=tmp_path)


@pytest.mark.parametrize(("num_classes", "base", "novel"), [(4, [0, 1], [2, 3]), (5, [0, 1, 2], [3, 4]), (1, [0], [])])
def test_base_novel_labels(num_classes, base, novel):
    assert base_novel_labels(num_classes) == (base, novel)


@pytest.mark.parametrize("num_classes", [4, 5])
def test_subsample_classes_relabels_from_zero(num_classes):
    dataset_dict = synthetic_dataset_dict({"train": [3] * num_classes, "test": [2] * num_classes}, num_classes)
    base, novel = base_novel_labels(num_classes)
    for subsample, kept in (("base", base), ("novel", novel)):
        subset = subsample_classes(dataset_dict, subsample)
        for split, dataset in subset.items():
            assert dataset.features["label"].names == [f"class_{c}" for c in kept]
            assert sorted(set(dataset["label"])) == list(range(len(kept)))
            original = dataset_dict[split]
            expected_rows = [image for image, label in zip(original["image"], original["label"]) if label in kept]
            assert dataset["image"] == expected_rows
            # the image's original class is the kept class at its new label
            original_label = dict(zip(original["image"], original["label"]))
            assert all(original_label[image] == kept[label] for image, label in zip(dataset["image"], dataset["label"]))
    assert subsample_classes(dataset_dict, "all") is dataset_dict
    with pytest.raises(ValueError, match="subsample"):
        subsample_classes(dataset_dict, "half")


def test_base_to_novel_after_few_shot_on_a_real_layout(tmp_path):
    make_oxford_pets(str(tmp_path))
    dataset_dict = load_coop_dataset("oxford_pets", tmp_path)  # 3 classes: base = 2, novel = 1
    shots = few_shot_dataset_dict(dataset_dict, 2, seed=1, dataset_name="oxford_pets", cache_dir=tmp_path / "cache")
    base = subsample_classes(shots, "base")
    novel = subsample_classes(dataset_dict, "novel")
    assert base["train"].features["label"].names == ["abyssinian", "american_bulldog"]
    assert Counter(base["train"]["label"]) == {0: 2, 1: 2}
    assert novel["test"].features["label"].names == ["yorkshire_terrier"]
    assert set(novel["test"]["label"]) == {0} and len(novel["test"]) == 2
    assert base["train"][0]["image"].size == (8, 8)  # images still decode after relabelling


def test_one_generator_first_appearance_small_class_draws_nothing_then_val():
    """The rule spelled out by hand: one ``random.Random(seed)``; train first, then val with ``min(k, 4)`` shots;
    classes in the order of their first appearance in the split (Dassl's ``split_dataset_by_label``), not sorted; a
    class with fewer than k rows gives all of them, in row order, and draws nothing from the generator.
    ``class_order="sorted"`` visits sorted labels instead."""
    features = Features({"image": Value("string"), "label": ClassLabel(names=["c0", "c1", "c2"])})
    # class 2 appears first; class 1 has 3 train rows (< k = 5) and exactly 4 val rows (= min(5, 4))
    train_labels = [2, 0, 2, 1, 0, 2, 1, 0, 2, 0, 2, 1, 0, 2, 0, 2]
    val_labels = [1, 2, 0, 2, 1, 0, 2, 0, 1, 2, 0, 2, 1, 0]
    dataset_dict = DatasetDict(
        {
            split: Dataset.from_dict({"image": [str(i) for i in range(len(labels))], "label": labels}, features=features)
            for split, labels in (("train", train_labels), ("val", val_labels))
        }
    )

    def rows(labels, label):
        return [row for row, y in enumerate(labels) if y == label]

    rng = random.Random(5)
    expected_train = rng.sample(rows(train_labels, 2), 5) + rng.sample(rows(train_labels, 0), 5) + rows(train_labels, 1)
    assert rows(train_labels, 1) == [3, 6, 11]
    expected_val = [index for label in (1, 2, 0) for index in rng.sample(rows(val_labels, label), 4)]

    indices = few_shot_indices(dataset_dict, 5, seed=5)
    assert indices == {"train": expected_train, "val": expected_val}
    # a generator per split would draw val's first sample like a fresh Random(5): not the rule
    assert expected_val[:4] != random.Random(5).sample(rows(val_labels, 1), 4)

    rng = random.Random(5)
    sorted_train = rng.sample(rows(train_labels, 0), 5) + rows(train_labels, 1) + rng.sample(rows(train_labels, 2), 5)
    assert few_shot_indices(dataset_dict, 5, seed=5, class_order="sorted")["train"] == sorted_train
    assert sorted(sorted_train) != sorted(expected_train)  # the order decides which images are drawn
    assert set(few_shot_indices(dataset_dict, 5, seed=5, sample_val=False)) == {"train"}


def _dassl_few_shot(items, num_shots, rng):
    """Dassl's ``DatasetBase.generate_fewshot_dataset`` as its documentation and CoOp's use of it describe it (written
    here from that behaviour, independently of the package): group the split's items by label into a dict filled in
    list order (``split_dataset_by_label``), then for each group in the dict's order take
    ``random.sample(group, num_shots)``, or the whole group when it is smaller, with the generator seeded once by the
    run's seed (``set_random_seed(cfg.SEED)``); the validation split is drawn next with ``min(num_shots, 4)``."""
    groups = {}
    for item in items:
        groups.setdefault(item[1], []).append(item)
    drawn = []
    for group in groups.values():
        drawn.extend(rng.sample(group, num_shots) if len(group) >= num_shots else group)
    return drawn


@pytest.mark.parametrize("seed", [1, 2, 3])
@pytest.mark.parametrize("num_shots", [1, 2, 4])
def test_the_same_images_as_dassl_on_an_out_of_order_split_list(tmp_path, seed, num_shots):
    """A StanfordCars split file that lists its classes out of label order (as the real Cars and Flowers files do),
    with a class smaller than the shots: the package draws exactly the images Dassl's rule draws."""
    from fixtures_coop import write_split_zhou

    from dataset_scripts.coop_datasets import load_coop_dataset

    names = ["2000 AM General Hummer SUV", "2012 Acura RL Sedan", "2012 Audi R8 Coupe", "2007 BMW X5 SUV"]
    order = {"train": [2, 0, 3, 2, 1, 0, 3, 2, 0, 2, 3, 1, 0, 2], "val": [3, 1, 2, 0, 1, 3, 2, 0, 3],
             "test": [1, 0, 3, 2]}
    entries = {split: [(f"cars_{'test' if split == 'test' else 'train'}/{split}{row:03d}.jpg", label, names[label])
                       for row, label in enumerate(labels)] for split, labels in order.items()}
    write_split_zhou(str(tmp_path / "stanford_cars"), "", "split_zhou_StanfordCars.json", entries)
    dataset_dict = load_coop_dataset("stanford_cars", tmp_path, verify_images=False)

    rng = random.Random(seed)
    expected = {"train": _dassl_few_shot(entries["train"], num_shots, rng),
                "val": _dassl_few_shot(entries["val"], min(num_shots, 4), rng)}
    indices = few_shot_indices(dataset_dict, num_shots, seed)
    for split in ("train", "val"):
        paths = dataset_dict[split].cast_column("image", Image(decode=False))["image"]
        picked = [os.path.relpath(paths[i]["path"], tmp_path / "stanford_cars") for i in indices[split]]
        assert picked == [path for path, _, _ in expected[split]]


def test_subsampling_keeps_label_order_not_name_order():
    """"Sort the label set": base are the first labels by id, and the names follow their labels (never re-sorted)."""
    names = ["zebra", "ant", "moose", "bee", "cat"]
    features = Features({"image": Value("string"), "label": ClassLabel(names=names)})
    labels = [4, 3, 2, 1, 0, 0, 1, 2, 3, 4]
    dataset_dict = DatasetDict(
        test=Dataset.from_dict({"image": [f"{names[y]}-{i}" for i, y in enumerate(labels)], "label": labels},
                               features=features)
    )
    base, novel = subsample_classes(dataset_dict, "base")["test"], subsample_classes(dataset_dict, "novel")["test"]
    assert base.features["label"].names == ["zebra", "ant", "moose"]
    assert novel.features["label"].names == ["bee", "cat"]
    for subset in (base, novel):
        names_of = subset.features["label"].names
        assert all(image.startswith(names_of[label] + "-") for image, label in zip(subset["image"], subset["label"]))
