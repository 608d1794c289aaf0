"""The Food-101N reader: Food-101N's noisy web images as train/val, Food-101's test split as test."""

from __future__ import annotations

import os

import pytest
from datasets import Image as ImageFeature
from fixtures_coop import _write_class_folders, make_food101

from dataset_scripts.coop_datasets import (
    SplitFileError, get_dataset_info, list_datasets, load_coop_dataset,
)


def make_food101n(data_dir, per_class=5, image_list=True):
    classes = ["apple_pie", "baby_back_ribs", "baklava"]
    root = os.path.join(data_dir, "Food-101N_release")
    _write_class_folders(os.path.join(root, "images"), classes, per_class)
    if image_list:
        os.makedirs(os.path.join(root, "meta"), exist_ok=True)
        with open(os.path.join(root, "meta", "imagelist.tsv"), "w", encoding="utf-8") as handle:
            handle.write("class_name/key\n")
            for name in classes:
                for index in range(per_class):
                    handle.write(f"{name}/{name}_{index:04d}.jpg\n")
    return root


@pytest.mark.parametrize("image_list", [True, False])
def test_food101n_trains_on_its_images_and_tests_on_food101(tmp_path, image_list):
    expected = make_food101(str(tmp_path))
    make_food101n(str(tmp_path), image_list=image_list)
    data = load_coop_dataset("food101n", str(tmp_path))
    assert data["train"].features["label"].names == ["apple_pie", "baby_back_ribs", "baklava"]
    assert len(data["train"]) + len(data["val"]) == 15 and len(data["val"]) == 3
    assert len(data["test"]) == expected.num_examples["test"]
    paths = data["test"].cast_column("image", ImageFeature(decode=False))["image"]
    assert all(os.sep + "food-101" + os.sep in value["path"] for value in paths)
    assert get_dataset_info("Food101N").name == "food101n" and "food101n" not in list_datasets()


def test_an_image_list_entry_of_no_class_folder_is_an_error(tmp_path):
    make_food101(str(tmp_path))
    root = make_food101n(str(tmp_path))
    with open(os.path.join(root, "meta", "imagelist.tsv"), "a", encoding="utf-8") as handle:
        handle.write("sushi/x.jpg\n")
    with pytest.raises(SplitFileError, match="sushi"):
        load_coop_dataset("food101n", str(tmp_path))
