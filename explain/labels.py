"""Label issues: the images whose given label is likely wrong — the data's mistakes, not the model's.

Confident learning (Northcutt et al., "Confident Learning: Estimating Uncertainty in Dataset Labels", JAIR 2021),
as implemented by cleanlab, on out-of-sample class probabilities: per class it estimates how often a given label
stands for another true class (the confident joint), and flags as many images per (given, true) pair as that
estimate says, those where the other class beats the given one by the widest margin. Plain numbers in and out: no
wandb, no matplotlib (:mod:`explain.report_labels` turns them into the JSON, the picture and the W&B table).

Example:
    ```python
    from explain.labels import find_label_issues, probabilities
    issues = find_label_issues(probabilities(logits, flipped_logits), labels)
    issues.ranked  # positions of the flagged images, likeliest label errors first
    ```
"""

from __future__ import annotations

import importlib.metadata
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor

__all__ = ["CLEAN_DRAWS", "CONFUSION_FACTOR", "FILTER_BY", "FLOOR_QUANTILE", "MAX_SMOOTHING", "METHOD", "RANK_BY",
           "LabelIssues", "expected_if_clean", "find_label_issues", "issue_entries", "probabilities", "without_floor"]

# Which images are flagged: per given class k, as many images as the confident joint says class k holds label errors
# (the off-diagonal sum of its row), those with the lowest p(k). Chosen against people's verdicts
# (bench/label_quality.py on the dev half of the human-checked CIFAR-10 test candidates, BENCHMARKS.md): on the
# 20-epoch default run it flags the same 337 images' worth as cleanlab's default "prune_by_noise_rate" (per cell
# (k, j), the largest p(j) - p(k)) and finds 10 of the 27 human-confirmed errors instead of 7 for one more kept label
# (31 vs 30 of 111); in each of the other views and probability variants it gained 3-5 errors for at most as many
# kept labels. Both are confident learning's own filters (Northcutt et al., 2021).
FILTER_BY = "prune_by_class"
# How they are ranked: the normalized margin p(given) - max p(other), rescaled to [0, 1]. It is the margin the filter
# flags by, and it asks what a label error is — "another class fits better than the given one" — while
# self_confidence (p(given) alone) also sinks images that fit no class or two classes equally (ambiguous blends,
# outliers), which no relabelling fixes. cleanlab's documentation recommends it for exactly this case.
RANK_BY = "normalized_margin"
METHOD = (f"cleanlab {importlib.metadata.version('cleanlab')} find_label_issues(filter_by='{FILTER_BY}') + "
          f"get_label_quality_scores(method='{RANK_BY}')")
# When are the flags mostly the model's own confusions? Confident learning flags the images where another class beats
# the given one, and a model that confuses classes flags many even when every label is right: on simulated 10-class
# models whose probabilities are calibrated, clean labels get ~12 % of the images flagged at 80 % accuracy, ~9 % at
# 85 %, ~5 % at 90 %, ~2.5 % at 95 % (tests/test_labels.py) — no fixed share tells confusions from label errors. So
# the count is compared with what this same model, at its actual accuracy, would flag if the labels were clean:
# cleanlab's own find_label_issues on labels drawn from the model's probabilities (:func:`expected_if_clean`).
# The assumption is calibration: among images given probabilities p, the true class is k a share p_k of the time; then
# labels drawn from p are distributed as clean labels are, by construction, and the mean count over CLEAN_DRAWS seeded
# draws is what clean labels would get. An overconfident model (long-trained deep nets: Guo et al., "On Calibration of
# Modern Neural Networks", ICML 2017) makes the draws agree with its argmax too often, so the expectation is low and
# the rule fires less often than it should; an underconfident one the reverse. Label smoothing's floor under every
# class is the one miscalibration corrected for (:func:`without_floor`): it is this project's default and it would
# quadruple the expectation. Why CONFUSION_FACTOR = 2: with wrong labels, flags ≈ confusions + errors found, so at most
# 2× the expectation the errors (observed − expected) are no more than the confusions: at least half of the flags are
# what clean labels would give. (Noisy labels also raise cleanlab's noise estimate, and with it the confusions it flags,
# a little: in the simulations the verdict turns where ~55-60 % of the flags are confusions.) Cost: CLEAN_DRAWS more
# cleanlab calls, 62 ms for all five on 10,000 images × 10 classes (best of 15, on 2 CPU cores shared with a training
# run; one call is ~6 ms).
CLEAN_DRAWS = 5
CONFUSION_FACTOR = 2
# The label smoothing floor under every class (:func:`without_floor`): this quantile of the images' smallest class
# probability, at most MAX_SMOOTHING / C (twice the usual ε = 0.1, Szegedy et al. 2016, and this project's default).
FLOOR_QUANTILE = 0.05
MAX_SMOOTHING = 0.2


@dataclass
class LabelIssues:
    """cleanlab's verdict on every checked image (arrays indexed like the probabilities given)."""

    labels: np.ndarray  # int64 [N], the given classes
    probs: np.ndarray  # float32 [N, C], the out-of-sample probabilities cleanlab saw
    quality: np.ndarray  # float [N], label quality in [0, 1]: low = likely a label error
    flagged: np.ndarray  # bool [N], cleanlab's flagged set
    ranked: np.ndarray  # int64 [F], positions of the flagged images, lowest quality (likeliest error) first
    method: str = METHOD
    notes: list[str] = field(default_factory=list)  # what limited the check (e.g. classes with a single image)
    expected_if_clean: float = 0.0  # flags this model would give if the labels were clean (:func:`expected_if_clean`)
    in_sample: bool = False  # the model trained on these images: its probabilities have fit their labels

    @property
    def checked(self) -> int:
        """How many images were checked."""
        return len(self.labels)

    @property
    def suggested(self) -> np.ndarray:
        """int64 [N], the class the model believes (argmax of the probabilities)."""
        return self.probs.argmax(1)

    @property
    def share(self) -> float:
        """The fraction of the checked images that were flagged."""
        return float(self.flagged.mean()) if self.checked else 0.0

    @property
    def accuracy(self) -> float:
        """How often the model's class (the argmax of ``probs``) is the given one."""
        return float((self.suggested == self.labels).mean()) if self.checked else 0.0

    @property
    def mostly_confusions(self) -> bool:
        """Whether the flags are mostly the model's own confusions: some flagged, and no more than
        :data:`CONFUSION_FACTOR` × what clean labels would get from this model (``expected_if_clean``)."""
        return 0 < len(self.ranked) <= CONFUSION_FACTOR * self.expected_if_clean


def probabilities(logits: Tensor, flipped: Tensor | None = None) -> Tensor:
    """Softmax probabilities ``[N, C]`` (float32, CPU) of ``logits``; with the logits of the mirror images, of their
    mean — the flip test-time augmentation ``val/acc`` uses (:func:`train.engine.evaluate`)."""
    mean = logits.float() if flipped is None else (logits.float() + flipped.float()) / 2
    return mean.softmax(1).cpu()


def _cleanlab():
    """cleanlab, imported when first used: it imports scikit-learn, 1.1 s that every start of train/run.py and
    explain/run.py (and their one-line refusals of bad flags) would pay otherwise."""
    import cleanlab.filter
    import cleanlab.rank

    return cleanlab


def _flag(labels: np.ndarray, probs: np.ndarray) -> np.ndarray:
    """cleanlab's flagged set (bool ``[N]``) of ``labels`` under ``probs``, its per-class warnings silenced."""
    with warnings.catch_warnings():
        # cleanlab warns per class of one image ("too few examples"); said once, in `notes`, instead
        warnings.filterwarnings("ignore", message="May not flag all label issues")
        # n_jobs=1: cleanlab's default forks a process pool per call, inside a training process that holds a CUDA
        # context and W&B threads; the per-class work is a sort of that class's images, microseconds at 10 classes
        return _cleanlab().filter.find_label_issues(labels, probs, filter_by=FILTER_BY, n_jobs=1)


def without_floor(probs: np.ndarray) -> np.ndarray:
    """``probs`` less the probability floor that label smoothing puts under every class, renormalized: what the
    labels are drawn from in :func:`expected_if_clean`.

    Label smoothing (``--label_smoothing``, 0.1 by default) trains towards ``(1 - ε) q + ε / C``, so even an image the
    model is sure of keeps ε / C on each other class (0.01 at 10 classes): not a belief that its label might be
    another class but the smoothing target. Labels drawn from such probabilities go to other classes ~ε of the time
    on the easiest images, and cleanlab flags them: at 95 % accuracy ε = 0.1 more than quadruples the expectation,
    enough to call "mostly confusions" a list of which 84 % are planted errors (tests/test_labels.py). cleanlab has no
    notion of it, and the checkpoint's ε is not at hand here, so the floor is read off the probabilities: the 5th
    percentile over the images of their smallest class probability (a smoothed model never goes below ε / C at its
    optimum; the percentile rather than the least value, because a network is not at its optimum everywhere), at most
    :data:`MAX_SMOOTHING` / C — a model that guesses nearly uniformly (untrained) has a high smallest probability that
    is no smoothing floor, and must keep its doubt. Without smoothing the floor is ~0 and changes nothing (under 5 %
    of the expectation on the simulated models).
    """
    if not len(probs):
        return probs.astype(np.float64)
    floor = min(float(np.quantile(probs.min(1), FLOOR_QUANTILE)), MAX_SMOOTHING / probs.shape[1])
    lifted = np.clip(probs.astype(np.float64) - floor, 0.0, None)
    total = lifted.sum(1, keepdims=True)
    # a row at the floor everywhere cannot be lifted: it keeps its probabilities
    return np.where(total > 0, lifted / np.where(total > 0, total, 1.0), probs)


def expected_if_clean(probs: np.ndarray, draws: int = CLEAN_DRAWS, seed: int = 0) -> float:
    """How many images cleanlab would flag under ``probs`` if the labels were clean: the mean count over ``draws``
    seeded sets of labels drawn from the probabilities themselves (less the label smoothing floor,
    :func:`without_floor`), each checked against ``probs`` as the given labels are. Clean by construction for a
    calibrated model; see :data:`CONFUSION_FACTOR`.

    Args:
        probs: float ``[N, C]`` class probabilities, rows summing to 1.
        draws: How many label sets to draw.
        seed: Seeds the draws.
    """
    rng = np.random.default_rng(seed)
    cumulative = without_floor(probs).cumsum(1)
    counts = []
    for _ in range(draws):
        # inverse-CDF sampling of every row in one vectorized step (Generator.choice takes a single p); the uniform
        # is scaled to the row's own sum, so rows summing to just under 1 never draw past the last class
        drawn = (cumulative < rng.random((len(probs), 1)) * cumulative[:, -1:]).sum(1)
        # a draw of a single class has nothing to be confused with (cleanlab refuses it): no flags
        counts.append(int(_flag(drawn, probs).sum()) if len(np.unique(drawn)) > 1 else 0)
    return float(np.mean(counts)) if counts else 0.0


def find_label_issues(probs: Tensor | np.ndarray, labels: Tensor | np.ndarray, *, in_sample: bool = False,
                      draws: int = CLEAN_DRAWS, seed: int = 0) -> LabelIssues:
    """Flag and rank the likely label errors among images of known class probabilities.

    Args:
        probs: ``[N, C]`` class probabilities, out-of-sample (the model never trained on these images; in-sample
            probabilities agree with the given labels and hide their errors).
        labels: ``[N]`` given classes in ``0..C-1``.
        in_sample: The model trained on these images (``explain/run.py --split train`` on its own training folder):
            recorded in the result, for every output to say that the flags are not to be trusted.
        draws, seed: The label sets drawn for ``expected_if_clean`` (:func:`expected_if_clean`).

    Returns:
        The :class:`LabelIssues`: cleanlab's flagged set (:data:`FILTER_BY`) ranked by its label quality score
        (:data:`RANK_BY`), equal scores in input order, and ``expected_if_clean``; its ``notes`` say what limited
        the check, and when the flags are :attr:`~LabelIssues.mostly_confusions`, that (with the numbers).

    Raises:
        ValueError: If the shapes do not match, a label is out of range, or fewer than two classes are present
            (confident learning compares classes).
    """
    probs = np.ascontiguousarray(torch.as_tensor(probs).float().cpu().numpy())
    labels = torch.as_tensor(labels).long().cpu().numpy()
    if probs.ndim != 2 or labels.shape != probs.shape[:1]:
        raise ValueError(f"probs must be [N, C] and labels [N], got {probs.shape} and {labels.shape}")
    if len(labels) and (labels.min() < 0 or labels.max() >= probs.shape[1]):
        raise ValueError(f"labels must be in 0..{probs.shape[1] - 1}")
    present = np.unique(labels)
    if len(present) < 2:
        raise ValueError(f"label issues need images of at least two classes, got {len(present)}")
    counts = np.bincount(labels, minlength=probs.shape[1])
    single = [int(c) for c in present if counts[c] == 1]
    flagged = _flag(labels, probs)
    quality = _cleanlab().rank.get_label_quality_scores(labels, probs, method=RANK_BY)
    where = np.flatnonzero(flagged)
    ranked = where[np.argsort(quality[where], kind="stable")]
    notes = [f"{len(single)} class(es) with a single image cannot be checked (class index "
             f"{', '.join(map(str, single[:10]))})"] if single else []
    issues = LabelIssues(labels, probs, quality, flagged, ranked.astype(np.int64), METHOD, notes,
                         expected_if_clean(probs, draws, seed), in_sample)
    if issues.mostly_confusions:
        issues.notes.append(
            f"{len(ranked):,} flagged, at most {CONFUSION_FACTOR}× the {issues.expected_if_clean:,.1f} this model "
            f"would flag if the labels were clean (labels drawn from its own probabilities, mean of {draws} draws; it "
            f"agrees with {issues.accuracy:.1%} of the labels): at least half of the flags are likely its own "
            f"confusions, not label errors")
    return issues


def issue_entries(issues: LabelIssues, classes: Sequence[str], positions: Sequence[int] | Tensor,
                  files: Sequence[str] | None = None) -> list[dict[str, Any]]:
    """The flagged images, likeliest label errors first, as ``label_issues.json`` lists them.

    Args:
        issues: What :func:`find_label_issues` found.
        classes: Class names, by label.
        positions: Per checked image, its position in the full split (e.g. a ``--test_subset``'s indices).
        files: Per checked image, its file relative to the data root (None: the split has no files, e.g. the
            CIFAR-10 batches).

    Returns:
        Per flagged image: ``index``, ``file`` (or None), ``given``, ``suggested``, ``quality``, ``p_given``,
        ``p_suggested``.
    """
    positions = [int(p) for p in positions]
    suggested = issues.suggested
    entries = []
    for i in issues.ranked.tolist():
        given, best = int(issues.labels[i]), int(suggested[i])
        entries.append({"index": positions[i], "file": files[i] if files is not None else None,
                        "given": classes[given], "suggested": classes[best], "quality": float(issues.quality[i]),
                        "p_given": float(issues.probs[i, given]), "p_suggested": float(issues.probs[i, best])})
    return entries
