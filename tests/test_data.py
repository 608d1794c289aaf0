"""trainers/data.py: image decoding of every PIL mode, and the data pipeline's edge cases."""

from __future__ import annotations

import io

import datasets
import numpy as np
import pytest
from PIL import Image

from trainers.data import ImageClassificationCollator, to_rgb



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
