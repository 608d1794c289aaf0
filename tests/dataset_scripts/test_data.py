"""dataset_scripts/data.py: image decoding of every PIL mode, and the data pipeline's edge cases."""

from __future__ import annotations

import os
import io

import datasets
import numpy as np
import pytest
from PIL import Image

from dataset_scripts.data import ImageClassificationCollator, to_rgb



def _pixels(image_processor, image):
    collate = ImageClassificationCollator(image_processor, "test")
    return collate([{"image": image, "label": 0, "index": 0}])["pixel_values"][0]


def _decoded(image):
    """`image` after a round trip through a `datasets.Image` column (as the trainer reads it)."""
    feature = datasets.Image()
    return feature.decode_example(feature.encode_example(image))


@pytest.mark.parametrize("through_datasets", [False, True])
def test_16_bit_images_keep_their_grey_level(image_processor, through_datasets):
    grey16 = Image.fromarray(np.full((32, 32), 100 * 257, dtype=np.uint16))
    if through_datasets:
        grey16 = _decoded(grey16)
    assert grey16.mode.startswith("I")
    grey8 = Image.new("RGB", (32, 32), (100, 100, 100))
    assert np.array_equal(np.asarray(to_rgb(grey16)), np.asarray(grey8))
    assert (_pixels(image_processor, grey16) - _pixels(image_processor, grey8)).abs().max() < 1e-6


def _transparent_png(mode):
    if mode == "RGBA":
        image = Image.new("RGBA", (32, 32), (0, 0, 0, 0))
    elif mode == "LA":
        image = Image.new("LA", (32, 32), (0, 0))
    else:  # a palette image whose colour 0 is transparent
        image = Image.new("P", (32, 32), 0)
        image.putpalette([0, 0, 0] * 256)
        image.info["transparency"] = 0
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return Image.open(io.BytesIO(buffer.getvalue()))


@pytest.mark.parametrize("mode", ["RGBA", "LA", "P"])
def test_transparency_is_composited_onto_white_as_the_clip_processor_does(image_processor, mode):
    image = _transparent_png(mode)
    white = Image.new("RGB", (32, 32), (255, 255, 255))
    assert np.array_equal(np.asarray(to_rgb(image)), np.asarray(white))
    # what the CLIP image processor itself makes of the image, and what the collator feeds the model
    direct = image_processor(images=[_transparent_png(mode)], return_tensors="pt")["pixel_values"][0]
    assert (_pixels(image_processor, image) - direct).abs().max() < 1e-6


@pytest.mark.parametrize("mode", ["L", "RGB", "CMYK", "1"])
def test_opaque_modes_convert_as_pillow_does(mode):
    image = Image.new(mode, (4, 4))
    assert np.array_equal(np.asarray(to_rgb(image)), np.asarray(image.convert("RGB")))


def _write_split_files(root, columns, features, num_classes=4, per_class=2):
    for split in ("train", "test"):
        rows = {name: [] for name in features}
        for i in range(num_classes * per_class):
            for name, make in columns.items():
                rows[name].append(make(i % num_classes))
        datasets.Dataset.from_dict(rows, features=datasets.Features(features)).to_parquet(
            str(root / f"{split}-00000.parquet")
        )


def _data_args(path, **overrides):
    from types import SimpleNamespace

    values = dict(dataset=None, data_dir=None, train_dir=None, test_dir=None, dataset_name=str(path),
                  dataset_config_name=None, image_column="image", label_column="label", shots=1,
                  subsample_classes="base", max_eval_samples=None, fewshot_cache_dir=None, class_order="auto")
    values.update(overrides)
    return SimpleNamespace(**values)


def test_label_column_beside_another_column_named_label(tmp_path):
    """A CIFAR-100-like source: `--label_column fine_label --image_column img`, and a string column `label` too."""
    from dataset_scripts.data import prepare_splits
    from trainers.evaluate_capt import load_evaluation_split

    names = ["apple", "bear", "cup", "dolphin"]
    _write_split_files(
        tmp_path,
        {"img": lambda y: Image.new("RGB", (8, 8), (60 * y, 0, 0)), "label": lambda y: f"coarse {y // 2}",
         "fine_label": lambda y: y, "image": lambda y: None},
        {"img": datasets.Image(), "label": datasets.Value("string"), "fine_label": datasets.ClassLabel(names=names),
         "image": datasets.Value("string")},
    )
    splits = prepare_splits(_data_args(tmp_path, image_column="img", label_column="fine_label"), seed=1)
    assert splits["train_names"] == ["apple", "bear"] and splits["novel_names"] == ["cup", "dolphin"]
    assert sorted(splits["train"].column_names) == ["image", "label", "source_row"]
    assert sorted(splits["train"]["label"]) == [0, 1] and splits["train"][0]["image"].size == (8, 8)
    data, class_names = load_evaluation_split(dataset_name=str(tmp_path), image_column="img", label_column="fine_label")
    assert class_names == names and data.column_names == ["image", "label"] and data["label"] == [0, 1, 2, 3] * 2


def test_imagefolder_test_tree_without_a_class_folder(tmp_path):
    """A class with no test image has no test folder: the test labels are read by name in the training classes."""
    from dataset_scripts.data import prepare_splits

    for split, classes in (("train", ["ant", "bee", "cat", "dog"]), ("test", ["ant", "bee", "dog"])):
        for label, name in enumerate(classes):
            (tmp_path / split / name).mkdir(parents=True)
            for i in range(2):
                Image.new("RGB", (8, 8), (40 * label, i, 0)).save(tmp_path / split / name / f"{i}.png")
    args = _data_args(None, dataset_name=None, train_dir=str(tmp_path / "train"), test_dir=str(tmp_path / "test"))
    splits = prepare_splits(args, seed=1)
    assert splits["train_names"] == ["ant", "bee"] and splits["novel_names"] == ["cat", "dog"]
    assert list(splits["test"]["label"]) == [0, 0, 1, 1]
    assert list(splits["test_novel"]["label"]) == [1, 1]  # dog, not cat
    assert [image.getpixel((0, 0))[0] for image in splits["test_novel"]["image"]] == [80, 80]  # the dog folder's
    (tmp_path / "test" / "eel").mkdir()
    Image.new("RGB", (8, 8)).save(tmp_path / "test" / "eel" / "0.png")
    with pytest.raises(ValueError, match="name different classes"):
        prepare_splits(args, seed=1)


def test_fewshot_cache_key_tells_the_configs_of_a_benchmark_apart():
    from dataset_scripts.data import fewshot_cache_key

    dtd = fewshot_cache_key(_data_args("/data/coop", dataset_config_name="dtd"))
    eurosat = fewshot_cache_key(_data_args("/data/coop", dataset_config_name="eurosat"))
    assert dtd != eurosat and dtd.endswith("dtd") and "/" not in dtd
    assert fewshot_cache_key(_data_args(None, dataset_name=None, dataset="oxford_pets")) == "oxford_pets"
    assert fewshot_cache_key(_data_args(None, dataset_name=None)) == "embedded-fashion-subset"


def test_save_to_disk_folders_load_as_a_source(tmp_path):
    """`DatasetDict.save_to_disk` (for --dataset_name) and `Dataset.save_to_disk` (for --train_dir/--test_dir) folders
    load; they failed with "the data split is empty (Instruction "train" corresponds to no data!)"."""
    from dataset_scripts.data import prepare_splits
    from trainers.evaluate_capt import load_evaluation_split

    names = ["ant", "bee", "cat", "dog"]
    features = datasets.Features({"img": datasets.Image(), "fine_label": datasets.ClassLabel(names=names)})

    def split(per_class):
        rows = [(Image.new("L", (8, 8), 40 * y), y) for y in range(4) for _ in range(per_class)]
        return datasets.Dataset.from_dict({"img": [r[0] for r in rows], "fine_label": [r[1] for r in rows]},
                                          features=features)

    datasets.DatasetDict(train=split(3), test=split(2)).save_to_disk(str(tmp_path / "dict"))
    splits = prepare_splits(_data_args(tmp_path / "dict", image_column="img", label_column="fine_label"), seed=1)
    assert splits["train_names"] == ["ant", "bee"] and len(splits["train"]) == 2 and len(splits["test"]) == 4
    data, class_names = load_evaluation_split(dataset_name=str(tmp_path / "dict"), image_column="img",
                                              label_column="fine_label")
    assert class_names == names and len(data) == 8

    split(3).save_to_disk(str(tmp_path / "train"))
    split(2).save_to_disk(str(tmp_path / "test"))
    args = _data_args(None, dataset_name=None, train_dir=str(tmp_path / "train"), test_dir=str(tmp_path / "test"),
                      image_column="img", label_column="fine_label", shots=2)
    splits = prepare_splits(args, seed=1)
    assert len(splits["train"]) == 4 and len(splits["test"]) == 4 and splits["novel_names"] == ["cat", "dog"]


def test_an_image_column_that_is_not_a_datasets_image_is_named(tmp_path):
    """A column of file paths (or a mistyped --image_column naming a text column) failed as 'Cannot decode the image
    of train row 0: 'str' object has no attribute 'load'', as if the image were corrupt."""
    from dataset_scripts.data import check_dataset
    from trainers.evaluate_capt import load_evaluation_split

    path = tmp_path / "a.png"
    Image.new("RGB", (8, 8)).save(path)
    features = datasets.Features({"image": datasets.Value("string"), "label": datasets.ClassLabel(names=["a", "b"])})
    data = datasets.Dataset.from_dict({"image": [str(path)] * 2, "label": [0, 1]}, features=features)
    with pytest.raises(ValueError, match=r"train split's 'image' column must be a datasets.Image column.*cast_column"):
        check_dataset(data, "image", "label", "train")
    assert check_dataset(data.cast_column("image", datasets.Image()), "image", "label", "train") == ["a", "b"]
    datasets.DatasetDict(test=data).save_to_disk(str(tmp_path / "paths"))
    with pytest.raises(ValueError, match="must be a datasets.Image column"):
        load_evaluation_split(dataset_name=str(tmp_path / "paths"))


def test_prepare_splits_on_a_coop_benchmark(tmp_path):
    """CoOp's Pets: few-shot on all classes, then base = first ceil(3 / 2) = 2 labels; prompts without underscores."""
    from fixtures_coop import make_oxford_pets

    from dataset_scripts.data import prepare_splits

    make_oxford_pets(str(tmp_path))  # abyssinian, american_bulldog, yorkshire_terrier; 3 train / 2 test images each
    splits = prepare_splits(_data_args(None, dataset_name=None, dataset="oxford_pets", data_dir=str(tmp_path),
                                       shots=2), seed=1)
    assert splits["all_names"] == ["abyssinian", "american bulldog", "yorkshire terrier"]
    assert splits["train_names"] == ["abyssinian", "american bulldog"]
    assert splits["novel_names"] == ["yorkshire terrier"]
    assert sorted(splits["train"]["label"]) == [0, 0, 1, 1]
    assert sorted(splits["test"]["label"]) == [0, 0, 1, 1] and list(splits["test_novel"]["label"]) == [0, 0]


def test_a_decode_error_names_the_source_row_and_the_file(tmp_path):
    """The rows of a split are a sampled subset: an error must name the row (and file) the user can find."""
    from fixtures_coop import make_oxford_pets, write_corrupt_image

    from dataset_scripts.data import IndexedImageDataset, prepare_splits

    expected = make_oxford_pets(str(tmp_path))
    args = _data_args(None, dataset_name=None, dataset="oxford_pets", data_dir=str(tmp_path), shots=2)
    splits = prepare_splits(args, seed=1)
    rows = IndexedImageDataset(splits["train"], "train")
    source_rows = splits["train"]["source_row"]
    last = next(i for i in reversed(range(len(rows))) if source_rows[i] != i)  # the subset is not the source's rows
    source_row = source_rows[last]
    undecoded = splits["train"].cast_column("image", datasets.Image(decode=False))
    path = undecoded[last]["image"]["path"]
    write_corrupt_image(path)  # damaged after the reader checked it
    with pytest.raises(ValueError, match=rf"train row {source_row} of the source split \(row {last} of the sampled "
                                         rf"subset\), file {path}"):
        rows[last]
    assert expected.dataset_dir in path


def test_class_names_equal_once_underscores_become_spaces_are_named(tmp_path):
    from dataset_scripts.data import prompt_class_names

    assert prompt_class_names(["american_bulldog", "cat"]) == ["american bulldog", "cat"]
    with pytest.raises(ValueError, match="'sea_lake' and 'sea lake'"):
        prompt_class_names(["forest", "sea_lake", "river", "sea lake"])


def test_coop_benchmarks_draw_in_dassls_class_order_other_sources_in_sorted_order(tmp_path):
    """The trainer's few-shot draw: a CoOp benchmark visits its classes in first-appearance order (Dassl, so Cars and
    Flowers get the published images); any other source keeps sorted order (the embedded default's draw)."""
    import random

    from fixtures_coop import write_split_zhou

    from dataset_scripts.data import prepare_splits
    from dataset_scripts.fewshot import sample_per_class

    names = ["pink primrose", "canterbury bells", "sweet pea"]
    labels = [2, 1, 2, 0, 1, 2, 0, 1, 0, 2, 1, 0]
    entries = {split: [(f"image_{split}{row:02d}.jpg", label, names[label]) for row, label in enumerate(labels)]
               for split in ("train", "val", "test")}
    write_split_zhou(str(tmp_path / "oxford_flowers"), "jpg", "split_zhou_OxfordFlowers.json", entries)
    args = _data_args(None, dataset="oxford_flowers", data_dir=str(tmp_path), dataset_name=None, shots=2,
                      subsample_classes="all")
    train = prepare_splits(args, seed=1)["train"].cast_column("image", datasets.Image(decode=False))
    drawn = [os.path.basename(image["path"]) for image in train["image"]]
    expected = sample_per_class(labels, 2, random.Random(1), "first_appearance")
    assert drawn == [entries["train"][row][0] for row in expected]
    assert sorted(expected) != sorted(sample_per_class(labels, 2, random.Random(1), "sorted"))
    # a `datasets` source (as the embedded default, whose rows are shuffled) keeps the sorted visit
    _write_split_files(tmp_path / "hub", {"image": lambda y: Image.new("RGB", (8, 8), (60 * y, 0, 0)),
                                          "label": lambda y: 3 - y}, {"image": datasets.Image(),
                                          "label": datasets.ClassLabel(names=["a", "b", "c", "d"])}, per_class=3)
    hub = datasets.load_dataset(str(tmp_path / "hub"), split="train")
    args = _data_args(tmp_path / "hub", shots=2, subsample_classes="all")
    rows = sample_per_class(hub["label"], 2, random.Random(1), "sorted")
    assert prepare_splits(args, seed=1)["train"]["label"] == [hub["label"][row] for row in rows]
    assert rows != sample_per_class(hub["label"], 2, random.Random(1), "first_appearance")


def test_a_built_parquet_benchmark_draws_as_its_coop_folders_do(tmp_path):
    """`build_benchmark.py` keeps the split list's row order; the trainer recognises its provenance record and draws
    in Dassl's class order, so `--dataset_name OUT --dataset_config_name oxford_flowers` picks the images the CoOp
    folders (and the published protocol) pick. `--class_order sorted` overrides it."""
    import random

    from fixtures_coop import write_split_zhou

    from dataset_scripts.build_benchmark import build_benchmark
    from dataset_scripts.data import prepare_splits
    from dataset_scripts.fewshot import sample_per_class

    names = ["pink primrose", "canterbury bells", "sweet pea"]
    labels = [2, 1, 2, 0, 1, 2, 0, 1, 0, 2, 1, 0]
    entries = {split: [(f"image_{split}{row:02d}.jpg", label, names[label]) for row, label in enumerate(labels)]
               for split in ("train", "val", "test")}
    write_split_zhou(str(tmp_path / "oxford_flowers"), "jpg", "split_zhou_OxfordFlowers.json", entries)
    build_benchmark("oxford_flowers", tmp_path, tmp_path / "out", show_progress=False)

    def drawn(**overrides):
        return prepare_splits(_data_args(tmp_path / "out", shots=2, subsample_classes="all", **overrides),
                              seed=1)["train"]["source_row"]

    folders = drawn(dataset="oxford_flowers", data_dir=str(tmp_path), dataset_name=None)
    published = sorted(sample_per_class(labels, 2, random.Random(1), "first_appearance"))
    assert sorted(folders) == published
    assert sorted(drawn(dataset_config_name="oxford_flowers")) == published
    sorted_draw = sorted(sample_per_class(labels, 2, random.Random(1), "sorted"))
    assert sorted_draw != published
    assert sorted(drawn(dataset_config_name="oxford_flowers", class_order="sorted",
                        fewshot_cache_dir=str(tmp_path / "other-cache"))) == sorted_draw


def test_class_order_auto_asks_the_hub_for_the_provenance_record_and_says_when_it_cannot(monkeypatch, caplog):
    from dataset_scripts import data

    asked = []

    def file_exists(repo_id, filename, repo_type=None):
        asked.append((repo_id, filename, repo_type))
        if repo_id == "org/offline":
            raise OSError("offline")
        return repo_id == "org/coop-benchmarks"

    monkeypatch.setattr(data.huggingface_hub, "file_exists", file_exists)
    order = lambda name: data.resolve_class_order(_data_args(None, dataset_name=name, dataset_config_name="dtd",
                                                             class_order="auto"))
    assert order("org/coop-benchmarks") == "first_appearance"
    assert asked[-1] == ("org/coop-benchmarks", "dtd/capt_benchmark.json", "dataset")
    assert order("org/any-dataset") == "sorted" and not caplog.records
    assert order("org/offline") == "sorted"
    assert "--class_order first_appearance" in caplog.text
    assert data.resolve_class_order(_data_args(None, dataset_name="org/offline", class_order="first_appearance")) \
        == "first_appearance"
    with pytest.raises(ValueError, match="--class_order must be auto, first_appearance or sorted"):
        data.DataArguments(class_order="random")
