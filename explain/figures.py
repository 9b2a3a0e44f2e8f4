"""PNG figures of the explain step (matplotlib's object API: no pyplot, so no global backend state).

Every figure is built from plain arrays and numbers (uint8 pictures, captions, counts) and returned as a matplotlib
``Figure`` for the caller to save; nothing here knows about W&B.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import torch
from matplotlib import colormaps
from matplotlib.figure import Figure
from matplotlib.textpath import TextPath
from torch import Tensor

__all__ = ["ALPHA", "CAM_ROWS", "COLORMAP", "DPI", "MAX_MATRIX_CLASSES", "PAGE_HEIGHT", "PNG_ROWS", "SCALE",
           "cam_grid_figure", "cam_methods_figure", "confusion_figure", "faithfulness_figure", "images_figure",
           "label_issues_figure", "misclassified_figure", "most_confused_classes", "page_paths", "probes_figure",
           "sanity_figure", "save_pages", "tile_figure", "tile_pages", "upscale"]

SCALE = 4  # display upscaling of the overlays (nearest neighbour): 32×32 → 128×128
DPI = 100  # of the PNG files
CAPTION_LINE = 16  # pixels per caption line in the picture grids
CAM_TRIPLES = 3  # mistakes per row of the CAM grid (9 pictures: ~1,400 px, a laptop screen's width)
NOTE_LINE = 16  # pixels per legend line under a grid's title
COLORMAP = "jet"  # of every CAM overlay (the reports draw them with it, the colour bars show it)
ALPHA = 0.5  # weight of the heat layer in the overlays
PNG_ROWS = 64  # mistakes drawn in misclassified.png (the W&B table holds all of them)
CAM_ROWS = 32  # mistakes drawn in the CAM grid (gradcam.png: 11 rows of 3, two pages; the W&B table holds every CAM)
MAX_MATRIX_CLASSES = 50  # classes drawn in confusion_matrix.png: the most confused ones beyond this
# px: a long grid is split into pages of at most this height. 900 (a laptop screen 1:1) made a 3-epoch run write 17
# PNGs, 6 of them CAM pages; at 1,400 a page fitted to a laptop screen still shows 128 px pictures at ~80 px.
PAGE_HEIGHT = 1400
PROBE_ROW_CELLS = 10  # probes.png: as many probes side by side as fit in 10 pictures (2 for runs of up to 4 epochs)
MISTAKE_COLUMNS = 10  # misclassified.png: 64 mistakes in 7 rows of 10 (~1,500 px wide), one page
GRID_GAP = 20  # px between the pictures of a grid and around it
RIGHT, WRONG = "tab:green", "tab:red"

def upscale(picture: np.ndarray, scale: int = SCALE) -> np.ndarray:
    return picture.repeat(scale, axis=0).repeat(scale, axis=1)


Cell = tuple[np.ndarray, list[tuple[str, str]]] | None  # a picture and its caption lines (text, colour); None = blank


def tile_figure(cells: list[Cell], cols: int, title: str, group: int = 1,
                notes: list[tuple[str, str]] = (), colorbar: str | None = None) -> Figure:
    """Pictures of one size in a grid, row by row, each under its caption lines, drawn 1:1 at :data:`DPI`.

    The grid is composed as one uint8 canvas and drawn with a single ``imshow``: an axes per picture (256 of them
    for 64 mistakes) took ~10 s to lay out on a laptop CPU, this takes ~1 s. A wider gap follows every ``group``
    columns. ``notes`` are lines ``(text, colour)`` under the title (a legend); ``colorbar`` names the colour map of
    the overlays, drawn once under the title as a low → high strip.
    """
    if not any(cells):
        fig = Figure(figsize=(5, 1), dpi=DPI)
        fig.text(0.5, 0.5, title, ha="center", va="center", fontsize=12)
        return fig
    height, width = next(cell for cell in cells if cell)[0].shape[:2]
    bar_top, top, band, row = _grid_geometry(cells, list(notes), colorbar)
    lines = math.ceil(len(cells) / cols)
    gap, group_gap = GRID_GAP, 28

    def left(col: int) -> int:
        return gap + col * (width + gap) + (col // group) * group_gap

    text_width = max([text_pixels(title, 13)] + [text_pixels(text, 10) for text, _ in notes])  # they fit
    grid = left(cols - 1) + width + gap
    wide = int(max(grid, text_width + 2 * gap, 660 if colorbar else 0))
    shift = (wide - grid) // 2  # a grid narrower than its title stands in the middle
    canvas = np.full((top + lines * row, wide, 3), 255, np.uint8)
    fig = Figure(figsize=(canvas.shape[1] / DPI, canvas.shape[0] / DPI), dpi=DPI)
    ax = fig.add_axes((0, 0, 1, 1))
    for i, cell in enumerate(cells):
        if cell is None:
            continue
        picture, captions = cell
        line, col = divmod(i, cols)
        x, y = shift + left(col), top + line * row + band
        canvas[y:y + height, x:x + width] = picture
        for j, (text, colour) in enumerate(captions):
            ax.text(x + width / 2, y - band + 2 + j * CAPTION_LINE, text, ha="center", va="top", fontsize=9,
                    color=colour)
    for j, (text, colour) in enumerate(notes):
        ax.text(wide / 2, 38 + j * NOTE_LINE, text, ha="center", va="top", fontsize=10, color=colour)
    if colorbar:
        strip = (colormaps[colorbar](np.linspace(0, 1, 256))[:, :3] * 255).astype(np.uint8)
        x0 = (wide - 256) // 2
        canvas[bar_top + 4:bar_top + 16, x0:x0 + 256] = strip[None]
        ax.text(x0 - 8, bar_top + 10, "CAM (scaled per map): low", ha="right", va="center", fontsize=9)
        ax.text(x0 + 264, bar_top + 10, "high", ha="left", va="center", fontsize=9)
    ax.imshow(canvas, interpolation="nearest")
    ax.set_axis_off()
    fig.text(0.5, 1 - 10 / canvas.shape[0], title, ha="center", va="top", fontsize=13)
    return fig


def text_pixels(text: str, fontsize: float) -> float:
    """The width of one line of ``text`` at ``fontsize`` points in pixels at :data:`DPI`, from the font's glyphs
    (a guess of 8 px a character put a 97-character title 1 px from the picture's edges)."""
    return TextPath((0, 0), text, size=fontsize).get_extents().width * DPI / 72


def _grid_geometry(cells: list[Cell], notes: list[tuple[str, str]],
                   colorbar: str | None) -> tuple[int, int, int, int]:
    """A grid's vertical layout in pixels, shared by :func:`tile_figure` (which draws it) and :func:`tile_pages`
    (which splits it): where the colour bar goes, the top margin, a row's caption band and a whole row's height."""
    height = next(cell for cell in cells if cell)[0].shape[0]
    band = CAPTION_LINE * max(len(cell[1]) for cell in cells if cell) + 4
    bar_top = 40 + NOTE_LINE * len(notes)
    return bar_top, bar_top + (34 if colorbar else 12), band, band + height + GRID_GAP


def tile_pages(cells: list[Cell], cols: int, title: str, group: int = 1, notes: list[tuple[str, str]] = (),
               colorbar: str | None = None, page_height: int = PAGE_HEIGHT) -> list[Figure]:
    """:func:`tile_figure`, split into pages of whole rows, each at most ``page_height`` pixels tall (at least one
    row a page) and titled "page k of n" when there are several: a 64-mistake CAM grid on one page was 4,400 px
    tall, unreadable when fitted to a screen."""
    if not any(cells):
        return [tile_figure(cells, cols, title, group, notes, colorbar)]
    _, top, _, row = _grid_geometry(cells, list(notes), colorbar)
    per_page = cols * max(1, (page_height - top) // row)
    chunks = [cells[i:i + per_page] for i in range(0, len(cells), per_page)]
    return [tile_figure(chunk, cols, title + (f" (page {k} of {len(chunks)})" if len(chunks) > 1 else ""), group,
                        notes, colorbar) for k, chunk in enumerate(chunks, 1)]


def page_paths(path: Path, pages: int) -> list[Path]:
    """Where the pages of a picture go: ``gradcam.png``, then ``gradcam-2.png``, ``gradcam-3.png``, ..."""
    return [path] + [path.with_name(f"{path.stem}-{k}{path.suffix}") for k in range(2, pages + 1)]


def save_pages(pages: list[Figure], path: str | Path) -> list[str]:
    """Save the pages (:func:`page_paths`) and remove any later page an earlier run left under the same name (a
    finish redone by ``--resume``); returns the files written, the first one ``path``."""
    paths = page_paths(Path(path), len(pages))
    for page, file in zip(pages, paths, strict=True):
        page.savefig(file, dpi=DPI)
    k = len(pages) + 1
    while (stale := page_paths(Path(path), k)[-1]).is_file():
        stale.unlink()
        k += 1
    return [str(file) for file in paths]


def misclassified_figure(rows: list[dict[str, Any]], mistakes: int) -> list[Figure]:
    """The mistakes (the first :data:`PNG_ROWS`) in a grid of :data:`MISTAKE_COLUMNS`, captioned with true class
    (black) and prediction (red); pages of :data:`PAGE_HEIGHT`."""
    rows = rows[:PNG_ROWS]
    cells = [(upscale(row["image"]), [(f"true: {row['true']}", "black"),
                                      (f"pred: {row['pred']} {row['confidence']:.2f}", "tab:red")]) for row in rows]
    title = f"{len(rows)} most confident mistakes (of {mistakes})" if rows else f"no mistakes shown (of {mistakes})"
    return tile_pages(cells, min(MISTAKE_COLUMNS, len(rows)), title)


def cam_grid_figure(rows: list[dict[str, Any]], method: str, layers: list[str]) -> list[Figure]:
    """The CAMs of the mistakes (the first :data:`CAM_ROWS`), read row by row like ``misclassified.png``: each
    mistake a triple image | CAM of the prediction | CAM of the true class, :data:`CAM_TRIPLES` triples a row, one
    colour bar; pages of :data:`PAGE_HEIGHT`."""
    rows = rows[:CAM_ROWS]
    cells: list[Cell] = []
    for row in rows:
        true, pred = row["true"], row["pred"]
        cells += [
            (upscale(row["image"]), [(f"true: {true}", "black"), (f"pred: {pred}", WRONG)]),
            (row["gradcam_pred"], [("CAM of pred", WRONG), (f"p({pred}) = {row['confidence']:.2f}", WRONG)]),
            (row["gradcam_true"], [("CAM of true", RIGHT), (f"p({true}) = {row['p_true']:.2f}", RIGHT)]),
        ]
    if not rows:
        return [tile_figure([], 1, "no misclassified images to explain")]
    title = f"{method} on {'+'.join(layers)}: the {len(rows)} most confident mistakes"
    notes = [("each mistake: image | CAM of the predicted class | CAM of the true class; p(class) = the model's "
              "probability of that class", "black")]
    return tile_pages(cells, 3 * min(CAM_TRIPLES, len(rows)), title, group=3, notes=notes, colorbar=COLORMAP)


def most_confused_classes(counts: Tensor, limit: int = MAX_MATRIX_CLASSES) -> Tensor:
    """The ``limit`` classes in the most mistakes (as true or predicted class), in label order; all when fewer."""
    if len(counts) <= limit:
        return torch.arange(len(counts))
    off = counts.clone()
    off.fill_diagonal_(0)
    involvement = off.sum(0) + off.sum(1)
    return torch.sort(torch.topk(involvement, limit, sorted=False).indices).values


def confusion_figure(counts: Tensor, classes: list[str], acc: float, acc_tta: float | None = None) -> Figure:
    """The row-normalized confusion matrix as a heat map in percent of each true class, colour bar and cells alike;
    non-empty cells annotated (up to 20 classes; "<1" where a cell holds under half a percent).

    Beyond :data:`MAX_MATRIX_CLASSES` classes only the most confused ones are drawn (their rows and columns), so a
    1,000-class data set gives a readable figure of bounded size, not a 550-inch one.
    """
    shown = most_confused_classes(counts)
    totals = counts.sum(1, keepdim=True).clamp_min(1)
    rates = 100 * (counts / totals)[shown][:, shown].numpy()  # percent, as the cells are written
    names = [classes[i] for i in shown.tolist()]
    size = len(names)
    side = max(5.0, 0.55 * size + 2.5)
    fig = Figure(figsize=(side + 1.2, side), layout="constrained")
    ax = fig.subplots()
    image = ax.imshow(rates, cmap="Blues", vmin=0, vmax=100)
    fig.colorbar(image, ax=ax, fraction=0.046, label="% of the true class")
    ax.set_xticks(range(size), names, rotation=45, ha="right")
    ax.set_yticks(range(size), names)
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    which = f"the {size} most confused of {len(classes):,} classes; " if size < len(classes) else ""
    tta = f", {acc_tta:.4f} with flip TTA (val/acc)" if acc_tta is not None else ""
    ax.set_title(f"Confusion matrix of single-pass predictions (% of each true class; {which}{int(counts.sum()):,} "
                 f"images)\n"
                 f"accuracy {acc:.4f} single pass{tta}", fontsize=11)
    if size <= 20:
        for t, p in np.argwhere(rates > 0).tolist():
            ax.text(p, t, f"{rates[t, p]:.0f}" if rates[t, p] >= 0.5 else "<1", ha="center", va="center",
                    fontsize=8, color="white" if rates[t, p] > 50 else "black")
    return fig


def _interval(values: Any) -> str:
    return f"[{values[0]:.3f}, {values[1]:.3f}]"


def _verdict_colour(verdict: str) -> str:
    return {"faithful": RIGHT, "not faithful": WRONG}.get(verdict, "tab:orange")


def faithfulness_figure(result: dict[str, Any], bands: dict[str, np.ndarray], figures: dict[str, Any],
                        method: str) -> Figure:
    """Deletion and insertion, one column each. Top: the mean curves of the maps and of smooth random maps (the
    null). Bottom: what the verdict rests on, the paired per-image difference (the map's gain over the random map on
    the same image, at each fraction) with its 95 % band (studentized bootstrap over the images), and at its right the
    gain — the mean height of that curve, its AUC — with its interval against the smallest gain that matters.

    Two unpaired bands (each curve's own) overlap even where every image gains: the spread between images is shared
    by both curves and cancels in the paired difference, so only the difference's band says anything.

    Args:
        result: :func:`explain.trust.deletion_insertion`'s curves.
        bands: ``deletion`` and ``insertion``: the ``[2, steps + 1]`` interval of the paired difference curve
            (random − map for deletion, map − random for insertion; :func:`explain.trust.bootstrap_interval`).
        figures: :func:`explain.trust.trust_figures`' figures (gains, intervals, verdict, borderline).
        method: The CAM method's name.
    """
    from explain.trust import COVERAGE, SMALLEST_GAIN, SURVIVES, borderline_words

    fig = Figure(figsize=(11, 8.5), layout="constrained")
    fractions = np.asarray(result["fractions"], dtype=float)
    resolution = result.get("null_resolution") or figures.get("null_resolution")
    null = f"random maps ({resolution[0]}×{resolution[1]} noise, upsampled)" if resolution else "random maps"
    axes = fig.subplots(2, 2, height_ratios=(1, 1.15))
    for column, name, better in zip(range(2), ("deletion", "insertion"), ("lower", "higher"), strict=True):
        top, bottom = axes[0, column], axes[1, column]
        for suffix, label, style, colour in (("", method, "-", "tab:blue"), ("_random", null, "--", "tab:gray")):
            auc = f"{name}_auc{suffix}"
            top.plot(fractions, result[name + suffix].mean(0).numpy(), style, marker="o", markersize=3,
                     color=colour, label=f"{label}: AUC {figures[auc]:.3f}")
        top.set_ylabel("mean probability\nof the explained class")
        top.set_xlabel(f"fraction of pixels {'removed' if name == 'deletion' else 'put back'}, most salient first")
        top.set_title(f"{name.capitalize()} ({better} AUC = more faithful)", fontsize=11)
        top.legend(fontsize=9, loc="best", title="mean over the images", title_fontsize=8)
        # the paired difference: the gain per image at each fraction, its mean and band
        sign = 1.0 if name == "insertion" else -1.0
        difference = sign * (result[name] - result[name + "_random"]).mean(0).numpy()
        band = np.asarray(bands[name], dtype=float)
        bottom.fill_between(fractions, band[0], band[1], color="tab:blue", alpha=0.25, linewidth=0,
                            label="its 95% interval (paired over the images)")
        bottom.plot(fractions, difference, "-", marker="o", markersize=3, color="tab:blue",
                    label="mean gain per image at each fraction")
        bottom.axhline(0.0, color="black", linewidth=0.8)
        bottom.axhline(SMALLEST_GAIN, color="tab:gray", linestyle=":", linewidth=1.2,
                       label=f"smallest gain that matters ({SMALLEST_GAIN})")
        gain, (low, high) = figures[f"{name}_gain"], figures[f"{name}_gain_ci"]
        colour = RIGHT if low > SMALLEST_GAIN else WRONG if high < SMALLEST_GAIN else "tab:orange"
        x = fractions[-1] + 0.08 * (fractions[-1] - fractions[0])
        bottom.errorbar([x], [gain], yerr=[[gain - low], [high - gain]], fmt="D", color=colour, capsize=5,
                        markersize=6, label=f"the gain (the curve's mean height, its AUC) {gain:.3f} "
                                            f"{_interval((low, high))}")
        bottom.set_xlim(fractions[0] - 0.03, x + 0.06)
        bottom.set_xlabel(f"fraction of pixels {'removed' if name == 'deletion' else 'put back'}")
        bottom.set_ylabel(f"{'random − map' if name == 'deletion' else 'map − random'}\n(the map's gain)")
        bottom.set_title(f"{name} gain over the random maps, paired per image", fontsize=11)
        bottom.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.2))
    verdict, close = figures["trust_verdict"], borderline_words(figures)
    notes = [f"a gain counts when its 95% interval lies above {SMALLEST_GAIN} ({COVERAGE})",
             f"randomization {figures['sanity_result']} at {figures['sanity_stage']}: rank corr "
             f"{figures['sanity_rank_corr']:.2f} {_interval(figures['sanity_rank_corr_ci'])} (every stage below "
             f"{SURVIVES} passes)"] + ([close] if close else [])
    fig.suptitle(f"{method} on {figures['trust_images']} images: {verdict}{', borderline' if close else ''}"
                 + "\n" * (len(notes) + 1), fontsize=13, color="tab:orange" if close else _verdict_colour(verdict))
    fig.text(0.5, 1 - 0.5 / 8.5, "\n".join(notes), ha="center", va="top", fontsize=9)  # under the title's line
    return fig


def sanity_figure(pictures: np.ndarray, overlays: list[np.ndarray], stages: list[str], rank_corr: np.ndarray,
                  figures: dict[str, Any]) -> Figure:
    """Per image (rows): the image, its CAM, and the CAM after each cascade stage of the randomization test, with a
    legend of the colour threshold, each stage's mean rank correlation with its interval over all the images, and
    which stage decided the check.

    Args:
        pictures: uint8 ``[k, h, w, 3]`` images (display size).
        overlays: One uint8 ``[k, h, w, 3]`` array per column: the original CAM, then one per stage.
        stages: Stage names, top first.
        rank_corr: ``[stages, k]`` Spearman rank correlation of each shown image's map with its original.
        figures: :func:`explain.trust.trust_figures`' figures (per-stage means and intervals, the check's result).
    """
    from explain.trust import COVERAGE, SURVIVES

    cells: list[Cell] = []
    for i in range(len(pictures)):
        cells.append((pictures[i], [("image", "black"), ("", "black")]))
        cells.append((overlays[0][i], [("CAM", "black"), ("original", "black")]))
        for s, stage in enumerate(stages):
            corr = float(rank_corr[s, i])
            cells.append((overlays[s + 1][i], [(f"+ {stage} random", "black"),
                                               (f"rank corr {corr:.2f}", RIGHT if corr < SURVIVES else WRONG)]))
    means = "  ".join(f"{stage} {corr:.2f} {_interval(ci)}" for stage, corr, ci in zip(
        stages, figures["sanity_rank_corr_per_stage"], figures["sanity_rank_corr_ci_per_stage"], strict=True))
    notes = [(f"green: rank corr below {SURVIVES}, the map changed as the model was destroyed (as it should); red: "
              f"{SURVIVES} or more, it survived, so it shows the image more than the model", "black"),
             (f"mean rank corr over all {figures['trust_images']} images after each stage, 95% interval "
              f"({COVERAGE}):", "black"),
             (means, "black")]
    result, stage = figures["sanity_result"], figures["sanity_stage"]
    why = {"passes": f"every stage's interval is below {SURVIVES}, from the head on; closest at {stage}",
           "fails": f"the interval at {stage} lies above {SURVIVES}: the maps survive randomizing down to it",
           }.get(result, f"the interval at {stage} straddles {SURVIVES}: more images are needed")
    notes.append((f"the check {result}: {why} {_interval(figures['sanity_rank_corr_ci'])}",
                  RIGHT if result == "passes" else WRONG if result == "fails" else "tab:orange"))
    title = "Randomization test: the CAM as the model is re-initialized from the top (it should change at once)"
    return tile_figure(cells, len(stages) + 2, title, notes=notes)


def probes_figure(rows: list[list[tuple[np.ndarray, int, str, float, bool]]], pictures: np.ndarray,
                  labels: list[str]) -> list[Figure]:
    """Probe images (rows): the plain image, then per shown epoch the CAM of the true class with the epoch's
    predicted class and ``p_true``, green when the prediction is right, red when wrong; pages of
    :data:`PAGE_HEIGHT`.

    Args:
        rows: Per probe, per shown epoch: ``(overlay uint8 [h, w, 3], epoch, predicted class, p_true, right)``.
        pictures: uint8 ``[P, h, w, 3]`` plain probe images (display size).
        labels: Per probe, the row's label (index and class).
    """
    cells: list[Cell] = []
    for label, picture, row in zip(labels, pictures, rows, strict=True):
        cells.append((picture, [(label, "black"), ("image", "black"), ("", "black")]))
        for overlay, epoch, pred, p_true, right in row:
            colour = RIGHT if right else WRONG
            cells.append((overlay, [(f"epoch {epoch}", "black"), (f"pred {pred}", colour),
                                    (f"p_true {p_true:.2f}", colour)]))
    title = "Probe images by epoch: CAM of the true class, the predicted class and p(true class)"
    per_probe = 1 + max((len(row) for row in rows), default=0)
    side_by_side = max(1, PROBE_ROW_CELLS // per_probe)  # a short run's probes two a row: half the pages
    return tile_pages(cells, per_probe * side_by_side, title, group=per_probe, colorbar=COLORMAP)


def cam_methods_figure(pictures: np.ndarray, overlays: dict[str, np.ndarray],
                       headings: list[tuple[str, str, str]], captions: list[tuple[str, bool]],
                       images: int) -> Figure:
    """The same images (columns, each under its test index, class and the model's prediction) under each CAM method
    (rows, each headed on the left by the method, the methods its paired differences place it above, and its trust
    verdict: ``headings`` ``(method, above, verdict)``), with the colour bar and how the ranking was made.

    Args:
        pictures: uint8 ``[k, h, w, 3]`` images (display size).
        overlays: Per method (in ``headings``' order), uint8 ``[k, h, w, 3]`` overlays of the same images.
        captions: Per image ``(text, right)``: e.g. ``("#1234 cat\npred dog", False)``; red when ``right`` is False.
        images: How many images were compared in all (the figures rest on all of them).
    """
    rows, cols = len(overlays) + 1, len(pictures)
    left, column, head, row = 2.3, 1.6, 1.55, 1.4  # inches: the headings, an image's column, the title, a row
    width, height = left + column * cols, head + row * rows
    fig = Figure(figsize=(width, height), dpi=DPI)
    axes = fig.add_gridspec(rows, cols, left=left / width, right=1 - 0.1 / width, top=1 - head / height,
                            bottom=0.1 / height, hspace=0.1, wspace=0.1).subplots(squeeze=False)
    for r, pixels in enumerate([pictures, *overlays.values()]):
        for c in range(cols):
            ax = axes[r, c]
            ax.imshow(pixels[c], interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                text, right = captions[c]
                ax.set_title(text, fontsize=9, color="black" if right else WRONG)
        label = [("the images", "black", "")] if r == 0 else \
            [(headings[r - 1][0], "black", "bold"), (headings[r - 1][1], "black", ""),
             (headings[r - 1][2], _verdict_colour(headings[r - 1][2]), "")]
        for j, (text, colour, weight) in enumerate(label):
            axes[r, 0].text(-0.08, 0.5 + (len(label) / 2 - 0.5 - j) * 0.18, text, transform=axes[r, 0].transAxes,
                            ha="right", va="center", fontsize=10, color=colour, fontweight=weight or "normal")
    fig.suptitle("CAM methods on the same images", fontsize=13, y=1 - 0.1 / height)
    fig.text(0.5, 1 - 0.45 / height,
             f"{cols} of the {images} images compared (the figures rest on all {images}); red: the model's prediction "
             "is wrong\na method is above another only where a paired per-image difference (deletion or insertion "
             "AUC, 95% studentized bootstrap,\nHolm-corrected over all pairs) separates them; a method failing the "
             "randomization check is never above one passing it\nCAM colours: blue low, red high, each map scaled to "
             "its own range", ha="center", va="top", fontsize=9)
    return fig


def images_figure(thumbnails: list[np.ndarray], inputs: np.ndarray, overlays: np.ndarray,
                  captions: list[list[str]], total: int | None = None) -> list[Figure]:
    """Per image: the original (thumbnail) | what the model sees (32×32, upscaled) | the CAM overlay, two images a
    row, pages of :data:`PAGE_HEIGHT`; ``total`` images were explained in all (the title says when only the first
    ones are shown)."""
    cells: list[Cell] = []
    for thumb, picture, overlay, lines in zip(thumbnails, inputs, overlays, captions, strict=True):
        cells += [(thumb, [(lines[0], "black"), ("original", "black")]),
                  (picture, [(lines[1], "black"), ("model input", "black")]),
                  (overlay, [(lines[2], "black"), ("CAM", "black")])]
    shown = len(thumbnails)
    more = f" (the first {shown} of {total:,}; images.json lists all)" if total and total > shown else ""
    return tile_pages(cells, 3 * min(2, max(shown, 1)), f"Your images: original | model input | CAM{more}",
                      group=3)


def label_issues_figure(rows: list[dict[str, Any]], flagged: int, checked: int, warning: str | None = None, *,
                        in_sample: bool = False) -> Figure:
    """The likeliest label errors in a grid: each image under its given class with the model's probability of it
    (black), the class the model suggests with its probability (red) and cleanlab's label quality (low = likely
    mislabelled); a note under the title says what the numbers are.

    Args:
        rows: Per shown issue: ``image`` (uint8 ``[h, w, 3]``), ``index``, ``given``, ``p_given``, ``suggested``,
            ``p_suggested``, ``quality``; likeliest first.
        flagged: How many images were flagged in all.
        checked: How many images were checked.
        warning: A line in red under the title (why the flags may not be label errors), or None.
        in_sample: The model trained on these images: the title starts with "in-sample, not to be trusted:" and a
            red line says why.
    """
    cells: list[Cell] = [(upscale(row["image"]), [(f"#{row['index']} given: {row['given']} {row['p_given']:.2f}",
                                                   "black"),
                                                  (f"→ {row['suggested']} {row['p_suggested']:.2f}", WRONG),
                                                  (f"quality {row['quality']:.3f}", "black")]) for row in rows]
    title = (f"{len(rows)} {'most suspect labels' if warning or in_sample else 'likeliest label errors'} (of "
             f"{flagged:,} flagged in {checked:,} images)" if rows else f"no label issues found in {checked:,} images")
    notes = [(warning, WRONG)] if warning else []
    if rows:
        notes.append(("each image: #index, the given label and the model's probability of it; → the label the model "
                      "suggests and its probability; cleanlab's label quality", "black"))
    if in_sample:  # the title says it, the red line why (the empty figure is narrow: a line of its own there)
        title = "in-sample, not to be trusted:" + (" " if rows else "\n") + title
        notes.insert(0, ("in-sample: the model trained on these labels, so its probabilities have fit them, errors "
                         "included; check images it never saw (--split test, or a held-out part)", WRONG))
    return tile_figure(cells, min(8, len(rows)), title, notes=notes)
