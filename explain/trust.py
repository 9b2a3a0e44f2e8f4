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

* :func:`trust_figures` and :func:`verdict` — the figures are statistics over images, so each comes with a 95 %
  bootstrap interval over the images (seeded: the same images give the same interval). The per-image *gains* over
  the random order are paired (same image, same removal): ``deletion_gain`` = random − map deletion AUC,
  ``insertion_gain`` = map − random insertion AUC; both > 0 when the map beats chance. The verdict is read from the
  intervals, never from a point estimate: ``faithful`` (both gain intervals above :data:`SMALLEST_GAIN` and the
  randomization interval below :data:`SURVIVES`), ``not faithful`` (a gain interval below :data:`SMALLEST_GAIN`, or
  the randomization interval above :data:`SURVIVES`: the maps survive it), ``inconclusive`` (an interval straddles
  its threshold: more images are needed).

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
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
import torchvision.transforms.v2.functional as TF
from torch import Tensor, nn

from explain.cam import compute_cams
from train.checkpoint import unwrap

__all__ = ["AUC_KEYS", "CONFIDENCE", "FAITHFUL", "INCONCLUSIVE", "MIN_IMAGES", "NOT_FAITHFUL", "SMALLEST_GAIN",
           "SURVIVES", "TRUST_KEYS", "bootstrap_interval", "compare_methods", "deletion_insertion", "rank_methods",
           "randomization_stages", "randomization_test", "removed", "spearman", "trust_figures", "verdict",
           "verdict_line"]

AUC_KEYS = ("deletion_auc", "deletion_auc_random", "insertion_auc", "insertion_auc_random")
# What the trust step reports (summary.json's explain and the W&B summary as explain/<key>); *_ci are [low, high].
TRUST_KEYS = (*AUC_KEYS, "deletion_gain", "deletion_gain_ci", "insertion_gain", "insertion_gain_ci",
              "sanity_rank_corr", "sanity_rank_corr_ci", "trust_images", "trust_verdict")
CONFIDENCE = 0.95  # of every interval
RESAMPLES = 2000  # bootstrap resamples: the interval's ends move by well under 0.005 AUC between seeds at this count
# The randomization threshold. After every weight of the model is re-initialized, a map that explains the model
# should be unrelated to its original (rank correlation near 0), while a map that only shows the image (its edges,
# its brightness) is unchanged (near 1): Adebayo et al. (2018) find gradient maps of trained models falling towards 0
# and edge detectors staying high. 0.5 is the midpoint: a map still closer to its original than to an unrelated one
# has kept more of its ordering than it lost, so it shows the image more than the model. The decision uses the
# interval: it survives when the whole interval is above 0.5, passes when the whole interval is below.
SURVIVES = 0.5
# The smallest gain that matters. An AUC is the mean probability of the explained class along the curve, so a gain of
# 0.01 means that following the map instead of a random order moves that probability by one percentage point on
# average. Intervals above 0 alone are not enough: Grad-CAM of an untrained resnet18_cifar beats a random order by
# 0.0002 [0.0002, 0.0003] on 32 CIFAR-10 images — real, and a fiftieth of a point of a decision the model never
# made. So the intervals are read against this floor (an equivalence region, as in equivalence testing): a gain
# whose interval lies below it is no gain that matters, one whose interval straddles it is undecided.
SMALLEST_GAIN = 0.01
# A bootstrap interval from a handful of images is far narrower than the truth (the resamples of 3 values are 10
# distinct means): below this many images no verdict other than inconclusive is given.
MIN_IMAGES = 8
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
        ``rank_corr_ci_per_stage`` (its 95 % bootstrap interval over the images, ``[low, high]`` per stage),
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
    intervals = bootstrap_interval(per_image, seed=seed, axis=1) if per_image.numel() else np.full((2, 0), np.nan)
    return {"stages": stages, "rank_corr_per_stage": per_stage,
            "rank_corr_ci_per_stage": [[float(low), float(high)] for low, high in intervals.T],
            "rank_corr": per_stage[-1] if per_stage else float("nan"),
            "rank_corr_ci": [float(x) for x in intervals[:, -1]] if per_image.numel() else [math.nan, math.nan],
            "rank_corr_per_image": per_image, "maps": torch.stack(maps)}


def bootstrap_interval(values: Tensor | np.ndarray, *, seed: int = 0, axis: int = 0) -> np.ndarray:
    """The 95 % percentile-bootstrap interval of the mean of ``values`` over ``axis`` (the images), seeded.

    scipy's :func:`scipy.stats.bootstrap` resamples the images (:data:`RESAMPLES` times); the percentile method is
    used rather than BCa because BCa is undefined when every value is the same (a flat curve point, a map that never
    changes), which trust figures often are.

    Returns:
        ``[low, high]`` (shape ``[2, ...]`` for multi-dimensional ``values``: the interval of each other entry); NaN
        with fewer than two values.
    """
    from scipy.stats import bootstrap  # scipy is imported only when an interval is wanted (seconds at start-up)

    data = np.asarray(values.double().cpu() if isinstance(values, Tensor) else values, dtype=np.float64)
    if data.shape[axis] < 2:
        return np.full((2, *np.delete(data.shape, axis)), np.nan)
    spread = np.ptp(data, axis=axis)
    result = bootstrap((data,), np.mean, n_resamples=RESAMPLES, confidence_level=CONFIDENCE, method="percentile",
                       axis=axis, vectorized=True, rng=np.random.default_rng(seed))
    interval = np.stack([result.confidence_interval.low, result.confidence_interval.high])
    mean = data.mean(axis=axis)
    return np.where(spread == 0, np.stack([mean, mean]), interval)  # all values equal: the interval is the value


def _interval(values: Tensor, seed: int) -> list[float]:
    low, high = bootstrap_interval(values, seed=seed)
    return [float(low), float(high)]


def trust_figures(faithful: dict[str, Any], sanity: dict[str, Any], *, seed: int = 0) -> dict[str, Any]:
    """The trust figures of one set of maps, each mean with its 95 % bootstrap interval over the images, and the
    verdict read from the intervals.

    Args:
        faithful: :func:`deletion_insertion`'s result.
        sanity: :func:`randomization_test`'s result on the same images (its intervals are seeded by its own seed).
        seed: Seeds the bootstrap of the AUCs and gains.

    Returns:
        :data:`TRUST_KEYS` (``trust_verdict`` is :data:`FAITHFUL`, :data:`NOT_FAITHFUL` or :data:`INCONCLUSIVE`),
        ``*_auc_ci`` for the four AUCs, ``sanity_rank_corr_per_stage`` with ``sanity_rank_corr_ci_per_stage``,
        ``sanity_stages`` and ``trust_reasons`` (why the verdict is not ``faithful``, in words).
    """
    per_image = {key: faithful[f"{key}_per_image"] for key in AUC_KEYS}
    gains = {"deletion_gain": per_image["deletion_auc_random"] - per_image["deletion_auc"],
             "insertion_gain": per_image["insertion_auc"] - per_image["insertion_auc_random"]}
    figures: dict[str, Any] = {}
    for key, values in {**per_image, **gains}.items():
        figures[key] = float(values.mean()) if len(values) else float("nan")
        figures[f"{key}_ci"] = _interval(values, seed)
    figures.update(sanity_rank_corr=sanity["rank_corr"], sanity_rank_corr_ci=sanity["rank_corr_ci"],
                   sanity_stages=list(sanity["stages"]), sanity_rank_corr_per_stage=list(sanity["rank_corr_per_stage"]),
                   sanity_rank_corr_ci_per_stage=sanity["rank_corr_ci_per_stage"],
                   trust_images=len(per_image["deletion_auc"]))
    figures["trust_verdict"], figures["trust_reasons"] = verdict(figures)
    return figures


def verdict(figures: dict[str, Any]) -> tuple[str, list[str]]:
    """Faithful, not faithful or inconclusive, from the intervals (see the module doc), and the reasons.

    Args:
        figures: ``deletion_gain_ci``, ``insertion_gain_ci`` and ``sanity_rank_corr_ci`` (``[low, high]``), and
            ``trust_images`` when known (fewer than :data:`MIN_IMAGES`: inconclusive, whatever the intervals).

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
    low, high = figures["sanity_rank_corr_ci"]
    survives, unsure = low > SURVIVES, not high < SURVIVES and not low > SURVIVES
    reasons = []
    if below:
        reasons.append(f"no better than a random pixel order at {' and '.join(below)} (the gain's interval lies "
                       f"below {SMALLEST_GAIN}, the smallest gain that matters)")
    if survives:
        reasons.append(f"the maps survive randomizing the model (rank corr interval above {SURVIVES}): they show the "
                       f"image more than the model")
    images = figures.get("trust_images")
    if images is not None and images < MIN_IMAGES:
        return INCONCLUSIVE, [f"only {images} images: intervals from fewer than {MIN_IMAGES} are not reliable"]
    if below or survives:
        return NOT_FAITHFUL, reasons
    if straddles:
        reasons.append(f"the {' and '.join(straddles)} gain interval{'s' if len(straddles) > 1 else ''} "
                       f"straddle{'' if len(straddles) > 1 else 's'} {SMALLEST_GAIN}")
    if unsure:
        reasons.append(f"the randomization rank corr interval straddles {SURVIVES}")
    return (INCONCLUSIVE, reasons) if reasons else (FAITHFUL, [])


def _ci(interval: Sequence[float]) -> str:
    return f"[{interval[0]:.3f}, {interval[1]:.3f}]"


def verdict_line(figures: dict[str, Any], method: str) -> str:
    """The one line a user reads: the verdict, the gains and rank correlation with their intervals, and why.

    ``not faithful`` and ``inconclusive`` lines start with ``warning:``; ``inconclusive`` says how to decide.
    """
    n = figures["trust_images"]
    numbers = (f"{method} on {n} images: deletion gain {figures['deletion_gain']:.3f} "
               f"{_ci(figures['deletion_gain_ci'])}, insertion gain {figures['insertion_gain']:.3f} "
               f"{_ci(figures['insertion_gain_ci'])} (AUC over a random pixel order, 95% intervals; above "
               f"{SMALLEST_GAIN} counts), randomization rank corr {figures['sanity_rank_corr']:.2f} "
               f"{_ci(figures['sanity_rank_corr_ci'])} (below {SURVIVES} passes)")
    outcome = figures["trust_verdict"]
    if outcome == FAITHFUL:
        return f"trust: {FAITHFUL} — {numbers}: the maps follow the model"
    advice = f"; measure more images with --trust_images {max(4 * n, 64)}" if outcome == INCONCLUSIVE else ""
    return f"warning: trust: {outcome} — {numbers}: {'; '.join(figures['trust_reasons'])}{advice}"


def rank_methods(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Rank CAM methods only as far as their gain intervals separate them.

    Method A is above B when one of A's gain intervals (deletion or insertion) lies entirely above B's and neither
    lies entirely below; a method's ``rank`` is 1 + the number of methods above it, so methods the intervals do not
    separate share a rank (``tied`` is then True). Sorted by rank, then by the mean gains (an order the reader is
    told is not a ranking within a tie).
    """
    def above(a: dict[str, Any], b: dict[str, Any]) -> bool:
        sides = [(a[f"{g}_gain_ci"][0] > b[f"{g}_gain_ci"][1], b[f"{g}_gain_ci"][0] > a[f"{g}_gain_ci"][1])
                 for g in ("deletion", "insertion")]
        return any(win for win, _ in sides) and not any(loss for _, loss in sides)

    for row in rows:
        row["rank"] = 1 + sum(above(other, row) for other in rows if other is not row)
    for row in rows:
        row["tied"] = sum(other["rank"] == row["rank"] for other in rows) > 1
    return sorted(rows, key=lambda r: (r["rank"], -(r["deletion_gain"] + r["insertion_gain"])))


def compare_methods(model: nn.Module, images: Tensor, class_idx: Sequence[int] | Tensor, methods: Sequence[str],
                    layer: str | Sequence[str] = "layer4", *, steps: int = 16, seed: int = 0,
                    batch_size: int = 256) -> list[dict[str, Any]]:
    """Every CAM method on the same images and classes: its trust figures with intervals (:func:`trust_figures`),
    the seconds per image of the maps themselves, and a rank that claims only what the intervals separate
    (:func:`rank_methods`).

    Returns:
        One row per method, by rank: ``method``, ``rank``, ``tied``, the figures of :func:`trust_figures`,
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
        rows.append({"method": method, **trust_figures(faithful, sanity, seed=seed),
                     "seconds_per_image": seconds / max(len(images), 1), "cams": cams.cpu()})
    return rank_methods(rows)
