"""trainers/heatmap.py: the before/after confusion heatmap stays a readable, bounded image with many classes."""

from __future__ import annotations

import pytest
from PIL import Image

from trainers.heatmap import AXIS_MARGIN, COLOUR_BAR_MARGIN, _colour, draw_confusion_heatmap, save_confusion_heatmaps

M = AXIS_MARGIN  # the panel's grid starts this far right of where it did before the axis titles


def _matrix(num_classes):
    """5 right per class, 1 confused into the next class."""
    return [[5 if i == j else (1 if j == (i + 1) % num_classes else 0) for j in range(num_classes)]
            for i in range(num_classes)]


def test_few_classes_get_36_pixel_cells_with_labels():
    names = ["cat", "dog", "bird"]
    image = draw_confusion_heatmap(_matrix(3), names, "zero-shot")
    label_width, top = 8 + 7 * 4, 40
    assert image.size == (M + label_width + 3 * 36 + 10 + COLOUR_BAR_MARGIN, top + 3 * 36 + label_width + 12 + M)
    assert image.getpixel((M + label_width + 36 + 30, top + 36 + 2)) == _colour(5 / 6)  # row 1's diagonal cell
    assert image.getpixel((M + label_width + 2 * 36 + 30, top + 2)) == _colour(0.0)  # row 0, column 2: empty


@pytest.mark.parametrize("num_classes", [300, 1000])  # an ImageNet base split has 500, the cross-dataset source 1000
def test_many_classes_give_a_bounded_panel(tmp_path, num_classes):
    names = [f"n{i:08d} a long class name" for i in range(num_classes)]
    matrix = _matrix(num_classes)
    panel = draw_confusion_heatmap(matrix, names, "CAPT")
    assert max(panel.size) <= 2048 + 400, panel.size  # 36 px cells made 10800 (300) / 36000 (1000) px panels
    cell, left, top = 2048 // num_classes, M + 8, 40  # labels are left out at these sizes
    for i in (0, num_classes // 2, num_classes - 1):
        assert panel.getpixel((left + i * cell, top + i * cell)) == _colour(5 / 6)
        assert panel.getpixel((left + ((i + 2) % num_classes) * cell, top + i * cell)) == _colour(0.0)
    path = save_confusion_heatmaps(str(tmp_path / "heatmap.png"), [matrix, matrix], names, ["zero-shot", "CAPT"])
    with Image.open(path) as saved:
        assert saved.size == (2 * panel.width + 20, panel.height)


def _ink_columns(image, box):
    """The x of every column of `box` (left, top, right, bottom) holding a dark pixel."""
    left, top, right, bottom = box
    return [x for x in range(left, right)
            if any(sum(image.getpixel((x, y))) < 384 for y in range(top, bottom))]


def test_titles_and_labels_keep_their_word_gaps():
    """The default font's space is 2 px wide: drawn as one string, "zero-shot CLIP" read as "zero-shotCLIP"."""
    image = draw_confusion_heatmap(_matrix(2), ["ankle boot", "bag"], "zero-shot CLIP")
    label_width = 8 + 7 * len("ankle boot")
    columns = _ink_columns(image, (M + label_width, 4, image.width - COLOUR_BAR_MARGIN, 24))  # the title's row
    gaps = [b - a - 1 for a, b in zip(columns, columns[1:]) if b - a > 1]
    assert max(gaps) >= 4, gaps  # the word gap; letters sit 1-2 px apart
    row_label = _ink_columns(image, (M, 40, M + label_width, 40 + 36))
    assert max(b - a - 1 for a, b in zip(row_label, row_label[1:])) >= 4


def test_column_labels_start_at_the_grid():
    """Each rotated column label ends next to the grid, however short it is (they hung a label's width below it)."""
    names = ["a", "a much longer class name"]
    image = draw_confusion_heatmap(_matrix(2), names, "CAPT")
    label_width, top, cell = 8 + 7 * len(names[1]), 40, 36
    grid_bottom = top + 2 * cell
    column = (M + label_width + cell // 2 - 6, grid_bottom, M + label_width + cell // 2 + 6, image.height)
    inked = [y for y in range(column[1], column[3])
             if any(sum(image.getpixel((x, y))) < 384 for x in range(column[0], column[2]))]
    assert inked and inked[0] - grid_bottom <= 10, inked[:3]


@pytest.mark.parametrize("num_classes", [3, 300])
def test_axis_titles_and_a_colour_bar(num_classes):
    """"true class" left of the rows, "predicted class" below the columns, and a colour bar from 1 (top) to 0."""
    names = [f"class {i}" for i in range(num_classes)]
    image = draw_confusion_heatmap(_matrix(num_classes), names, "CAPT")
    top = 40
    grid = 3 * 36 if num_classes == 3 else (2048 // num_classes) * num_classes
    assert _ink_columns(image, (0, top, M - 2, top + grid))  # the rotated "true class"
    assert _ink_columns(image, (M, image.height - M + 2, image.width - COLOUR_BAR_MARGIN, image.height))
    bar_x = image.width - COLOUR_BAR_MARGIN + 8 + 6
    assert image.getpixel((bar_x, top + 1)) == _colour(1 - 1 / (grid - 1))
    assert image.getpixel((bar_x, top + grid - 2)) == _colour(1 / (grid - 1))


def test_base_and_novel_panels_side_by_side(tmp_path):
    base, novel = ["cat", "dog", "bird"], ["cow", "horse"]
    path = save_confusion_heatmaps(str(tmp_path / "h.png"), [_matrix(3), _matrix(3), _matrix(2), _matrix(2)],
                                   [base, base, novel, novel], ["a", "b", "c", "d"])
    widths = [draw_confusion_heatmap(_matrix(len(n)), n, "a").width for n in (base, base, novel, novel)]
    with Image.open(path) as saved:
        assert saved.width == sum(widths) + 3 * 20
