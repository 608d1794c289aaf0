"""The training set's content fingerprint: its labels and encoded image bytes, in order, read without decoding."""

from __future__ import annotations

import io
import os
import shutil

import datasets
import numpy as np
import pytest
from PIL import Image

from dataset_scripts.data_fingerprint import FINGERPRINT_SCHEME, training_set_fingerprint
from trainers.data import load_local_dataset


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
