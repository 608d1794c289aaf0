"""Training-image augmentation (`--augment`): the random resized crop + flip, the collator, and the trainer wiring
(augmentation turns the frozen-prefix cache off, and an explicit cache mode is refused)."""

from __future__ import annotations

import json
import math
import os

import numpy as np
import pytest
import torch
from PIL import Image

from trainers import loop
from trainers.args import parse_args
from dataset_scripts.data import ImageClassificationCollator, RandomResizedCropFlip, processor_crop_size
from trainers.train_capt import main

from conftest import write_image_dataset


def gradient_image(width: int = 40, height: int = 30) -> Image.Image:
    """An RGB image whose pixels encode their coordinates, so crops and flips are visible."""
    x = np.tile(np.linspace(0, 255, width, dtype=np.float32), (height, 1))
    y = np.tile(np.linspace(0, 255, height, dtype=np.float32)[:, None], (1, width))
    return Image.fromarray(np.stack([x, y, 255 - x], axis=-1).astype(np.uint8), "RGB")


def test_crop_boxes_stay_within_scale_and_ratio():
    augment = RandomResizedCropFlip((16, 16), scale=(0.2, 0.6), ratio=(0.5, 2.0))
    generator = torch.Generator().manual_seed(0)
    width, height = 200, 100
    for _ in range(200):
        left, top, crop_width, crop_height = augment.crop_box(width, height, generator)
        assert 0 <= left and left + crop_width <= width and 0 <= top and top + crop_height <= height
        area = crop_width * crop_height / (width * height)
        assert 0.2 * 0.95 <= area <= 0.6 * 1.05  # rounding to whole pixels
        assert 0.5 * 0.9 <= crop_width / crop_height <= 2.0 * 1.1


def test_fallback_crop_is_centred_and_within_ratio():
    # A 1000 x 10 strip cannot hold a crop of ratio <= 4/3 covering >= 90 % of it: the fallback trims it.
    augment = RandomResizedCropFlip((8, 8), scale=(0.9, 1.0))
    left, top, crop_width, crop_height = augment.crop_box(1000, 10, torch.Generator().manual_seed(0))
    assert (crop_height, top) == (10, 0)
    assert crop_width == round(10 * 4 / 3) and left == (1000 - crop_width) // 2


def test_output_size_determinism_and_flip():
    image = gradient_image()
    augment = RandomResizedCropFlip((24, 20))
    first = augment(image, torch.Generator().manual_seed(3))
    assert first.size == (20, 24)  # PIL sizes are (width, height)
    assert np.array_equal(np.asarray(first), np.asarray(augment(image, torch.Generator().manual_seed(3))))
    draws = {np.asarray(augment(image, torch.Generator().manual_seed(seed))).tobytes() for seed in range(8)}
    assert len(draws) == 8

    whole = RandomResizedCropFlip((30, 40), scale=(1.0, 1.0), ratio=(40 / 30, 40 / 30), flip_probability=0.0)
    kept = np.asarray(whole(image, torch.Generator().manual_seed(0)))
    assert np.array_equal(kept, np.asarray(image))  # the whole image at its own size: unchanged
    mirror = RandomResizedCropFlip((30, 40), scale=(1.0, 1.0), ratio=(40 / 30, 40 / 30), flip_probability=1.0)
    assert np.array_equal(np.asarray(mirror(image, torch.Generator().manual_seed(0))), kept[:, ::-1])


@pytest.mark.parametrize(
    "kwargs, error",
    [
        (dict(size=0), "size"),
        (dict(size=8, scale=(0.0, 1.0)), "scale"),
        (dict(size=8, scale=(0.9, 0.5)), "scale"),
        (dict(size=8, ratio=(2.0, 1.0)), "ratio"),
        (dict(size=8, flip_probability=1.5), "flip_probability"),
    ],
)
def test_bad_augmentation_arguments(kwargs, error):
    with pytest.raises(ValueError, match=error):
        RandomResizedCropFlip(**kwargs)


def test_collator_augments_only_when_asked(image_processor):
    rows = [{"image": gradient_image().convert("L"), "label": 1, "index": 0}]
    plain = ImageClassificationCollator(image_processor, "train")
    assert torch.equal(plain(rows)["pixel_values"], plain(rows)["pixel_values"])
    augment = RandomResizedCropFlip(processor_crop_size(image_processor))
    torch.manual_seed(0)
    augmented = ImageClassificationCollator(image_processor, "train", augment=augment)
    first, second = augmented(rows)["pixel_values"], augmented(rows)["pixel_values"]
    assert first.shape == plain(rows)["pixel_values"].shape
    assert not torch.equal(first, second)
    torch.manual_seed(0)
    assert torch.equal(augmented(rows)["pixel_values"], first)  # torch's global seed makes it reproducible


def test_processor_crop_size(image_processor):
    height, width = processor_crop_size(image_processor)
    assert (height, width) == (image_processor.crop_size.height, image_processor.crop_size.width)
    assert processor_crop_size(type("Old", (), {"crop_size": {"height": 5, "width": 7}})()) == (5, 7)
    assert processor_crop_size(type("Short", (), {"size": {"shortest_edge": 9}})()) == (9, 9)

    class NoSize:
        pass

    with pytest.raises(ValueError, match="output size"):
        processor_crop_size(NoSize())


@pytest.mark.parametrize(
    "argv, error",
    [
        (["--augment", "--prefix_cache", "memory"], "prefix_cache memory"),
        (["--augment", "--prefix_cache", "disk"], "prefix_cache disk"),
        (["--augment_min_scale", "0"], "augment_min_scale"),
        (["--augment_min_scale", "1.5"], "augment_min_scale"),
    ],
)
def test_bad_augmentation_flags(argv, error):
    with pytest.raises(ValueError, match=error):
        parse_args(argv)


def test_trainer_augments_without_the_prefix_cache(tmp_path, tiny_clip_dir, monkeypatch):
    calls = []

    class CountingAugment(RandomResizedCropFlip):
        def __call__(self, image, generator=None):
            calls.append(image.size)
            return super().__call__(image, generator)

    built = []
    original_build = loop.FrozenPrefixCache.build

    def recording_build(*args, **kwargs):
        cache = original_build(*args, **kwargs)
        built.append((kwargs["augment"], cache))
        return cache

    monkeypatch.setattr(loop, "RandomResizedCropFlip", CountingAugment)
    monkeypatch.setattr(loop.FrozenPrefixCache, "build", recording_build)
    paths = write_image_dataset(tmp_path / "data")
    out = tmp_path / "out"
    main([
        "--model_name_or_path", tiny_clip_dir, "--method", "capt", "--augment", "--augment_min_scale", "0.5",
        "--train_dir", os.path.dirname(paths["train"]), "--test_dir", os.path.dirname(paths["test"]),
        "--output_dir", str(out), "--shots", "2", "--num_train_epochs", "2", "--heatmap", "false",
        "--per_device_eval_batch_size", "16",
    ])
    assert built == [(True, None)]  # auto mode: the cache is off under augmentation
    assert len(calls) == 2 * 3 * 2  # every training image of both epochs (2 shots x 3 base classes), none other
    metrics = json.loads((out / "metrics.json").read_text())
    assert math.isfinite(metrics["capt"]["hm"])
