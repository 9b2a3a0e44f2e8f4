"""PNG figures of the explain step (matplotlib's object API: no pyplot, so no global backend state).

Every figure is built from plain arrays and numbers (uint8 pictures, captions, counts) and returned as a matplotlib
``Figure`` for the caller to save; nothing here knows about W&B.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from matplotlib.figure import Figure
from torch import Tensor

__all__ = ["DPI", "SCALE", "confusion_figure", "gradcam_figure", "misclassified_figure", "tile_figure", "upscale"]

SCALE = 4  # display upscaling of the overlays (nearest neighbour): 32×32 → 128×128
DPI = 100  # of the PNG files
CAPTION_LINE = 16  # pixels per caption line in the picture grids
GRADCAM_ROWS = 16  # lines of image | CAM pred | CAM true per column group in gradcam.png

def upscale(picture: np.ndarray, scale: int = SCALE) -> np.ndarray:
    return picture.repeat(scale, axis=0).repeat(scale, axis=1)


Cell = tuple[np.ndarray, list[tuple[str, str]]] | None  # a picture and its caption lines (text, colour); None = blank


def tile_figure(cells: list[Cell], cols: int, title: str, group: int = 1) -> Figure:
    """Pictures of one size in a grid, row by row, each under its caption lines, drawn 1:1 at :data:`DPI`.

    The grid is composed as one uint8 canvas and drawn with a single ``imshow``: an axes per picture (256 of them
    for 64 mistakes) took ~10 s to lay out on a laptop CPU, this takes ~1 s. A wider gap follows every ``group``
    columns.
    """
    if not any(cells):
        fig = Figure(figsize=(5, 1), dpi=DPI)
        fig.text(0.5, 0.5, title, ha="center", va="center", fontsize=12)
        return fig
    height, width = next(cell for cell in cells if cell)[0].shape[:2]
    band = CAPTION_LINE * max(len(cell[1]) for cell in cells if cell) + 4
    lines = math.ceil(len(cells) / cols)
    gap, group_gap, top = 20, 28, 44

    def left(col: int) -> int:
        return gap + col * (width + gap) + (col // group) * group_gap

    canvas = np.full((top + lines * (band + height + gap), left(cols - 1) + width + gap, 3), 255, np.uint8)
    fig = Figure(figsize=(canvas.shape[1] / DPI, canvas.shape[0] / DPI), dpi=DPI)
    ax = fig.add_axes((0, 0, 1, 1))
    for i, cell in enumerate(cells):
        if cell is None:
            continue
        picture, captions = cell
        line, col = divmod(i, cols)
        x, y = left(col), top + line * (band + height + gap) + band
        canvas[y:y + height, x:x + width] = picture
        for j, (text, colour) in enumerate(captions):
            ax.text(x + width / 2, y - band + 2 + j * CAPTION_LINE, text, ha="center", va="top", fontsize=9,
                    color=colour)
    ax.imshow(canvas, interpolation="nearest")
    ax.set_axis_off()
    fig.text(0.5, 1 - 10 / canvas.shape[0], title, ha="center", va="top", fontsize=13)
    return fig


def misclassified_figure(rows: list[dict[str, Any]], mistakes: int) -> Figure:
    """The mistakes in a grid, each captioned with its true class (black) and prediction (red)."""
    cells = [(upscale(row["image"]), [(f"true: {row['true']}", "black"),
                                      (f"pred: {row['pred']} {row['confidence']:.2f}", "tab:red")]) for row in rows]
    title = f"{len(rows)} most confident mistakes (of {mistakes})" if rows else f"no mistakes shown (of {mistakes})"
    return tile_figure(cells, min(8, len(rows)), title)


def gradcam_figure(rows: list[dict[str, Any]], method: str, layers: list[str]) -> Figure:
    """Triples of image | CAM of the predicted class | CAM of the true class, up to GRADCAM_ROWS lines per group."""
    groups = math.ceil(len(rows) / GRADCAM_ROWS)
    lines = math.ceil(len(rows) / groups) if rows else 0
    cells: list[Cell] = []
    for line in range(lines):  # group g holds rows g * lines ... (g + 1) * lines - 1, top to bottom
        for group in range(groups):
            index = group * lines + line
            if index >= len(rows):
                cells += [None] * 3
                continue
            row = rows[index]
            true, pred = row["true"], row["pred"]
            cells += [
                (upscale(row["image"]), [(f"true: {true}", "black"), (f"pred: {pred}", "tab:red")]),
                (row["gradcam_pred"], [("CAM of pred", "tab:red"), (f"{pred} {row['confidence']:.2f}", "tab:red")]),
                (row["gradcam_true"], [("CAM of true", "tab:green"), (f"{true} {row['p_true']:.2f}", "tab:green")]),
            ]
    # one line per column group fits: the title must stay readable when there are only 16 rows (one group)
    title = f"{method} on {'+'.join(layers)}: image | pred | true" if rows else "no misclassified images to explain"
    return tile_figure(cells, 3 * groups, title, group=3)


def confusion_figure(counts: Tensor, classes: list[str], acc: float) -> Figure:
    """The row-normalized confusion matrix as a heat map; non-empty cells annotated in percent (up to 20 classes)."""
    totals = counts.sum(1, keepdim=True).clamp_min(1)
    rates = (counts / totals).numpy()
    size = len(classes)
    side = max(5.0, 0.55 * size + 2.5)
    fig = Figure(figsize=(side + 1.2, side), layout="constrained")
    ax = fig.subplots()
    image = ax.imshow(rates, cmap="Blues", vmin=0, vmax=1)
    fig.colorbar(image, ax=ax, fraction=0.046, label="fraction of the true class")
    ax.set_xticks(range(size), classes, rotation=45, ha="right")
    ax.set_yticks(range(size), classes)
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    ax.set_title(f"Confusion matrix (rows sum to 1) — accuracy {acc:.3f} on {int(counts.sum()):,} images")
    if size <= 20:
        for t, p in torch.nonzero(counts).tolist():
            ax.text(p, t, f"{100 * rates[t, p]:.0f}", ha="center", va="center", fontsize=8,
                        color="white" if rates[t, p] > 0.5 else "black")
    return fig
