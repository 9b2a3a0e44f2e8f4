"""The trust step's outputs: how far the explain step's CAMs can be trusted, with 95 % intervals and a verdict.

:func:`measure_trust` runs :mod:`explain.trust` on a seeded, class-stratified sample of the evaluated images (right
and wrong predictions alike: a user reads the CAMs of both), writes ``faithfulness.png`` and ``sanity.png`` and puts
the curves and the per-stage table into the W&B row; :func:`compare_cam_methods` ranks CAM methods on the same sample
only as far as their intervals separate them (``cam_methods.json``, ``cam_methods.png``, ``explain/cam_methods``).
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
    TRUST_KEYS,
    bootstrap_interval,
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
# stage (7 for resnet18_cifar), against the explain step's 128 CAMs (64 mistakes × 2 classes): 12 images at 6 steps
# take about 3× that CAM time on a 2-core CPU (bench/trust_speed.py: 16 images at 8 steps took 5×), which leaves many
# verdicts of a weak model inconclusive there (and says so); a GPU does 256 in seconds, intervals 4.6× narrower.
CPU_TRUST_IMAGES = 12
GPU_TRUST_IMAGES = 256
TRUST_STEPS = 6  # 7 points per curve: the step resolution matters less than the number of images
SANITY_IMAGES = 4  # images shown in sanity.png
COMPARE_IMAGES = 8  # images shown in cam_methods.png


def default_trust_images(device: torch.device | str) -> int:
    """:data:`GPU_TRUST_IMAGES` on an accelerator, :data:`CPU_TRUST_IMAGES` on the CPU."""
    return CPU_TRUST_IMAGES if torch.device(device).type == "cpu" else GPU_TRUST_IMAGES


def trust_sample(labels: Tensor, count: int, seed: int) -> Tensor:
    """``count`` of the evaluated images, seeded and class-stratified (:func:`train.data.balanced_subset`): every
    class equally, right and wrong predictions in the proportions the model makes them; all when fewer."""
    return balanced_subset(labels.cpu(), count, seed)


def _stage_table(figures: dict[str, Any]) -> list[list[Any]]:
    return [[stage, corr, low, high] for stage, corr, (low, high) in zip(
        figures["sanity_stages"], figures["sanity_rank_corr_per_stage"], figures["sanity_rank_corr_ci_per_stage"],
        strict=True)]


def measure_trust(model: nn.Module, images: Tensor, class_idx: Tensor, method: str, layers: list[str],
                  out_dir: Path, row: dict[str, Any] | None, *, seed: int = 0) -> dict[str, Any]:
    """The trust figures of ``method``'s maps of ``images`` for ``class_idx`` (:func:`explain.trust.trust_figures`),
    ``faithfulness.png`` and ``sanity.png``; with a W&B ``row``, the mean curves (``explain/faithfulness_curves``)
    and the per-stage rank correlations with their intervals (``explain/sanity``) join it.

    Returns:
        :data:`explain.trust.TRUST_KEYS` and the other figures of :func:`explain.trust.trust_figures`, plus
        ``trust_line`` (the line to print).
    """
    cams = compute_cams(model, images, class_idx, method=method, layer=layers)
    faithful = deletion_insertion(model, images, class_idx, cams, steps=TRUST_STEPS, seed=seed)
    sanity = randomization_test(model, images, class_idx, method, layers, seed=seed, original=cams)
    figures = trust_figures(faithful, sanity, seed=seed)
    figures["trust_line"] = verdict_line(figures, method)
    bands = {name: bootstrap_interval(faithful[name], seed=seed) for name in
             ("deletion", "deletion_random", "insertion", "insertion_random")}
    faithfulness_figure(faithful, bands, figures, method).savefig(out_dir / "faithfulness.png", dpi=DPI)
    shown = images[:SANITY_IMAGES].cpu()
    overlays = [overlay_cam(shown, maps[:SANITY_IMAGES], alpha=ALPHA, colormap=COLORMAP, scale=SCALE)
                for maps in sanity["maps"]]
    sanity_figure(_upscale(to_hwc_uint8(shown)), overlays, sanity["stages"],
                  sanity["rank_corr_per_image"][:, :SANITY_IMAGES].numpy(), figures).savefig(
        out_dir / "sanity.png", dpi=DPI)
    if row is not None:
        import wandb

        curves = [faithful[name].mean(0).tolist() for name in ("deletion", "deletion_random", "insertion",
                                                              "insertion_random")]
        row["explain/faithfulness_curves"] = wandb.plot.line_series(
            xs=faithful["fractions"], ys=curves, xname="fraction of pixels changed",
            keys=[f"deletion ({method})", "deletion (random order)", f"insertion ({method})",
                  "insertion (random order)"],
            title=f"Deletion and insertion: {method} vs a random pixel order ({figures['trust_verdict']})")
        row["explain/sanity"] = wandb.Table(columns=["stage", "rank_corr", "ci_low", "ci_high"],
                                            data=_stage_table(figures))
    return figures


def compare_cam_methods(model: nn.Module, images: Tensor, class_idx: Tensor, methods: Sequence[str],
                        layers: list[str], out_dir: Path, row: dict[str, Any] | None, *,
                        seed: int = 0) -> list[dict[str, Any]]:
    """:func:`explain.trust.compare_methods`, written as ``cam_methods.json`` (each method's figures with their
    intervals, ``rank`` and ``tied``) and ``cam_methods.png`` (the same images, one column per method) and, in the
    W&B ``row``, as the Table ``explain/cam_methods``."""
    compared = compare_methods(model, images, class_idx, methods, layers, steps=TRUST_STEPS, seed=seed)
    keys = ["method", "rank", "tied", *TRUST_KEYS, "seconds_per_image"]
    table = [{key: entry[key] for key in keys} for entry in compared]
    write_json(out_dir / "cam_methods.json", table)
    shown = images[:COMPARE_IMAGES].cpu()
    overlays = {entry["method"]: overlay_cam(shown, entry["cams"][:COMPARE_IMAGES], alpha=ALPHA, colormap=COLORMAP,
                                             scale=SCALE) for entry in compared}
    headings = [(f"{'=' if e['tied'] else ''}{e['rank']}. {e['method']}", e["trust_verdict"]) for e in compared]
    cam_methods_figure(_upscale(to_hwc_uint8(shown)), overlays, headings,
                       [f"image {i + 1}" for i in range(len(shown))], len(images)).savefig(
        out_dir / "cam_methods.png", dpi=DPI)
    if row is not None:
        import wandb

        plain, intervals = [k for k in keys if not k.endswith("_ci")], [k for k in keys if k.endswith("_ci")]
        columns = plain + [f"{k}_{end}" for k in intervals for end in ("low", "high")]  # W&B cells are scalars
        data = [[e[k] for k in plain] + [e[k][i] for k in intervals for i in (0, 1)] for e in table]
        row["explain/cam_methods"] = wandb.Table(columns=columns, data=data)
    return table


def _upscale(pictures: np.ndarray) -> np.ndarray:
    return pictures.repeat(SCALE, axis=1).repeat(SCALE, axis=2)
