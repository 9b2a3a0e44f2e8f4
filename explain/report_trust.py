"""The trust step's outputs: how far the explain step's CAMs can be trusted, with 95 % intervals and a verdict.

:func:`measure_trust` runs :mod:`explain.trust` on a seeded sample of the evaluated images stratified by class and by
right/wrong prediction (:func:`trust_sample`: the mistakes the explain step exists for are always in it), on the CAM
of the predicted class, writes ``faithfulness.png`` and ``sanity.png`` and puts the curves and the per-stage table
into the W&B row; :func:`compare_cam_methods` orders CAM methods on the same sample only as far as their paired
per-image differences separate them (``cam_methods.json``, ``cam_methods.png``, ``explain/cam_methods``).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from explain.cam import compute_cams
from explain.figures import ALPHA, COLORMAP, DPI, SCALE, cam_methods_figure, faithfulness_figure, sanity_figure
from explain.overlay import overlay_cam, to_hwc_uint8
from explain.trust import (
    CONFIDENCE,
    TRUST_KEYS,
    bootstrap_interval,
    cam_resolution,
    compare_methods,
    deletion_insertion,
    randomization_test,
    trust_figures,
    verdict_line,
)
from train.data import balanced_subset
from train.files import write_json

__all__ = ["CPU_TRUST_IMAGES", "GPU_TRUST_IMAGES", "TRUST_STEPS", "compare_cam_methods", "default_trust_images",
           "measure_trust", "trust_sample"]

# Images the trust figures use by default. Each costs 2 + 4 × (TRUST_STEPS - 1) forwards and a CAM per randomization
# stage (7 for resnet18_cifar). On the CPU 32: the studentized intervals need at least MIN_IMAGES (12) to hold their
# 95 % (bench/trust_coverage.py) and a verdict needs them narrow enough to clear the thresholds; 32 take ~5 s on the
# 2-core development CPU, 7.4x the explain step's CAMs (bench/trust_speed.py). A GPU does 256 in seconds.
CPU_TRUST_IMAGES = 32
GPU_TRUST_IMAGES = 256
TRUST_STEPS = 6  # 7 points per curve: the step resolution matters less than the number of images
SANITY_IMAGES = 4  # images shown in sanity.png
COMPARE_IMAGES = 8  # images shown in cam_methods.png (columns: ~1,300 px wide)


def default_trust_images(device: torch.device | str) -> int:
    """:data:`GPU_TRUST_IMAGES` on an accelerator, :data:`CPU_TRUST_IMAGES` on the CPU."""
    return CPU_TRUST_IMAGES if torch.device(device).type == "cpu" else GPU_TRUST_IMAGES


def trust_sample(labels: Tensor, count: int, seed: int, preds: Tensor | None = None) -> Tensor:
    """``count`` of the evaluated images, seeded, stratified by class (:func:`train.data.balanced_subset`) and, with
    ``preds``, by right/wrong prediction: half of the sample are mistakes when the model made that many (all of them
    when fewer, so mistakes are always present when there are any), the rest right predictions; all when fewer.

    Returns:
        Sorted int64 indices into ``labels``.
    """
    labels = labels.cpu()
    if preds is None or count <= 0 or count >= len(labels):
        return balanced_subset(labels, count, seed)
    wrong = torch.nonzero(preds.cpu() != labels).flatten()
    right = torch.nonzero(preds.cpu() == labels).flatten()
    n_wrong = min(len(wrong), (count + 1) // 2)
    n_right = min(len(right), count - n_wrong)
    n_wrong = min(len(wrong), count - n_right)  # too few right predictions: more mistakes
    parts = [_stratified(labels, group, n, seed) for group, n in ((wrong, n_wrong), (right, n_right)) if n > 0]
    return torch.sort(torch.cat(parts)).values if parts else torch.zeros(0, dtype=torch.long)


def _stratified(labels: Tensor, group: Tensor, n: int, seed: int) -> Tensor:
    """``n`` of the positions ``group``, class-stratified; a class with fewer than its share (a model's mistakes are
    rarely balanced) leaves room that seeded others of the group fill, so the sample has its size."""
    if n >= len(group):
        return group
    chosen = group[balanced_subset(labels[group], n, seed)]
    if len(chosen) < n:
        rest = group[~torch.isin(group, chosen)]
        extra = rest[torch.randperm(len(rest), generator=torch.Generator().manual_seed(seed))[:n - len(chosen)]]
        chosen = torch.cat([chosen, extra])
    return chosen


def spread_out(count: int, shown: int) -> Tensor:
    """``shown`` positions spread evenly over ``count`` (all when fewer): the sample is sorted by image index, and a
    class-stratified folder lists its classes one after another, so the first few would all be one class."""
    if count <= shown:
        return torch.arange(count)
    return torch.linspace(0, count - 1, shown).round().long()


def _stage_table(figures: dict[str, Any]) -> list[list[Any]]:
    return [[stage, corr, low, high] for stage, corr, (low, high) in zip(
        figures["sanity_stages"], figures["sanity_rank_corr_per_stage"], figures["sanity_rank_corr_ci_per_stage"],
        strict=True)]


def measure_trust(model: nn.Module, images: Tensor, class_idx: Tensor, method: str, layers: list[str],
                  out_dir: Path, row: dict[str, Any] | None, *, seed: int = 0,
                  available: int | None = None) -> dict[str, Any]:
    """The trust figures of ``method``'s maps of ``images`` for ``class_idx`` (:func:`explain.trust.trust_figures`),
    ``faithfulness.png`` and ``sanity.png``; with a W&B ``row``, the mean curves (``explain/faithfulness_curves``)
    and the per-stage rank correlations with their intervals (``explain/sanity``) join it.

    Args:
        available: How many images the sample was drawn from (the line advises a larger --trust_images only when
            there are more).

    Returns:
        :data:`explain.trust.TRUST_KEYS` and the other figures of :func:`explain.trust.trust_figures`, plus
        ``trust_line`` (the line to print).
    """
    cams = compute_cams(model, images, class_idx, method=method, layer=layers)
    faithful = deletion_insertion(model, images, class_idx, cams, steps=TRUST_STEPS, seed=seed,
                                  null_resolution=cam_resolution(model, layers, images.shape[-2:]))
    sanity = randomization_test(model, images, class_idx, method, layers, seed=seed, original=cams)
    figures = trust_figures(faithful, sanity, seed=seed)
    if available is not None:  # how many images a larger --trust_images could use (the advice is empty without more)
        figures["trust_available"] = available
    figures["trust_line"] = verdict_line(figures, method)
    bands = {"deletion": bootstrap_interval(faithful["deletion_random"] - faithful["deletion"], seed=seed),
             "insertion": bootstrap_interval(faithful["insertion"] - faithful["insertion_random"], seed=seed)}
    faithfulness_figure(faithful, bands, figures, method).savefig(out_dir / "faithfulness.png", dpi=DPI)
    pick = spread_out(len(images), SANITY_IMAGES)
    shown = images[pick].cpu()
    overlays = [overlay_cam(shown, maps[pick], alpha=ALPHA, colormap=COLORMAP, scale=SCALE)
                for maps in sanity["maps"]]
    sanity_figure(_upscale(to_hwc_uint8(shown)), overlays, sanity["stages"],
                  sanity["rank_corr_per_image"][:, pick].numpy(), figures).savefig(
        out_dir / "sanity.png", dpi=DPI)
    if row is not None:
        import wandb

        curves = [faithful[name].mean(0).tolist() for name in ("deletion", "deletion_random", "insertion",
                                                              "insertion_random")]
        row["explain/faithfulness_curves"] = wandb.plot.line_series(
            xs=faithful["fractions"], ys=curves, xname="fraction of pixels changed",
            keys=[f"deletion ({method})", "deletion (smooth random maps)", f"insertion ({method})",
                  "insertion (smooth random maps)"],
            title=f"Deletion and insertion: {method} vs smooth random maps ({figures['trust_verdict']})")
        row["explain/sanity"] = wandb.Table(columns=["stage", "rank_corr", "ci_low", "ci_high"],
                                            data=_stage_table(figures))
    return figures


def compare_cam_methods(model: nn.Module, images: Tensor, class_idx: Tensor, methods: Sequence[str],
                        layers: list[str], out_dir: Path, row: dict[str, Any] | None, *,
                        seed: int = 0, captions: Sequence[tuple[str, bool]] | None = None) -> dict[str, Any]:
    """:func:`explain.trust.compare_methods`, written as ``cam_methods.json`` (``methods``: each method's figures with
    their intervals, ``rank``, ``above`` and ``below``; ``pairs``: every pair's paired difference per metric with its
    Holm-level interval and p-values), ``cam_methods.png`` (the same images, one column per method) and, in the W&B
    ``row``, the Tables ``explain/cam_methods`` and ``explain/cam_method_pairs``. ``captions``: per image its
    ``(text, right)`` in the picture (:func:`explain.figures.cam_methods_figure`); default its position."""
    compared, pairs = compare_methods(model, images, class_idx, methods, layers, steps=TRUST_STEPS, seed=seed)
    keys = ["method", "rank", "above", "below", *TRUST_KEYS, "seconds_per_image"]
    table = [{key: entry[key] for key in keys} for entry in compared]
    result = {"images": len(images), "confidence": CONFIDENCE, "correction": "holm", "methods": table,
              "pairs": pairs}
    write_json(out_dir / "cam_methods.json", result)
    pick = spread_out(len(images), COMPARE_IMAGES)
    shown = images[pick].cpu()
    overlays = {entry["method"]: overlay_cam(shown, entry["cams"][pick], alpha=ALPHA, colormap=COLORMAP,
                                             scale=SCALE) for entry in compared}
    headings = [(e["method"], f"above {', '.join(e['above'])}" if e["above"] else "above none", e["trust_verdict"])
                for e in compared]
    labels = [captions[i] for i in pick.tolist()] if captions is not None else \
        [(f"image {i + 1}", True) for i in pick.tolist()]
    cam_methods_figure(_upscale(to_hwc_uint8(shown)), overlays, headings, labels, len(images)).savefig(
        out_dir / "cam_methods.png", dpi=DPI)
    if row is not None:
        import wandb

        plain = [k for k in keys if not k.endswith("_ci") and k not in ("above", "below")]
        intervals = [k for k in keys if k.endswith("_ci")]
        columns = plain + ["above", "below"] + [f"{k}_{end}" for k in intervals for end in ("low", "high")]
        data = [[e[k] for k in plain] + [", ".join(e["above"]), ", ".join(e["below"])]
                + [e[k][i] for k in intervals for i in (0, 1)] for e in table]  # W&B cells are scalars
        row["explain/cam_methods"] = wandb.Table(columns=columns, data=data)
        row["explain/cam_method_pairs"] = wandb.Table(
            columns=["a", "b", "metric", "difference", "ci_low", "ci_high", "confidence", "p", "p_holm", "favours"],
            data=[[p["a"], p["b"], p["metric"], p["difference"], *p["ci"], p["confidence"], p["p"], p["p_holm"],
                   p["favours"] or ""] for p in pairs])
    return result


def _upscale(pictures: np.ndarray) -> np.ndarray:
    return pictures.repeat(SCALE, axis=1).repeat(SCALE, axis=2)
