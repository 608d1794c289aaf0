"""The training set's content fingerprint, and the Confusion Bank check that uses it: a bank of another few-shot draw
of the same data (same size, same labels in the same order, other images) is refused, not mined silently."""

from __future__ import annotations

import io
import logging
import os
import shutil

import datasets
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from conftest import write_image_dataset
from dataset_scripts.confusion_bank import save_bank
from dataset_scripts.data_fingerprint import FINGERPRINT_SCHEME, training_set_fingerprint
from dataset_scripts.bank import CaptConfusionBank
from dataset_scripts.bank import check_bank_matches_training_set
from dataset_scripts.confusion_bank import load_bank_for_training
from dataset_scripts.data import DataArguments, load_local_dataset, prepare_splits


FEATURES = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=["cat", "dog"])})


def png_bytes(seed: int) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 255, (8, 8, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def dataset_of(images: list[bytes], labels: list[int]) -> datasets.Dataset:
    return datasets.Dataset.from_dict(
        {"image": [{"bytes": data, "path": None} for data in images], "label": labels}, features=FEATURES)


def image_folder(root, images: list[bytes], labels: list[int]) -> str:
    for i, (data, label) in enumerate(zip(images, labels)):
        folder = os.path.join(root, "train", FEATURES["label"].names[label])
        os.makedirs(folder, exist_ok=True)
        with open(os.path.join(folder, f"{i:03d}.png"), "wb") as handle:
            handle.write(data)
    return str(root)


def undecoded(dataset) -> list[dict]:
    return dataset.cast_column("image", datasets.Image(decode=False))["image"]


# ------------------------------------------------------------------------------------------------ the fingerprint
def test_the_same_images_as_files_or_as_parquet_bytes_have_one_fingerprint(tmp_path):
    """An ImageFolder row holds a path (its file's bytes are hashed, never the path), a Parquet row the bytes: the
    same images and labels in the same order give the same fingerprint, also from another folder (another machine)."""
    images, labels = [png_bytes(i) for i in range(6)], [0, 0, 0, 1, 1, 1]
    folder = load_local_dataset(image_folder(tmp_path / "a", images, labels))["train"]
    moved = load_local_dataset(shutil.copytree(tmp_path / "a", tmp_path / "elsewhere"))["train"]
    stored = undecoded(folder)
    assert all(value["bytes"] is None and value["path"] for value in stored)  # the file branch is the one tested
    assert {value["path"] for value in stored}.isdisjoint(value["path"] for value in undecoded(moved))
    in_order = [open(value["path"], "rb").read() for value in stored]
    dataset_of(in_order, folder["label"]).to_parquet(str(tmp_path / "train.parquet"))
    parquet = load_local_dataset(str(tmp_path / "train.parquet"))["train"]
    assert all(value["bytes"] for value in undecoded(parquet))

    fingerprint = training_set_fingerprint(folder)
    assert fingerprint.startswith(FINGERPRINT_SCHEME + ":") and len(fingerprint.rpartition(":")[2]) == 64
    assert training_set_fingerprint(moved) == fingerprint
    assert training_set_fingerprint(parquet) == fingerprint
    assert training_set_fingerprint(dataset_of(in_order, folder["label"])) == fingerprint  # in memory


def test_the_fingerprint_changes_with_an_image_the_order_or_a_label():
    images, labels = [png_bytes(i) for i in range(6)], [0, 0, 0, 1, 1, 1]
    reference = training_set_fingerprint(dataset_of(images, labels))
    assert training_set_fingerprint(dataset_of(images, labels)) == reference
    changed = list(images)
    changed[4] = changed[4][:-20] + bytes([changed[4][-20] ^ 1]) + changed[4][-19:]  # one byte of one image
    assert training_set_fingerprint(dataset_of(changed, labels)) != reference
    swapped = dataset_of(images, labels).select([1, 0, 2, 3, 4, 5])  # two rows of one class: the labels are unchanged
    assert swapped["label"] == labels and training_set_fingerprint(swapped) != reference
    assert training_set_fingerprint(dataset_of(images, [0, 0, 1, 1, 1, 1])) != reference
    assert training_set_fingerprint(dataset_of(images[:5], labels[:5])) != reference


def test_the_fingerprint_reads_no_image(monkeypatch):
    """Hashing the stored bytes needs no decoding (fast, and a file that is not an image is hashed like any other)."""
    dataset = dataset_of([png_bytes(0), b"not an image at all"], [0, 1])
    monkeypatch.setattr(datasets.Image, "decode_example", lambda *a, **k: pytest.fail("an image was decoded"))
    assert training_set_fingerprint(dataset).startswith(FINGERPRINT_SCHEME)


def test_a_row_without_a_readable_image_is_named(tmp_path):
    dataset = datasets.Dataset.from_dict({"image": [{"bytes": png_bytes(0), "path": None},
                                                    {"bytes": None, "path": str(tmp_path / "gone.png")}],
                                          "label": [0, 1]}, features=FEATURES)
    with pytest.raises(ValueError, match=r"training row 1 .*gone\.png"):
        training_set_fingerprint(dataset)
    with pytest.raises(ValueError, match="no 'img' column"):
        training_set_fingerprint(dataset, image_column="img")


# ------------------------------------------------------------------------------------------------ the bank check
@pytest.fixture
def two_draws(tmp_path):
    """The training sets of seeds 1 and 2 of one generated dataset: 3 of 6 images per class, so both have the same
    labels in the same order (few-shot rows are ordered by class) but other images."""
    write_image_dataset(tmp_path / "data")
    data_args = DataArguments(train_dir=str(tmp_path / "data" / "train"), test_dir=str(tmp_path / "data" / "test"),
                              shots=3, subsample_classes="all")
    first, second = prepare_splits(data_args, 1), prepare_splits(data_args, 2)
    assert first["train"]["label"] == second["train"]["label"]
    assert training_set_fingerprint(first["train"]) != training_set_fingerprint(second["train"])
    return first["train"], second["train"], first["train_names"]


def bank_for(train, names, fingerprint):
    labels = torch.tensor(train["label"])
    probs = F.one_hot((labels + 1) % len(names), len(names)).float()
    return CaptConfusionBank.from_tensors(torch.arange(len(labels)), labels, probs, torch.randn(len(labels), 8),
                                          names, data_fingerprint=fingerprint)


def test_a_bank_of_another_seeds_draw_is_refused(two_draws, tmp_path):
    train, other, names = two_draws
    save_bank(bank_for(other, names, training_set_fingerprint(other)), tmp_path / "bank")
    with pytest.raises(ValueError, match=r"built from other images than this training set: its 18 labels match.*"
                                         r"another --seed.*same data, --shots, --seed and --subsample_classes"):
        load_bank_for_training(str(tmp_path / "bank"), train, names, "a photo of a {}.")


def test_a_bank_of_the_same_training_set_is_accepted(two_draws, tmp_path, caplog):
    train, _, names = two_draws
    fingerprint = training_set_fingerprint(train)
    save_bank(bank_for(train, names, fingerprint), tmp_path / "bank")
    with caplog.at_level(logging.WARNING):
        loaded = load_bank_for_training(str(tmp_path / "bank"), train, names, "a photo of a {}.")
    assert loaded.data_fingerprint == fingerprint
    assert "fingerprint" not in caplog.text


def test_a_bank_without_a_fingerprint_loads_with_a_warning(two_draws, tmp_path, caplog):
    """A bank saved before fingerprints were recorded cannot be checked: it is used, with a warning saying so."""
    train, other, names = two_draws
    save_bank(bank_for(other, names, None), tmp_path / "bank")
    with caplog.at_level(logging.WARNING):
        loaded = load_bank_for_training(str(tmp_path / "bank"), train, names, "a photo of a {}.")
    assert loaded.data_fingerprint is None
    assert "records no training-set fingerprint" in caplog.text and "cannot be checked" in caplog.text


def test_a_fingerprint_of_another_scheme_is_not_called_a_mismatch(two_draws, caplog):
    train, _, names = two_draws
    bank = bank_for(train, names, "capt-rows-sha256-v0:" + "0" * 64)
    with caplog.at_level(logging.WARNING):
        check_bank_matches_training_set(bank, train["label"], names, train)
    assert "of another scheme" in caplog.text
