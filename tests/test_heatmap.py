"""trainers/heatmap.py: the before/after confusion heatmap stays a readable, bounded image with many classes."""

from __future__ import annotations

import pytest
from PIL import Image

from trainers.heatmap import _colour, draw_confusion_heatmap, save_confusion_heatmaps


def _matrix(num_classes):
    """5 right per class, 1 confused into the next class."""
    return [[5 if i == j else (1 if j == (i + 1) % num_classes else 0) for j in range(num_classes)]
            for i in range(num_classes)]


def test_few_classes_get_36_pixel_cells_with_labels():
    names = ["cat", "dog", "bird"]
    image = draw_confusion_heatmap(_matrix(3), names, "zero-shot")
    label_width, top = 8 + 7 * 4, 40
    assert image.size == (label_width + 3 * 36 + 10, top + 3 * 36 + label_width + 12)
    assert image.getpixel((label_width + 36 + 30, top + 36 + 2)) == _colour(5 / 6)  # row 1's diagonal cell
    assert image.getpixel((label_width + 2 * 36 + 30, top + 2)) == _colour(0.0)  # row 0, column 2: empty


@pytest.mark.parametrize("num_classes", [300, 1000])  # an ImageNet base split has 500, the cross-dataset source 1000
def test_many_classes_give_a_bounded_panel(tmp_path, num_classes):
    names = [f"n{i:08d} a long class name" for i in range(num_classes)]
    matrix = _matrix(num_classes)
    panel = draw_confusion_heatmap(matrix, names, "CAPT")
    assert max(panel.size) <= 2048 + 400, panel.size  # 36 px cells made 10800 (300) / 36000 (1000) px panels
    cell, left, top = 2048 // num_classes, 8, 40  # labels are left out at these sizes
    for i in (0, num_classes // 2, num_classes - 1):
        assert panel.getpixel((left + i * cell, top + i * cell)) == _colour(5 / 6)
        assert panel.getpixel((left + ((i + 2) % num_classes) * cell, top + i * cell)) == _colour(0.0)
    path = save_confusion_heatmaps(str(tmp_path / "heatmap.png"), [matrix, matrix], names, ["zero-shot", "CAPT"])
    with Image.open(path) as saved:
        assert saved.size == (2 * panel.width + 20, panel.height)
