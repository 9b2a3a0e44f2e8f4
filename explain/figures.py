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

__all__ = ["DPI", "MAX_MATRIX_CLASSES", "PNG_ROWS", "SCALE", "cam_methods_figure", "confusion_figure",
           "faithfulness_figure", "gradcam_figure", "images_figure", "misclassified_figure", "most_confused_classes",
           "probes_figure", "sanity_figure", "tile_figure", "upscale"]

SCALE = 4  # display upscaling of the overlays (nearest neighbour): 32×32 → 128×128
DPI = 100  # of the PNG files
CAPTION_LINE = 16  # pixels per caption line in the picture grids
GRADCAM_ROWS = 16  # lines of image | CAM pred | CAM true per column group in gradcam.png
PNG_ROWS = 64  # mistakes drawn in misclassified.png and gradcam.png (the W&B table holds all of them)
MAX_MATRIX_CLASSES = 50  # classes drawn in confusion_matrix.png: the most confused ones beyond this
RIGHT, WRONG = "tab:green", "tab:red"

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

    wide = max(left(cols - 1) + width + gap, 8 * len(title) + 2 * gap)  # the title fits over a narrow grid
    canvas = np.full((top + lines * (band + height + gap), wide, 3), 255, np.uint8)
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
    """The mistakes (the first :data:`PNG_ROWS`) in a grid, captioned with true class (black) and prediction (red)."""
    rows = rows[:PNG_ROWS]
    cells = [(upscale(row["image"]), [(f"true: {row['true']}", "black"),
                                      (f"pred: {row['pred']} {row['confidence']:.2f}", "tab:red")]) for row in rows]
    title = f"{len(rows)} most confident mistakes (of {mistakes})" if rows else f"no mistakes shown (of {mistakes})"
    return tile_figure(cells, min(8, len(rows)), title)


def gradcam_figure(rows: list[dict[str, Any]], method: str, layers: list[str]) -> Figure:
    """Triples of image | CAM of the predicted class | CAM of the true class, up to GRADCAM_ROWS lines per group
    (the first :data:`PNG_ROWS` mistakes)."""
    rows = rows[:PNG_ROWS]
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


def most_confused_classes(counts: Tensor, limit: int = MAX_MATRIX_CLASSES) -> Tensor:
    """The ``limit`` classes in the most mistakes (as true or predicted class), in label order; all when fewer."""
    if len(counts) <= limit:
        return torch.arange(len(counts))
    off = counts.clone()
    off.fill_diagonal_(0)
    involvement = off.sum(0) + off.sum(1)
    return torch.sort(torch.topk(involvement, limit, sorted=False).indices).values


def confusion_figure(counts: Tensor, classes: list[str], acc: float) -> Figure:
    """The row-normalized confusion matrix as a heat map; non-empty cells annotated in percent (up to 20 classes).

    Beyond :data:`MAX_MATRIX_CLASSES` classes only the most confused ones are drawn (their rows and columns), so a
    1,000-class data set gives a readable figure of bounded size, not a 550-inch one.
    """
    shown = most_confused_classes(counts)
    totals = counts.sum(1, keepdim=True).clamp_min(1)
    rates = (counts / totals)[shown][:, shown].numpy()
    names = [classes[i] for i in shown.tolist()]
    size = len(names)
    side = max(5.0, 0.55 * size + 2.5)
    fig = Figure(figsize=(side + 1.2, side), layout="constrained")
    ax = fig.subplots()
    image = ax.imshow(rates, cmap="Blues", vmin=0, vmax=1)
    fig.colorbar(image, ax=ax, fraction=0.046, label="fraction of the true class")
    ax.set_xticks(range(size), names, rotation=45, ha="right")
    ax.set_yticks(range(size), names)
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    which = f"the {size} most confused of {len(classes):,} classes; " if size < len(classes) else ""
    ax.set_title(f"Confusion matrix (rows sum to 1; {which}accuracy {acc:.3f} on {int(counts.sum()):,} images)")
    if size <= 20:
        for t, p in np.argwhere(rates > 0).tolist():
            ax.text(p, t, f"{100 * rates[t, p]:.0f}", ha="center", va="center", fontsize=8,
                    color="white" if rates[t, p] > 0.5 else "black")
    return fig


def faithfulness_figure(result: dict[str, Any], method: str) -> Figure:
    """Mean deletion and insertion curves of the maps against a random pixel order, AUCs in the legends."""
    fig = Figure(figsize=(10, 4), layout="constrained")
    fractions = result["fractions"]
    for ax, name, better in zip(fig.subplots(1, 2), ("deletion", "insertion"), ("lower", "higher"), strict=True):
        for suffix, label, style in (("", method, "-"), ("_random", "random order", "--")):
            ax.plot(fractions, result[name + suffix].mean(0).numpy(), style, marker="o", markersize=3,
                    label=f"{label} (AUC {result[f'{name}_auc{suffix}']:.3f})")
        ax.set_xlabel(f"fraction of pixels {'removed' if name == 'deletion' else 'put back'}, most salient first")
        ax.set_ylabel("probability of the explained class")
        ax.set_ylim(0, 1)
        ax.set_title(f"{name.capitalize()} ({better} AUC = more faithful), {len(result[name])} images")
        ax.legend()
    return fig


def sanity_figure(pictures: np.ndarray, overlays: list[np.ndarray], stages: list[str],
                  rank_corr: np.ndarray) -> Figure:
    """Per image (rows): the image, its CAM, and the CAM after each cascade stage of the randomization test.

    Args:
        pictures: uint8 ``[k, h, w, 3]`` images (display size).
        overlays: One uint8 ``[k, h, w, 3]`` array per column: the original CAM, then one per stage.
        stages: Stage names, top first.
        rank_corr: ``[stages, k]`` Spearman rank correlation of each image's map with its original.
    """
    cells: list[Cell] = []
    for i in range(len(pictures)):
        cells.append((pictures[i], [("image", "black"), ("", "black")]))
        cells.append((overlays[0][i], [("CAM", "black"), ("original", "black")]))
        for s, stage in enumerate(stages):
            corr = float(rank_corr[s, i])
            cells.append((overlays[s + 1][i], [(f"+ {stage} random", "black"),
                                               (f"rank corr {corr:.2f}", RIGHT if corr < 0.5 else WRONG)]))
    title = "Randomization test: the CAM as the model is re-initialized from the top (it should change)"
    return tile_figure(cells, len(stages) + 2, title)


def probes_figure(rows: list[list[tuple[np.ndarray, str, bool]]], labels: list[str], epochs: list[int]) -> Figure:
    """Probe images (rows) over epochs (columns): each cell the CAM of the true class and ``p_true``, green when the
    prediction is right, red when wrong.

    Args:
        rows: Per probe, per shown epoch: ``(overlay uint8 [h, w, 3], caption, right)``.
        labels: Per probe, the row's label (index and class).
        epochs: The shown epochs.
    """
    cells: list[Cell] = []
    for label, row in zip(labels, rows, strict=True):
        for column, (picture, caption, right) in enumerate(row):
            head = label if column == 0 else ""
            cells.append((picture, [(head, "black"), (caption, RIGHT if right else WRONG)]))
    title = "Probe images by epoch: CAM of the true class"
    return tile_figure(cells, max(len(epochs), 1), title)


def cam_methods_figure(pictures: np.ndarray, overlays: dict[str, np.ndarray], captions: list[str]) -> Figure:
    """The same images (rows) under each CAM method (columns)."""
    cells: list[Cell] = []
    for i in range(len(pictures)):
        cells.append((pictures[i], [(captions[i], "black")]))
        cells += [(maps[i], [(method, "black")]) for method, maps in overlays.items()]
    return tile_figure(cells, len(overlays) + 1, "CAM methods on the same images (most faithful first)")


def images_figure(thumbnails: list[np.ndarray], inputs: np.ndarray, overlays: np.ndarray,
                  captions: list[list[str]]) -> Figure:
    """Per image: the original (thumbnail) | what the model sees (32×32, upscaled) | the CAM overlay."""
    cells: list[Cell] = []
    for thumb, picture, overlay, lines in zip(thumbnails, inputs, overlays, captions, strict=True):
        cells += [(thumb, [(lines[0], "black"), ("original", "black")]),
                  (picture, [(lines[1], "black"), ("model input", "black")]),
                  (overlay, [(lines[2], "black"), ("CAM", "black")])]
    return tile_figure(cells, 3, "Your images: original | model input | CAM")
