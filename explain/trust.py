"""How far a class activation map can be trusted: faithfulness and a sanity check, batched on the model's device.

* :func:`deletion_insertion` — the causal metrics of Petsiuk, Das & Saenko, *RISE* (BMVC 2018). Pixels are
  removed from the image in the map's order, most salient first, in ``steps`` equal steps, and the probability of
  the explained class is recorded after each; likewise they are inserted, most salient first, into an image that
  starts with all of them removed. Each curve's area over the fraction of pixels changed (trapezoid rule, x in
  [0, 1]) is the score:

      deletion AUC  = ∫ p(class | image with the top-x fraction of pixels removed) dx      (lower = more faithful)
      insertion AUC = ∫ p(class | removed image with the top-x fraction of pixels put back) dx  (higher = better)

  "Removed" means replaced by the same pixel of a heavily blurred copy of the image (Gaussian, σ ≈ a third of the
  side: 10 px on 32×32, which keeps the colour layout and nothing else). That stays closer to the data than black,
  so the score measures the evidence the model loses, not its reaction to an out-of-distribution black hole; and
  unlike a light blur (RISE's σ = 5 px was for 224×224 images) it really removes a small object: on 32×32 images
  a σ = 5 px blur leaves a 6-pixel coloured patch visible as a coloured blob. Both orders — the map's and a random
  one on the same images — remove the same way, so the random order's AUCs are the bar a map has to clear.

* :func:`randomization_test` — the model-parameter randomization test of Adebayo et al., *Sanity Checks for
  Saliency Maps* (NeurIPS 2018), cascading: the weights of a copy of the model are re-initialized from the top
  (the classifier, then ``layer4``, ``layer3``, …), the maps recomputed after each stage, and their Spearman rank
  correlation with the original maps reported per stage. Maps that explain the model fall towards 0; maps that
  survive randomization show the image (edges, brightness), not the model.

Example:
    ```python
    from explain import compute_cams
    from explain.trust import deletion_insertion, randomization_test
    cams = compute_cams(model, images, predictions)
    faithful = deletion_insertion(model, images, predictions, cams)    # faithful["deletion_auc"], ...
    sanity = randomization_test(model, images, predictions, "gradcam", "layer4")   # sanity["rank_corr"]
    ```
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torchvision.transforms.v2.functional as TF
from torch import Tensor, nn

from explain.cam import compute_cams
from train.checkpoint import unwrap

__all__ = ["AUC_KEYS", "compare_methods", "deletion_insertion", "faithfulness_score", "randomization_stages",
           "randomization_test", "removed", "spearman", "verdict"]

AUC_KEYS = ("deletion_auc", "deletion_auc_random", "insertion_auc", "insertion_auc_random")
SURVIVES = 0.5  # a rank correlation above this after full randomization: the maps survive it
MARGIN = 0.01  # AUC difference below which a map does "no better than random"


def _as_unit(images: Tensor) -> Tensor:
    return images.float() / 255 if images.dtype == torch.uint8 else images.float()


def removed(pixels: Tensor) -> Tensor:
    """What a removed pixel becomes: the same pixel of a heavily blurred copy of the image (float [N, C, H, W] in
    [0, 1]): the largest odd kernel that fits the image (31 on 32×32), σ a third of it."""
    kernel = 2 * (min(pixels.shape[-2:]) // 2) - 1
    return TF.gaussian_blur(pixels, [kernel, kernel], [kernel / 3, kernel / 3])


def _probabilities(model: nn.Module, images: Tensor, class_idx: Tensor, batch_size: int) -> Tensor:
    """Softmax probability of ``class_idx[i]`` for each image ``i`` (``images`` [N, ...], classes [N])."""
    out = []
    with torch.inference_mode():
        for chunk, classes in zip(images.split(batch_size), class_idx.split(batch_size), strict=True):
            probs = model(chunk).float().softmax(1)
            out.append(probs.gather(1, classes[:, None]).squeeze(1))
    return torch.cat(out)


def _interior(images: Tensor, baseline: Tensor, order: Tensor, steps: int, insert: bool) -> Tensor:
    """The images of steps 1 .. steps-1 ``[N, steps - 1, C, H, W]``: step k changes the first ``k / steps`` of each
    image's pixel order (step 0 and the last step are the image and its removed copy, shared by every curve)."""
    n, _, height, width = images.shape
    ranks = torch.empty_like(order)
    ranks.scatter_(1, order, torch.arange(height * width, device=order.device).expand_as(order))
    counts = torch.round(torch.linspace(0, height * width, steps + 1, device=images.device))[1:-1]
    changed = (ranks[:, None, :] < counts[None, :, None]).view(n, steps - 1, 1, height, width)
    source, target = (baseline, images) if insert else (images, baseline)
    return torch.where(changed, target[:, None], source[:, None])


CURVES = (("deletion", False, ""), ("deletion", False, "_random"), ("insertion", True, ""),
          ("insertion", True, "_random"))
IMAGES_PER_PASS = 32  # images whose every step is built at once (62 copies each at 16 steps): bounds the memory


def _all_curves(model: nn.Module, pixels: Tensor, classes: Tensor, orders: dict[str, Tensor], steps: int,
                batch_size: int) -> dict[str, Tensor]:
    """The four probability curves ``[N, steps + 1]`` of :data:`CURVES`, from one stack of all their images."""
    out: dict[str, list[Tensor]] = {name + suffix: [] for name, _, suffix in CURVES}
    for start in range(0, len(pixels), IMAGES_PER_PASS):
        chunk, chunk_classes = pixels[start:start + IMAGES_PER_PASS], classes[start:start + IMAGES_PER_PASS]
        baseline = removed(chunk)
        parts = [chunk[:, None], baseline[:, None]] + [
            _interior(chunk, baseline, orders[suffix][start:start + IMAGES_PER_PASS], steps, insert)
            for _, insert, suffix in CURVES]
        stacked = torch.cat(parts, dim=1)  # [n, 2 + 4 (steps - 1), C, H, W]
        per_image = stacked.shape[1]
        probs = _probabilities(model, stacked.flatten(0, 1), chunk_classes.repeat_interleave(per_image),
                               batch_size).view(len(chunk), per_image).cpu()
        whole, gone = probs[:, :1], probs[:, 1:2]
        for i, (name, insert, suffix) in enumerate(CURVES):
            inside = probs[:, 2 + i * (steps - 1): 2 + (i + 1) * (steps - 1)]
            out[name + suffix].append(torch.cat([gone, inside, whole] if insert else [whole, inside, gone], dim=1))
    return {key: torch.cat(parts) for key, parts in out.items()}


def deletion_insertion(model: nn.Module, images: Tensor, class_idx: Sequence[int] | Tensor, cams: Tensor,
                       steps: int = 16, *, batch_size: int = 256, seed: int = 0) -> dict[str, Any]:
    """Deletion and insertion curves of ``cams`` and of a random pixel order, and their areas (see the module doc).

    All images × steps × (deletion, insertion) × (map, random) go through the model in batches of
    ``batch_size``, not one image at a time.

    Args:
        model: Classifier of raw [0, 1] pixels (it normalizes inside), in eval mode; its device is used.
        images: Raw pixels ``[N, 3, H, W]``, uint8 or float in [0, 1].
        class_idx: The class each map explains, one per image.
        cams: Maps ``[N, H, W]`` (higher = more salient), e.g. from :func:`explain.cam.compute_cams`.
        steps: Steps from none to all pixels changed (``steps + 1`` points per curve).
        batch_size: Images per forward pass.
        seed: Seeds the random pixel order.

    Returns:
        ``fractions`` (the x values, ``steps + 1`` floats); per-image curves ``[N, steps + 1]`` (CPU tensors)
        ``deletion``, ``deletion_random``, ``insertion``, ``insertion_random``; per-image areas ``[N]`` under
        ``*_auc_per_image``; and their means ``deletion_auc``, ``deletion_auc_random``, ``insertion_auc``,
        ``insertion_auc_random`` (floats).

    Raises:
        ValueError: shapes that do not match, or ``steps`` < 1.
    """
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    if images.ndim != 4 or cams.shape != (images.shape[0], *images.shape[2:]):
        raise ValueError(f"images [N, C, H, W] and cams [N, H, W] must match, got {tuple(images.shape)} and "
                         f"{tuple(cams.shape)}")
    model = unwrap(model).eval()
    device = next(model.parameters()).device
    pixels = _as_unit(images).to(device)
    classes = torch.as_tensor(class_idx, device=device).long().flatten()
    saliency = cams.to(device).flatten(1)
    generator = torch.Generator().manual_seed(seed)
    orders = {"": torch.argsort(saliency, dim=1, descending=True, stable=True),
              "_random": torch.stack([torch.randperm(saliency.shape[1], generator=generator)
                                      for _ in range(len(pixels))]).to(device)}
    fractions = torch.linspace(0, 1, steps + 1)
    result: dict[str, Any] = {"fractions": fractions.tolist()}
    for key, curve in _all_curves(model, pixels, classes, orders, steps, batch_size).items():
        area = torch.trapezoid(curve, fractions, dim=1)
        name, _, suffix = key.partition("_")
        result[key] = curve
        result[f"{name}_auc{'_' + suffix if suffix else ''}_per_image"] = area
        result[f"{name}_auc{'_' + suffix if suffix else ''}"] = float(area.mean()) if len(area) else float("nan")
    return result


def spearman(a: Tensor, b: Tensor) -> Tensor:
    """Spearman rank correlation of each row of ``a`` ``[N, M]`` with the same row of ``b`` (ties get their average
    rank, as in ``scipy.stats.spearmanr``); 0 where a row is constant (a flat map ranks nothing)."""

    def ranks(x: Tensor) -> Tensor:
        ordered = x.sort(dim=1).values
        low = torch.searchsorted(ordered, x.contiguous(), right=False)
        high = torch.searchsorted(ordered, x.contiguous(), right=True)
        return (low + high - 1).double() / 2  # the average of the tied positions

    ra, rb = ranks(a.flatten(1).double()), ranks(b.flatten(1).double())
    ra, rb = ra - ra.mean(1, keepdim=True), rb - rb.mean(1, keepdim=True)
    denominator = (ra.square().sum(1) * rb.square().sum(1)).sqrt()
    return torch.where(denominator > 0, (ra * rb).sum(1) / denominator.clamp_min(1e-300), 0.0).float()


def randomization_stages(model: nn.Module) -> list[str]:
    """The cascade, top first: the model's top-level modules that hold parameters, last to first (for
    ``resnet18_cifar``: ``fc``, ``layer4``, ``layer3``, ``layer2``, ``layer1``, ``bn1``, ``conv1``)."""
    return [name for name, module in reversed(list(unwrap(model).named_children()))
            if any(True for _ in module.parameters())]


def _reinitialize(module: nn.Module) -> None:
    for sub in module.modules():
        if hasattr(sub, "reset_parameters"):
            sub.reset_parameters()  # torch's own initialization: Kaiming-uniform weights, BatchNorm to identity
        if isinstance(sub, nn.modules.batchnorm._BatchNorm):
            sub.reset_running_stats()


Explainer = Callable[[nn.Module, Tensor, Tensor], Tensor]


def randomization_test(model: nn.Module, images: Tensor, class_idx: Sequence[int] | Tensor,
                       method: str | Explainer = "gradcam", layer: str | Sequence[str] = "layer4", *, seed: int = 0,
                       batch_size: int = 256) -> dict[str, Any]:
    """Cascading model-parameter randomization (see the module doc) on a copy of ``model``.

    Args:
        model: The classifier (left untouched: a deep copy is randomized).
        images: Raw pixels ``[N, 3, H, W]``.
        class_idx: The class each map explains, one per image.
        method, layer: The CAM method and layer(s) of :func:`explain.cam.compute_cams`; or, to check another
            explainer, any function ``(model, images, class_idx) -> maps [N, H, W]`` (``layer`` is then unused).
        seed: Seeds the re-initialization.
        batch_size: Images per CAM pass.

    Returns:
        ``stages`` (module names, top first), ``rank_corr_per_stage`` (mean over images after each stage),
        ``rank_corr`` (after the last stage), ``rank_corr_per_image`` ``[stages, N]`` and ``maps``
        ``[stages + 1, N, H, W]`` (the original maps first), on the CPU.
    """
    def explain(net: nn.Module) -> Tensor:
        if callable(method):
            return method(net, images, classes).float().cpu()
        return compute_cams(net, images, classes, method=method, layer=layer, batch_size=batch_size).cpu()

    original_model = unwrap(model)
    classes = torch.as_tensor(class_idx).long().flatten().cpu()
    original = explain(original_model)
    randomized = copy.deepcopy(original_model)
    stages = randomization_stages(randomized)
    modules = dict(randomized.named_children())
    maps, correlations = [original], []
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for stage in stages:
            _reinitialize(modules[stage])
            cams = explain(randomized)
            maps.append(cams)
            correlations.append(spearman(maps[0], cams))
    per_image = torch.stack(correlations) if correlations else torch.zeros(0, len(classes))
    per_stage = per_image.mean(1).tolist() if len(classes) else [float("nan")] * len(stages)
    return {"stages": stages, "rank_corr_per_stage": per_stage,
            "rank_corr": per_stage[-1] if per_stage else float("nan"), "rank_corr_per_image": per_image,
            "maps": torch.stack(maps)}


def faithfulness_score(row: dict[str, float]) -> float:
    """Insertion AUC minus deletion AUC: one number, higher = more faithful, that ranks methods."""
    return row["insertion_auc"] - row["deletion_auc"]


def compare_methods(model: nn.Module, images: Tensor, class_idx: Sequence[int] | Tensor, methods: Sequence[str],
                    layer: str | Sequence[str] = "layer4", *, steps: int = 16, seed: int = 0,
                    batch_size: int = 256) -> list[dict[str, Any]]:
    """Every CAM method on the same images and classes: deletion and insertion AUCs (each beside its random order),
    the randomization test's rank correlation, and the seconds per image of the maps themselves.

    Returns:
        One row per method, most faithful first (by :func:`faithfulness_score`): ``method``, ``deletion_auc``,
        ``deletion_auc_random``, ``insertion_auc``, ``insertion_auc_random``, ``sanity_rank_corr``,
        ``seconds_per_image`` and ``cams`` (``[N, H, W]``, CPU).
    """
    model = unwrap(model)
    classes = torch.as_tensor(class_idx).long().flatten()
    rows = []
    for method in methods:
        start = time.perf_counter()
        cams = compute_cams(model, images, classes, method=method, layer=layer, batch_size=batch_size)
        seconds = time.perf_counter() - start
        faithful = deletion_insertion(model, images, classes, cams, steps, batch_size=batch_size, seed=seed)
        sanity = randomization_test(model, images, classes, method, layer, seed=seed, batch_size=batch_size)
        rows.append({"method": method, **{key: faithful[key] for key in AUC_KEYS},
                     "sanity_rank_corr": sanity["rank_corr"], "seconds_per_image": seconds / max(len(images), 1),
                     "cams": cams.cpu()})
    return sorted(rows, key=faithfulness_score, reverse=True)


def verdict(figures: dict[str, float]) -> str:
    """One line for the user: the trust figures and what they say (``warning:`` when the maps fail a check).

    Args:
        figures: ``deletion_auc``, ``deletion_auc_random``, ``insertion_auc``, ``insertion_auc_random``,
            ``sanity_rank_corr``.
    """
    numbers = (f"deletion AUC {figures['deletion_auc']:.2f} vs {figures['deletion_auc_random']:.2f} random, "
               f"insertion {figures['insertion_auc']:.2f} vs {figures['insertion_auc_random']:.2f}, "
               f"randomization rank corr {figures['sanity_rank_corr']:.2f}")
    worse = [name for name, bad in (
        ("deletion", figures["deletion_auc"] > figures["deletion_auc_random"] - MARGIN),
        ("insertion", figures["insertion_auc"] < figures["insertion_auc_random"] + MARGIN)) if bad]
    problems = [f"do no better than a random pixel order at {' and '.join(worse)}"] if worse else []
    if figures["sanity_rank_corr"] > SURVIVES:
        problems.append("survive randomizing the model, so they show the image more than the model")
    if problems:
        return f"warning: trust: {numbers} — the maps {'; and they '.join(problems)}"
    return f"trust: {numbers} — the maps follow the model"
