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


def draw_confusion_heatmap(matrix: Sequence[Sequence[int]], class_names: Sequence[str], title: str,
                           cell: int = 36) -> Image.Image:
    """One row-normalised confusion matrix as an image: rows are true classes, columns predictions."""
    font = ImageFont.load_default()
    size = len(class_names)
    label_width = 8 + 7 * max(len(name) for name in class_names)
    top = 40
    width, height = label_width + size * cell + 10, top + size * cell + label_width + 12
    image = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(image)
    draw.text((label_width, 8), title, fill="black", font=font)
    normalised = _row_normalised(matrix)
    for i in range(size):
        draw.text((4, top + i * cell + cell // 2 - 5), class_names[i], fill="black", font=font)
        for j in range(size):
            x0, y0 = label_width + j * cell, top + i * cell
            draw.rectangle([x0, y0, x0 + cell - 1, y0 + cell - 1], fill=_colour(normalised[i][j]), outline="#dddddd")
            value = int(matrix[i][j])
            if value:
                ink = "white" if normalised[i][j] > 0.55 else "black"
                draw.text((x0 + 4, y0 + cell // 2 - 5), str(value), fill=ink, font=font)
    for j, name in enumerate(class_names):  # column labels, rotated
        label = Image.new("RGB", (label_width, 12), "white")
        ImageDraw.Draw(label).text((0, 0), name, fill="black", font=font)
        label = label.rotate(90, expand=True)
        image.paste(label, (label_width + j * cell + cell // 2 - 6, top + size * cell + 4))
    return image


def save_confusion_heatmaps(path: str, matrices, class_names: Sequence[str], titles: Sequence[str]) -> str:
    """Write the heatmaps of `matrices` side by side to a PNG at `path` (atomically)."""
    panels = [draw_confusion_heatmap(m, class_names, t) for m, t in zip(matrices, titles)]
    canvas = Image.new("RGB", (sum(p.width for p in panels) + 20 * (len(panels) - 1), max(p.height for p in panels)), "white")
    x = 0
    for panel in panels:
        canvas.paste(panel, (x, 0))
        x += panel.width + 20
    tmp = f"{path}.tmp.png"
    canvas.save(tmp)
    os.replace(tmp, path)
    return path
