"""Confusion heatmaps before and after training, side by side (paper Fig. 1), drawn with Pillow only."""

from __future__ import annotations

import os
from collections.abc import Sequence

from PIL import Image, ImageDraw, ImageFont


def _row_normalised(matrix):
    rows = []
    for row in matrix:
        total = sum(row)
        rows.append([value / total if total else 0.0 for value in row])
    return rows


def _colour(value: float) -> tuple[int, int, int]:
    """White (0) to dark blue (1)."""
    value = max(0.0, min(1.0, value))
    return (int(255 - 225 * value), int(255 - 180 * value), int(255 - 90 * value))


#: Largest side, in pixels, of a panel's grid: with many classes the cells shrink to fit (1000 classes at 36 px a cell
#: made a 36000 x 36000 panel, gigabytes of memory and minutes of drawing for a PNG no viewer opens).
MAX_GRID_SIZE = 2048
#: Smallest cell that still gets its row and column labels (the default font is about 11 px high).
MIN_LABELLED_CELL = 12


def _text(draw, xy, text: str, font, fill="black") -> None:
    """Draw `text` a word at a time with a visible gap between words: the default font's space is 2 px wide, which ran
    the words together ("zero-shotCLIP", "ankleboot")."""
    x, y = xy
    gap = font.getlength("n")
    for word in text.split(" "):
        if word:
            draw.text((x, y), word, fill=fill, font=font)
            x += font.getlength(word)
        x += gap


def _text_length(text: str, font) -> float:
    """Pixels `_text` takes for `text`."""
    words = text.split(" ")
    return sum(font.getlength(word) for word in words) + font.getlength("n") * (len(words) - 1)


def heatmap_cell_size(num_classes: int, cell: int = 36, max_grid: int = MAX_GRID_SIZE) -> int:
    """Side of one cell: `cell`, shrunk so that the grid stays within `max_grid` pixels (at least 1)."""
    return max(1, min(cell, max_grid // max(num_classes, 1)))


def draw_confusion_heatmap(matrix: Sequence[Sequence[int]], class_names: Sequence[str], title: str,
                           cell: int = 36, max_grid: int = MAX_GRID_SIZE) -> Image.Image:
    """One row-normalised confusion matrix as an image: rows are true classes, columns predictions, with the axis
    titles ("true class", "predicted class") and a colour bar (share of the row, 0 to 1).

    Cells are `cell` pixels wide with their counts written in; with more classes than `max_grid // cell` they shrink
    to fit `max_grid` pixels, the counts are left out, and below `MIN_LABELLED_CELL` pixels the class labels too.
    """
    size = len(class_names)
    full = heatmap_cell_size(size, cell, max_grid)
    if full == cell:
        panel, grid_box = _draw_full(matrix, class_names, title, cell)
    else:
        panel, grid_box = _draw_compact(matrix, class_names, title, full)
    return _with_axes_and_colour_bar(panel, grid_box)


#: Pixels added left of a panel (the rotated "true class"), below it ("predicted class") and right of it (colour bar).
AXIS_MARGIN, COLOUR_BAR_MARGIN = 18, 96
COLOUR_BAR_WIDTH = 14


def _with_axes_and_colour_bar(panel: Image.Image, grid_box: tuple[int, int, int, int]) -> Image.Image:
    """`panel` with its axis titles and a colour bar beside the grid (`grid_box`: left, top, right, bottom)."""
    font = ImageFont.load_default()
    left, top, right, bottom = grid_box
    canvas = Image.new("RGB", (panel.width + AXIS_MARGIN + COLOUR_BAR_MARGIN, panel.height + AXIS_MARGIN), "white")
    canvas.paste(panel, (AXIS_MARGIN, 0))
    draw = ImageDraw.Draw(canvas)
    title = "predicted class"
    _text(draw, (AXIS_MARGIN + (left + right) / 2 - _text_length(title, font) / 2, panel.height + 3), title, font)
    title = "true class"
    label = Image.new("RGB", (int(_text_length(title, font)) + 4, 12), "white")
    _text(ImageDraw.Draw(label), (2, 0), title, font)
    label = label.rotate(90, expand=True)
    canvas.paste(label, (3, max(0, (top + bottom) // 2 - label.height // 2)))
    bar_left = AXIS_MARGIN + panel.width + 8
    height = max(bottom - top, 2)
    for y in range(height):  # 1 at the top, 0 at the bottom, the grid's own colours
        draw.line([(bar_left, top + y), (bar_left + COLOUR_BAR_WIDTH - 1, top + y)], fill=_colour(1 - y / (height - 1)))
    draw.rectangle([bar_left, top, bar_left + COLOUR_BAR_WIDTH - 1, top + height - 1], outline="#888888")
    _text(draw, (bar_left + COLOUR_BAR_WIDTH + 4, top - 2), "1", font)
    _text(draw, (bar_left + COLOUR_BAR_WIDTH + 4, top + height - 10), "0", font)
    _text(draw, (bar_left + COLOUR_BAR_WIDTH + 4, top + height // 2 - 12), "share", font)
    _text(draw, (bar_left + COLOUR_BAR_WIDTH + 4, top + height // 2), "of row", font)
    return canvas


def _draw_full(matrix, class_names, title, cell):
    font = ImageFont.load_default()
    size = len(class_names)
    label_width = _label_width(class_names)
    top = 40
    width, height = label_width + size * cell + 10, top + size * cell + label_width + 12
    image = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(image)
    _text(draw, (label_width, 8), title, font)
    normalised = _row_normalised(matrix)
    for i in range(size):
        _text(draw, (4, top + i * cell + cell // 2 - 5), class_names[i], font)
        for j in range(size):
            x0, y0 = label_width + j * cell, top + i * cell
            draw.rectangle([x0, y0, x0 + cell - 1, y0 + cell - 1], fill=_colour(normalised[i][j]), outline="#dddddd")
            value = int(matrix[i][j])
            if value:
                ink = "white" if normalised[i][j] > 0.55 else "black"
                draw.text((x0 + 4, y0 + cell // 2 - 5), str(value), fill=ink, font=font)
    _draw_column_labels(image, class_names, label_width, top + size * cell + 4, cell, font)
    return image, (label_width, top, label_width + size * cell, top + size * cell)


def _label_width(class_names) -> int:
    """Pixels taken by the longest class name in the default font (about 7 px a character)."""
    return 8 + 7 * max(len(name) for name in class_names)


def _draw_column_labels(image, class_names, left, y, cell, font):
    label_width = _label_width(class_names)
    for j, name in enumerate(class_names):  # column labels, rotated, each ending at the grid
        label = Image.new("RGB", (label_width, 12), "white")
        _text(ImageDraw.Draw(label), (max(0, label_width - 4 - _text_length(name, font)), 0), name, font)
        label = label.rotate(90, expand=True)
        image.paste(label, (left + j * cell + cell // 2 - 6, y))


def _draw_compact(matrix, class_names, title, cell):
    """Many classes: the grid is one pixel per cell scaled up (no per-cell drawing), without counts."""
    font = ImageFont.load_default()
    size = len(class_names)
    labelled = cell >= MIN_LABELLED_CELL
    label_width = _label_width(class_names) if labelled else 8
    top = 40
    grid_size = size * cell
    width = max(label_width + grid_size + 10, 8 + 7 * (len(title) + 40))
    height = top + grid_size + (label_width + 12 if labelled else 10)
    image = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(image)
    note = "" if labelled else f" ({size} classes: labels left out; row i = true class i, column j = predicted j)"
    _text(draw, (label_width, 8), title + note, font)
    grid = Image.new("RGB", (size, size))
    grid.putdata([_colour(value) for row in _row_normalised(matrix) for value in row])
    image.paste(grid.resize((grid_size, grid_size), Image.NEAREST), (label_width, top))
    if labelled:
        for i in range(size):
            _text(draw, (4, top + i * cell + cell // 2 - 5), class_names[i], font)
        _draw_column_labels(image, class_names, label_width, top + grid_size + 4, cell, font)
    return image, (label_width, top, label_width + grid_size, top + grid_size)


def save_confusion_heatmaps(path: str, matrices, class_names, titles: Sequence[str]) -> str:
    """Write the heatmaps of `matrices` side by side to a PNG at `path` (atomically).

    `class_names`: one list for every matrix, or a list per matrix (e.g. base then novel classes)."""
    per_panel = class_names if class_names and not isinstance(class_names[0], str) else [class_names] * len(matrices)
    panels = [draw_confusion_heatmap(m, names, t) for m, names, t in zip(matrices, per_panel, titles)]
    canvas = Image.new("RGB", (sum(p.width for p in panels) + 20 * (len(panels) - 1), max(p.height for p in panels)), "white")
    x = 0
    for panel in panels:
        canvas.paste(panel, (x, 0))
        x += panel.width + 20
    tmp = f"{path}.tmp.png"
    canvas.save(tmp)
    os.replace(tmp, path)
    return path
