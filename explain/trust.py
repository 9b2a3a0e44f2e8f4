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

  The random order is a *smooth random map* (:func:`smooth_random_maps`): uniform noise at the CAM layer's own
  resolution (4×4 for ``layer4`` on 32×32 images), upsampled the way the CAMs are (bilinear), one per image, seeded —
  so the same image gets the same null in every method it is compared with (paired). A pixel-random order is not a
  fair bar for a smooth map: removing contiguous blobs hurts a classifier more than removing scattered pixels, so a
  smooth map that knows nothing beats pixel noise on deletion (by 0.085 [0.045, 0.126] in the review of issue 26).

* :func:`randomization_test` — the model-parameter randomization test of Adebayo et al., *Sanity Checks for
  Saliency Maps* (NeurIPS 2018), cascading: the weights of a copy of the model are re-initialized from the top
  (the classifier, then ``layer4``, ``layer3``, …), the maps recomputed after each stage, and their Spearman rank
  correlation with the original maps reported per stage. Maps that explain the model fall towards 0; maps that
  survive randomization show the image (edges, brightness), not the model.

* :func:`trust_figures` and :func:`verdict` — the figures are statistics over images, so each comes with a 95 %
  studentized-bootstrap interval over the images (:func:`bootstrap_interval`, seeded: the same images give the same
  interval; its coverage is measured by ``bench/trust_coverage.py``; the rank correlations' on Fisher's z scale,
  :func:`correlation_interval`, so that it stays inside [−1, 1]). The per-image *gains* over the random maps are
  paired (same image, same removal): ``deletion_gain`` = random − map deletion AUC, ``insertion_gain`` = map − random
  insertion AUC; both > 0 when the map beats chance. The randomization check reads every stage of the cascade
  (:func:`sanity_check`): it passes only when the maps have changed from the first stage on (the head randomized)
  and stay changed. The verdict is read from the intervals, never from a point estimate: ``faithful`` (both gain
  intervals above :data:`SMALLEST_GAIN` and the randomization check passed), ``not faithful`` (a gain interval below
  :data:`SMALLEST_GAIN`, or a stage whose interval lies above :data:`SURVIVES`: the maps survive it),
  ``inconclusive`` (anything else: more images are needed).

* :func:`compare_methods` and :func:`rank_methods` — methods on the same images are compared by their *paired*
  per-image differences (studentized bootstrap, Holm-corrected over every pair and both metrics): a partial order,
  in which a method is above another only where a paired difference separates them.

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
import math
import time
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
import torchvision.transforms.v2.functional as TF
from torch import Tensor, nn

from explain.cam import compute_cams
from train.checkpoint import unwrap

__all__ = ["AUC_KEYS", "CONFIDENCE", "COVERAGE", "FAITHFUL", "INCONCLUSIVE", "MIN_IMAGES", "NOT_FAITHFUL",
           "SMALLEST_GAIN", "SURVIVES", "TRUST_KEYS", "bootstrap_interval", "bootstrap_p_value", "borderline",
           "borderline_words", "cam_resolution", "compare_methods", "correlation_interval", "deletion_insertion",
           "holm", "paired_differences", "randomization_stages", "randomization_test", "rank_methods", "removed",
           "sanity_check", "smooth_random_maps", "spearman", "trust_figures", "verdict", "verdict_line"]

AUC_KEYS = ("deletion_auc", "deletion_auc_random", "insertion_auc", "insertion_auc_random")
# What the trust step reports (summary.json's explain and the W&B summary as explain/<key>); *_ci are [low, high].
# The *_random AUCs are those of the smooth random maps (the null); sanity_rank_corr(_ci) is the figure of the stage
# that decided the randomization check (sanity_stage), sanity_result its outcome (passes / fails / inconclusive).
TRUST_KEYS = (*AUC_KEYS, "deletion_gain", "deletion_gain_ci", "insertion_gain", "insertion_gain_ci",
              "sanity_rank_corr", "sanity_rank_corr_ci", "sanity_stage", "sanity_result", "trust_images",
              "trust_verdict")
CONFIDENCE = 0.95  # of every interval
# What the intervals' 95 % is worth, measured: bench/trust_coverage.py simulates 1,000 data sets of each size a
# verdict can be given on (>= MIN_IMAGES), normal and skewed (exponential, beta), and counts how often the interval
# holds the true mean (BENCHMARKS.md): 0.94-0.96 for the gains; for rank correlations 0.95-0.98 when spread over
# [-1, 1], 0.91 at 12 images and 0.93-0.95 from 16 when piled up near 1 (maps that survive randomizing, whose
# interval then lies far above SURVIVES anyway). Printed wherever "95%" is.
COVERAGE = "simulated coverage 0.91-0.98 from 12 images"
RESAMPLES = 2000  # bootstrap resamples: the interval's ends move by well under 0.005 AUC between seeds at this count
# The randomization threshold. After the weights of the model are re-initialized, a map that explains the model
# should be unrelated to its original (rank correlation near 0), while a map that only shows the image (its edges,
# its brightness) is unchanged (near 1): Adebayo et al. (2018) find gradient maps of trained models falling towards 0
# and edge detectors staying high. 0.5 is the midpoint: a map still closer to its original than to an unrelated one
# has kept more of its ordering than it lost, so it shows the image more than the model. The decision uses the
# intervals of every stage: see sanity_check.
SURVIVES = 0.5
# The smallest gain that matters. An AUC is the mean probability of the explained class along the curve, so a gain of
# 0.01 means that following the map instead of a random order moves that probability by one percentage point on
# average. Intervals above 0 alone are not enough: Grad-CAM of an untrained resnet18_cifar beats a random order by
# 0.0002 [0.0002, 0.0003] on 32 CIFAR-10 images — real, and a fiftieth of a point of a decision the model never
# made. So the intervals are read against this floor (an equivalence region, as in equivalence testing): a gain
# whose interval lies below it is no gain that matters, one whose interval straddles it is undecided.
SMALLEST_GAIN = 0.01
# Below this many images no verdict other than inconclusive is given: the studentized bootstrap's simulated coverage
# is 0.93 at 8 skewed (exponential) images and >= 0.94 from 12 on, normal or skewed (bench/trust_coverage.py); the
# percentile bootstrap used before covered 0.82 at 8 and 0.88 at 12.
MIN_IMAGES = 12
FAITHFUL, NOT_FAITHFUL, INCONCLUSIVE = "faithful", "not faithful", "inconclusive"


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


def cam_resolution(model: nn.Module, layer: str | Sequence[str], size: Sequence[int]) -> tuple[int, int]:
    """The spatial size of the feature map(s) a CAM of ``layer`` is computed on, for images of ``size`` (H, W):
    where the maps' detail comes from. With several layers, the largest (torchcam fuses them at the largest)."""
    model = unwrap(model)
    layers = [layer] if isinstance(layer, str) else list(layer)
    modules = dict(model.named_modules())
    shapes: list[tuple[int, int]] = []
    hooks = [modules[name].register_forward_hook(lambda _m, _i, out: shapes.append(tuple(out.shape[-2:])))
             for name in layers]
    param = next(model.parameters())
    try:
        with torch.inference_mode():
            model.eval()(torch.zeros(1, 3, *size, device=param.device, dtype=param.dtype))
    finally:
        for hook in hooks:
            hook.remove()
    return max(shapes, key=lambda hw: hw[0] * hw[1])


def smooth_random_maps(count: int, resolution: Sequence[int], size: Sequence[int], *, seed: int = 0) -> Tensor:
    """``count`` random maps ``[count, H, W]`` as smooth as a CAM: uniform noise at ``resolution`` (the CAM layer's
    h × w), upsampled to ``size`` bilinearly as :func:`explain.cam.compute_cams` upsamples the CAMs. Seeded: map
    ``i`` is the same for every method explained on the same images (the null is paired per image). At
    ``resolution == size`` it is a pixel-random order."""
    generator = torch.Generator().manual_seed(seed)
    noise = torch.rand(count, 1, *resolution, generator=generator)
    if tuple(resolution) == tuple(size):
        return noise[:, 0]
    return torch.nn.functional.interpolate(noise, size=tuple(size), mode="bilinear", align_corners=False)[:, 0]


def deletion_insertion(model: nn.Module, images: Tensor, class_idx: Sequence[int] | Tensor, cams: Tensor,
                       steps: int = 16, *, batch_size: int = 256, seed: int = 0,
                       null_resolution: Sequence[int] | None = None) -> dict[str, Any]:
    """Deletion and insertion curves of ``cams`` and of smooth random maps, and their areas (see the module doc).

    All images × steps × (deletion, insertion) × (map, random) go through the model in batches of
    ``batch_size``, not one image at a time.

    Args:
        model: Classifier of raw [0, 1] pixels (it normalizes inside), in eval mode; its device is used.
        images: Raw pixels ``[N, 3, H, W]``, uint8 or float in [0, 1].
        class_idx: The class each map explains, one per image.
        cams: Maps ``[N, H, W]`` (higher = more salient), e.g. from :func:`explain.cam.compute_cams`.
        steps: Steps from none to all pixels changed (``steps + 1`` points per curve).
        batch_size: Images per forward pass.
        seed: Seeds the random maps (:func:`smooth_random_maps`): the same seed gives every method the same null.
        null_resolution: The CAM layer's h × w (:func:`cam_resolution`), the random maps' resolution before they are
            upsampled; None = the image's own (a pixel-random order, too easy a bar for a smooth map).

    Returns:
        ``fractions`` (the x values, ``steps + 1`` floats); per-image curves ``[N, steps + 1]`` (CPU tensors)
        ``deletion``, ``deletion_random``, ``insertion``, ``insertion_random``; per-image areas ``[N]`` under
        ``*_auc_per_image``; their means ``deletion_auc``, ``deletion_auc_random``, ``insertion_auc``,
        ``insertion_auc_random`` (floats); and ``null_resolution`` (``[h, w]`` of the random maps).

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
    size = tuple(images.shape[-2:])
    resolution = tuple(null_resolution) if null_resolution is not None else size
    null = smooth_random_maps(len(pixels), resolution, size, seed=seed).to(device).flatten(1)
    orders = {"": torch.argsort(saliency, dim=1, descending=True, stable=True),
              "_random": torch.argsort(null, dim=1, descending=True, stable=True)}
    fractions = torch.linspace(0, 1, steps + 1)
    result: dict[str, Any] = {"fractions": fractions.tolist(), "null_resolution": list(resolution)}
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
                       batch_size: int = 256, original: Tensor | None = None) -> dict[str, Any]:
    """Cascading model-parameter randomization (see the module doc) on a copy of ``model``.

    Args:
        model: The classifier (left untouched: a deep copy is randomized).
        images: Raw pixels ``[N, 3, H, W]``.
        class_idx: The class each map explains, one per image.
        method, layer: The CAM method and layer(s) of :func:`explain.cam.compute_cams`; or, to check another
            explainer, any function ``(model, images, class_idx) -> maps [N, H, W]`` (``layer`` is then unused).
        seed: Seeds the re-initialization and the bootstrap intervals.
        batch_size: Images per CAM pass.
        original: The maps of the unchanged model when the caller has them already (they are not recomputed).

    Returns:
        ``stages`` (module names, top first), ``rank_corr_per_stage`` (mean over images after each stage) and
        ``rank_corr_ci_per_stage`` (its 95 % interval over the images, :func:`correlation_interval`, per stage),
        ``rank_corr`` and ``rank_corr_ci`` (after the last stage), ``rank_corr_per_image`` ``[stages, N]`` and
        ``maps`` ``[stages + 1, N, H, W]`` (the original maps first), on the CPU.
    """
    def explain(net: nn.Module) -> Tensor:
        if callable(method):
            return method(net, images, classes).float().cpu()
        return compute_cams(net, images, classes, method=method, layer=layer, batch_size=batch_size).cpu()

    original_model = unwrap(model)
    classes = torch.as_tensor(class_idx).long().flatten().cpu()
    original = explain(original_model) if original is None else original.float().cpu()
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
    intervals = correlation_interval(per_image, seed=seed, axis=1) if per_image.numel() else np.full((2, 0), np.nan)
    return {"stages": stages, "rank_corr_per_stage": per_stage,
            "rank_corr_ci_per_stage": [[float(low), float(high)] for low, high in intervals.T],
            "rank_corr": per_stage[-1] if per_stage else float("nan"),
            "rank_corr_ci": [float(x) for x in intervals[:, -1]] if per_image.numel() else [math.nan, math.nan],
            "rank_corr_per_image": per_image, "maps": torch.stack(maps)}


def _bootstrap_t(values: Tensor | np.ndarray, seed: int, axis: int,
                 fisher_z: bool = False) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The mean and standard error over ``axis`` (moved last) and the studentized resamples ``t* = (mean* − mean) /
    se*`` (``[..., RESAMPLES]``, NaN where a resample has no spread). The same resampled images serve every other
    entry (a curve's points, a cascade's stages), as they are measured on the same images. With ``fisher_z`` (the
    values are correlations) the statistic is ``atanh(mean)`` and its standard error ``se / (1 − mean²)`` (the delta
    method), for the resamples alike; a mean of exactly ±1 is kept a hair inside, where ``atanh`` is finite."""
    data = np.moveaxis(np.asarray(values.double().cpu() if isinstance(values, Tensor) else values, dtype=np.float64),
                       axis, -1)
    if fisher_z:
        data = np.clip(data, -1.0, 1.0)
    n = data.shape[-1]
    picks = np.random.default_rng(seed).integers(0, n, (RESAMPLES, n))
    resampled = data[..., picks]  # [..., RESAMPLES, n]
    mean, mean_star = data.mean(-1), resampled.mean(-1)
    se, se_star = data.std(-1, ddof=1) / math.sqrt(n), resampled.std(-1, ddof=1) / math.sqrt(n)
    if fisher_z:
        edge = 1 - 1e-12
        mean, mean_star = np.clip(mean, -edge, edge), np.clip(mean_star, -edge, edge)
        se, se_star = se / (1 - mean ** 2), se_star / (1 - mean_star ** 2)
        mean, mean_star = np.arctanh(mean), np.arctanh(mean_star)
    with np.errstate(divide="ignore", invalid="ignore"):
        t_star = (mean_star - mean[..., None]) / np.where(se_star > 0, se_star, np.nan)
    return mean, se, t_star


def _studentized(mean: np.ndarray, se: np.ndarray, t_star: np.ndarray, confidence: float) -> np.ndarray:
    """``[mean − q(1 − a/2)·se, mean − q(a/2)·se]`` with ``q`` the quantiles of ``t_star`` (``[2, ...]``)."""
    alpha = 1 - confidence
    with warnings.catch_warnings():  # an entry whose every resample has no spread (all values equal) is all NaN
        warnings.simplefilter("ignore", RuntimeWarning)
        low_q, high_q = np.nanquantile(t_star, [alpha / 2, 1 - alpha / 2], axis=-1)
    return np.stack([mean - high_q * se, mean - low_q * se])


def bootstrap_interval(values: Tensor | np.ndarray, *, seed: int = 0, axis: int = 0,
                       confidence: float = CONFIDENCE) -> np.ndarray:
    """The ``confidence`` studentized-bootstrap (bootstrap-t) interval of the mean of ``values`` over ``axis`` (the
    images), seeded: ``[mean − q(1 − a/2)·se, mean − q(a/2)·se]`` with ``q`` the quantiles of the resampled
    ``(mean* − mean) / se*``.

    Why this method: at the sizes a verdict is given on, the percentile bootstrap used before covered 0.82–0.91 of
    the time instead of 0.95 (bench/trust_coverage.py); BCa is no better at 8–32 images and undefined when every
    value is equal; the t interval undercovers skewed data (0.91 at 12–32 exponential images). The studentized
    bootstrap covers >= 0.94 from 12 images, normal or skewed. scipy's ``bootstrap`` has no studentized method, so it
    is written here (a dozen lines of numpy).

    Returns:
        ``[low, high]`` (shape ``[2, ...]`` for multi-dimensional ``values``: the interval of each other entry);
        the value itself when all values are equal; NaN with fewer than two values.
    """
    data = np.asarray(values.double().cpu() if isinstance(values, Tensor) else values, dtype=np.float64)
    if data.shape[axis] < 2:
        return np.full((2, *np.delete(data.shape, axis)), np.nan)
    mean, se, t_star = _bootstrap_t(data, seed, axis)
    return np.where(se > 0, _studentized(mean, se, t_star, confidence), np.stack([mean, mean]))  # no spread: the value


def correlation_interval(values: Tensor | np.ndarray, *, seed: int = 0, axis: int = 0,
                         confidence: float = CONFIDENCE) -> np.ndarray:
    """The ``confidence`` interval of the mean of correlations ``values`` (each in [−1, 1]) over ``axis``: the
    studentized bootstrap of :func:`bootstrap_interval` on Fisher's z scale of the mean, ``atanh(mean)``, with the
    delta-method standard error ``se / (1 − mean²)``, mapped back with ``tanh``.

    Why: a mean of correlations lies in [−1, 1] but the plain bootstrap-t interval does not (``[-1.223, 0.613]`` on
    three images); on the z scale the interval is unbounded and ``tanh`` brings it back inside, for the same mean
    (tanh is monotone). Its coverage is simulated beside the others (bench/trust_coverage.py, ``correlation*``).

    Returns:
        As :func:`bootstrap_interval`: ``[low, high]`` (``[2, ...]``), inside [−1, 1]; the value when all are equal.
    """
    data = np.asarray(values.double().cpu() if isinstance(values, Tensor) else values, dtype=np.float64)
    if data.shape[axis] < 2:
        return np.full((2, *np.delete(data.shape, axis)), np.nan)
    z, se_z, t_star = _bootstrap_t(data, seed, axis, fisher_z=True)
    mean = np.clip(data, -1.0, 1.0).mean(axis)
    return np.where(se_z > 0, np.tanh(_studentized(z, se_z, t_star, confidence)), np.stack([mean, mean]))


def bootstrap_p_value(values: Tensor | np.ndarray, *, seed: int = 0) -> float:
    """Two-sided p-value of "the mean of ``values`` is 0" from the same studentized bootstrap as
    :func:`bootstrap_interval` (so p < a exactly when the 1 − a interval excludes 0, up to the resampling grain):
    twice the smaller tail of ``t*`` beyond the observed ``mean / se``. 1.0 with fewer than two values."""
    data = np.asarray(values.double().cpu() if isinstance(values, Tensor) else values, dtype=np.float64).ravel()
    if len(data) < 2:
        return 1.0
    mean, se, t_star = _bootstrap_t(data, seed, 0)
    if not se > 0:
        return 1.0 if mean == 0 else 0.0
    t_star = t_star[np.isfinite(t_star)]
    observed = mean / se
    tail = min((t_star >= observed).sum(), (t_star <= observed).sum())
    return float(min(1.0, 2 * (tail + 1) / (len(t_star) + 1)))


def _interval(values: Tensor, seed: int) -> list[float]:
    low, high = bootstrap_interval(values, seed=seed)
    return [float(low), float(high)]


PASSES, FAILS = "passes", "fails"


def sanity_check(stages: Sequence[str], intervals: Sequence[Sequence[float]]) -> tuple[str, int | None]:
    """The randomization check read at every stage of the cascade (top first), from the stages' rank-correlation
    intervals: ``fails`` at the first stage whose whole interval lies above :data:`SURVIVES` (the maps survived
    randomizing it and everything above it: they do not follow the model there); ``passes`` only when every stage's
    interval lies below it — the maps changed once the head was randomized and stayed changed — decided by the stage
    closest to the line (the highest upper end); else ``inconclusive``, decided by the first stage whose interval
    straddles it.

    Returns:
        ``(result, index of the deciding stage)`` (None when there are no stages or no intervals).
    """
    if not stages or any(not (np.isfinite(low) and np.isfinite(high)) for low, high in intervals):
        return INCONCLUSIVE, None
    for i, (low, _) in enumerate(intervals):
        if low > SURVIVES:
            return FAILS, i
    if all(high < SURVIVES for _, high in intervals):
        return PASSES, int(np.argmax([high for _, high in intervals]))
    return INCONCLUSIVE, next(i for i, (_, high) in enumerate(intervals) if not high < SURVIVES)


def trust_figures(faithful: dict[str, Any], sanity: dict[str, Any], *, seed: int = 0) -> dict[str, Any]:
    """The trust figures of one set of maps, each mean with its 95 % studentized-bootstrap interval over the images,
    and the verdict read from the intervals.

    Args:
        faithful: :func:`deletion_insertion`'s result.
        sanity: :func:`randomization_test`'s result on the same images (its intervals are seeded by its own seed).
        seed: Seeds the bootstrap of the AUCs and gains.

    Returns:
        :data:`TRUST_KEYS` (``trust_verdict`` is :data:`FAITHFUL`, :data:`NOT_FAITHFUL` or :data:`INCONCLUSIVE`;
        ``sanity_result`` ``passes``/``fails``/``inconclusive`` and ``sanity_stage`` the stage that decided it, whose
        figure ``sanity_rank_corr``/``_ci`` are), ``*_auc_ci`` for the four AUCs, ``sanity_rank_corr_per_stage`` with
        ``sanity_rank_corr_ci_per_stage``, ``sanity_stages``, ``null_resolution``, ``trust_reasons`` (why the
        verdict is not ``faithful``, in words) and ``trust_borderline`` (:func:`borderline`).
    """
    per_image = {key: faithful[f"{key}_per_image"] for key in AUC_KEYS}
    gains = {"deletion_gain": per_image["deletion_auc_random"] - per_image["deletion_auc"],
             "insertion_gain": per_image["insertion_auc"] - per_image["insertion_auc_random"]}
    figures: dict[str, Any] = {}
    for key, values in {**per_image, **gains}.items():
        figures[key] = float(values.mean()) if len(values) else float("nan")
        figures[f"{key}_ci"] = _interval(values, seed)
    stages, intervals = list(sanity["stages"]), sanity["rank_corr_ci_per_stage"]
    result, decided = sanity_check(stages, intervals)
    at = decided if decided is not None else len(stages) - 1
    figures.update(sanity_stages=stages, sanity_rank_corr_per_stage=list(sanity["rank_corr_per_stage"]),
                   sanity_rank_corr_ci_per_stage=intervals, sanity_result=result,
                   sanity_stage=stages[at] if stages else None,
                   sanity_rank_corr=sanity["rank_corr_per_stage"][at] if stages else float("nan"),
                   sanity_rank_corr_ci=list(intervals[at]) if stages else [math.nan, math.nan],
                   null_resolution=faithful.get("null_resolution"),
                   trust_images=len(per_image["deletion_auc"]))
    figures["trust_verdict"], figures["trust_reasons"] = verdict(figures)
    figures["trust_borderline"] = borderline(figures, gains, sanity.get("rank_corr_per_image"), seed)
    return figures


def borderline(figures: dict[str, Any], gains: dict[str, Tensor], rank_corr_per_image: Tensor | None,
               seed: int) -> dict[str, Any] | None:
    """Whether a decided verdict (faithful or not faithful) is borderline: it rests on single images. The figures
    are recomputed with each image left out in turn (same bootstrap seed, same rules); when any of those verdicts
    differs, the decided one hangs on an interval end that touches its threshold (the README's first run: deletion
    gain 0.019 [0.010, 0.031] against 0.01), and one image more or less would have changed it.

    Returns:
        None when it is not borderline (or the verdict is inconclusive already, or there are under 3 images);
        else ``{"images": N, "other": how many leave-one-out verdicts differ, "verdict": the commonest other one,
        "reasons": its reasons}``.
    """
    decided, n = figures["trust_verdict"], figures["trust_images"]
    if decided == INCONCLUSIVE or rank_corr_per_image is None or n < 3:
        return None
    others = []
    for left_out in range(n):
        keep = torch.arange(n) != left_out
        intervals = correlation_interval(rank_corr_per_image[:, keep], seed=seed, axis=1)
        again = {**{f"{key}_ci": _interval(values[keep], seed) for key, values in gains.items()},
                 "sanity_stages": figures["sanity_stages"], "trust_images": n,  # the count rule is not what is probed
                 "sanity_rank_corr_ci_per_stage": [[float(low), float(high)] for low, high in intervals.T]}
        outcome = verdict(again)
        if outcome[0] != decided:
            others.append(outcome)
    if not others:
        return None
    commonest = max({v for v, _ in others}, key=[v for v, _ in others].count)
    return {"images": n, "other": len(others), "verdict": commonest,
            "reasons": next(reasons for v, reasons in others if v == commonest)}


def borderline_words(figures: dict[str, Any]) -> str:
    """``borderline: leaving out one image makes it inconclusive for 3 of the 64 (the deletion gain interval straddles
    0.01)``, or empty when the verdict is not borderline."""
    found = figures.get("trust_borderline")
    if not found:
        return ""
    why = f" ({'; '.join(found['reasons'])})" if found["reasons"] else ""
    return (f"borderline: leaving out one image makes it {found['verdict']} for {found['other']} of the "
            f"{found['images']}{why}")


def verdict(figures: dict[str, Any]) -> tuple[str, list[str]]:
    """Faithful, not faithful or inconclusive, from the intervals (see the module doc), and the reasons.

    Args:
        figures: ``deletion_gain_ci``, ``insertion_gain_ci`` (``[low, high]``), the cascade's ``sanity_stages`` and
            ``sanity_rank_corr_ci_per_stage``, and ``trust_images`` when known (fewer than :data:`MIN_IMAGES`:
            inconclusive, whatever the intervals).

    Returns:
        ``(verdict, reasons)``: the reasons say which interval decided a verdict other than :data:`FAITHFUL`.
    """
    below, straddles = [], []
    for name in ("deletion", "insertion"):
        low, high = figures[f"{name}_gain_ci"]
        if high < SMALLEST_GAIN:
            below.append(name)
        elif not low > SMALLEST_GAIN:  # also NaN: no images, no evidence
            straddles.append(name)
    stages, intervals = figures["sanity_stages"], figures["sanity_rank_corr_ci_per_stage"]
    result, at = sanity_check(stages, intervals)
    where = ("no stage" if at is None else f"the head ({stages[at]})" if at == 0 else
             f"the model down to {stages[at]} (stage {at + 1} of {len(stages)})")
    reasons = []
    if below:
        reasons.append(f"no better than random maps at {' and '.join(below)} (the gain's interval lies "
                       f"below {SMALLEST_GAIN}, the smallest gain that matters)")
    if result == FAILS:
        low, high = intervals[at]
        reasons.append(f"the maps survive randomizing {where}: rank corr [{low:.2f}, {high:.2f}] "
                       f"above {SURVIVES}, so they show the image more than the model")
    images = figures.get("trust_images")
    if images is not None and images < MIN_IMAGES:
        return INCONCLUSIVE, [f"only {images} images: intervals from fewer than {MIN_IMAGES} do not hold their 95%"]
    if below or result == FAILS:
        return NOT_FAITHFUL, reasons
    if straddles:
        reasons.append(f"the {' and '.join(straddles)} gain interval{'s' if len(straddles) > 1 else ''} "
                       f"straddle{'' if len(straddles) > 1 else 's'} {SMALLEST_GAIN}")
    if result != PASSES:
        reasons.append(f"the randomization rank corr interval straddles {SURVIVES} after randomizing {where}")
    return (INCONCLUSIVE, reasons) if reasons else (FAITHFUL, [])


def _ci(interval: Sequence[float]) -> str:
    return f"[{interval[0]:.3f}, {interval[1]:.3f}]"


def verdict_line(figures: dict[str, Any], method: str) -> str:
    """The one line a user reads: the verdict, the gains and the deciding randomization stage with their intervals,
    and why. ``not faithful`` and ``inconclusive`` lines start with ``warning:``; ``inconclusive`` says how to
    decide."""
    n = figures["trust_images"]
    stage = figures.get("sanity_stage")
    numbers = (f"{method} on {n} images: deletion gain {figures['deletion_gain']:.3f} "
               f"{_ci(figures['deletion_gain_ci'])}, insertion gain {figures['insertion_gain']:.3f} "
               f"{_ci(figures['insertion_gain_ci'])} (AUC over smooth random maps; above {SMALLEST_GAIN} counts), "
               f"randomization {figures['sanity_result']} at {stage}: rank corr {figures['sanity_rank_corr']:.2f} "
               f"{_ci(figures['sanity_rank_corr_ci'])} (every stage below {SURVIVES} passes) "
               f"[95% intervals, {COVERAGE}]")
    outcome, close = figures["trust_verdict"], borderline_words(figures)
    advice = (f"; measure more images with --trust_images {max(4 * n, 64)}"
              if (outcome == INCONCLUSIVE or close) and figures.get("trust_available", n + 1) > n else "")
    if outcome == FAITHFUL and not close:
        return f"trust: {FAITHFUL} — {numbers}: the maps follow the model"
    if outcome == FAITHFUL:  # faithful, but on an interval end that touches its threshold
        return f"warning: trust: {FAITHFUL}, borderline — {numbers}: the maps follow the model; {close}{advice}"
    head = f"{outcome}, borderline" if close else outcome
    reasons = "; ".join(figures["trust_reasons"] + ([close] if close else []))
    return f"warning: trust: {head} — {numbers}: {reasons}{advice}"


def holm(p_values: Sequence[float]) -> list[float]:
    """Holm's step-down adjusted p-values (Holm 1979): the k-th smallest p times (m − k + 1), made monotone,
    capped at 1. Controls the chance of any false separation among all the comparisons at the chosen level."""
    m = len(p_values)
    order = np.argsort(p_values, kind="stable")
    adjusted, running = np.empty(m), 0.0
    for k, i in enumerate(order):
        running = max(running, min(1.0, (m - k) * p_values[i]))
        adjusted[i] = running
    return adjusted.tolist()


def paired_differences(per_image: dict[str, dict[str, Tensor]], *, seed: int = 0,
                       alpha: float = 1 - CONFIDENCE) -> list[dict[str, Any]]:
    """Every pair of methods compared on the same images, by metric: the per-image difference in deletion AUC
    (``b − a``: positive when ``a`` deletes the evidence faster) and in insertion AUC (``a − b``: positive when ``a``
    restores it faster), its mean, studentized-bootstrap p-value and Holm-adjusted p-value over all pairs × both
    metrics, and an interval at the level Holm's procedure tested it at (so the interval excludes 0 exactly when the
    difference separates the pair). ``favours`` names the better method when it does, else None.

    Args:
        per_image: Per method (in order), its ``deletion`` and ``insertion`` AUC per image ``[N]``, same images.
    """
    methods = list(per_image)
    pairs = []
    for i, a in enumerate(methods):
        for b in methods[i + 1:]:
            for metric in ("deletion", "insertion"):
                diff = per_image[b][metric] - per_image[a][metric]
                diff = diff if metric == "deletion" else -diff
                pairs.append({"a": a, "b": b, "metric": metric, "difference": float(diff.mean()),
                              "p": bootstrap_p_value(diff, seed=seed), "values": diff})
    adjusted = holm([pair["p"] for pair in pairs])
    order = np.argsort([pair["p"] for pair in pairs], kind="stable")
    m, stopped = len(pairs), None
    for k, index in enumerate(order):  # the level Holm tests each at; after the first failure, that level throughout
        pair = pairs[index]
        level = alpha / (m - (stopped if stopped is not None else k))
        if stopped is None and not adjusted[index] < alpha:
            stopped, level = k, alpha / (m - k)
        low, high = bootstrap_interval(pair.pop("values"), seed=seed, confidence=1 - level)
        separated = bool(adjusted[index] < alpha)
        pair.update(p_holm=adjusted[index], ci=[float(low), float(high)], confidence=1 - level,
                    favours=(pair["a"] if pair["difference"] > 0 else pair["b"]) if separated else None)
    return pairs


def rank_methods(rows: list[dict[str, Any]], pairs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """A partial order of CAM methods from their paired differences (:func:`paired_differences`).

    Method A is above B when a paired difference favours A (Holm-corrected) and none favours B, and A does not fail
    the randomization check while B passes it (a method whose maps do not follow the model is never placed above one
    whose maps do). Each row gets ``above`` (the methods it is above) and ``below`` (those above it); ``rank`` is 1 +
    the number of methods above it, so two methods with the same rank are not thereby tied, and a lower rank is not
    "better" than a method it is not above: read ``above``/``below``. Sorted by rank, then by the mean gains (an order
    the reader is told is not a ranking).
    """
    by_name = {row["method"]: row for row in rows}

    def above(a: str, b: str) -> bool:
        wins = [p for p in pairs if {p["a"], p["b"]} == {a, b} and p["favours"] is not None]
        if not wins or any(p["favours"] == b for p in wins):
            return False
        return not (by_name[a]["sanity_result"] == FAILS and by_name[b]["sanity_result"] == PASSES)

    for row in rows:
        row["above"] = [o["method"] for o in rows if o is not row and above(row["method"], o["method"])]
        row["below"] = [o["method"] for o in rows if o is not row and above(o["method"], row["method"])]
        row["rank"] = 1 + len(row["below"])
    return sorted(rows, key=lambda r: (r["rank"], -(r["deletion_gain"] + r["insertion_gain"])))


def compare_methods(model: nn.Module, images: Tensor, class_idx: Sequence[int] | Tensor, methods: Sequence[str],
                    layer: str | Sequence[str] = "layer4", *, steps: int = 16, seed: int = 0,
                    batch_size: int = 256) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Every CAM method on the same images and classes: its trust figures with intervals (:func:`trust_figures`,
    against the same smooth random maps for every method), the seconds per image of the maps themselves, the paired
    per-image differences of every pair (:func:`paired_differences`) and the partial order they support
    (:func:`rank_methods`).

    Returns:
        ``(rows, pairs)``: one row per method, by rank — ``method``, ``rank``, ``above``, ``below``, the figures of
        :func:`trust_figures`, ``seconds_per_image`` and ``cams`` (``[N, H, W]``, CPU); and the pairs.
    """
    if len(set(methods)) != len(methods):
        raise ValueError(f"methods must differ, got {list(methods)}")
    model = unwrap(model)
    classes = torch.as_tensor(class_idx).long().flatten()
    resolution = cam_resolution(model, layer, images.shape[-2:])
    rows, per_image = [], {}
    for method in methods:
        start = time.perf_counter()
        cams = compute_cams(model, images, classes, method=method, layer=layer, batch_size=batch_size)
        seconds = time.perf_counter() - start
        faithful = deletion_insertion(model, images, classes, cams, steps, batch_size=batch_size, seed=seed,
                                      null_resolution=resolution)
        sanity = randomization_test(model, images, classes, method, layer, seed=seed, batch_size=batch_size,
                                    original=cams)
        per_image[method] = {"deletion": faithful["deletion_auc_per_image"],
                             "insertion": faithful["insertion_auc_per_image"]}
        rows.append({"method": method, **trust_figures(faithful, sanity, seed=seed),
                     "seconds_per_image": seconds / max(len(images), 1), "cams": cams.cpu()})
    pairs = paired_differences(per_image, seed=seed)
    return rank_methods(rows, pairs), pairs
