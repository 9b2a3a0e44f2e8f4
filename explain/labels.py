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

import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import cleanlab.filter
import cleanlab.rank
import numpy as np
import torch
from torch import Tensor

__all__ = ["FILTER_BY", "METHOD", "PLAUSIBLE_SHARE", "RANK_BY", "LabelIssues", "find_label_issues", "issue_entries",
           "probabilities"]

# Which images are flagged: cleanlab's default and the paper's recommendation. For each off-diagonal cell (given k,
# true j) of the confident joint it flags that many images labelled k with the largest p(j) - p(k): the images where
# another class beats the given one most clearly.
FILTER_BY = "prune_by_noise_rate"
# How they are ranked: the normalized margin p(given) - max p(other), rescaled to [0, 1]. It is the margin the filter
# flags by, and it asks what a label error is — "another class fits better than the given one" — while
# self_confidence (p(given) alone) also sinks images that fit no class or two classes equally (ambiguous blends,
# outliers), which no relabelling fixes. cleanlab's documentation recommends it for exactly this case.
RANK_BY = "normalized_margin"
METHOD = (f"cleanlab {cleanlab.__version__} find_label_issues(filter_by='{FILTER_BY}') + "
          f"get_label_quality_scores(method='{RANK_BY}')")
# The most wrong labels a widely used test set has been found to hold: ~10 % (QuickDraw; CIFAR-10's test set 0.54 %,
# ImageNet's validation set ~6 %), the worst of the ten in Northcutt, Athalye & Mueller, "Pervasive Label Errors in
# Test Sets Destabilize Machine Learning Benchmarks" (NeurIPS 2021), estimated with this same confident learning.
# Flagging a larger share says more about the model than the labels: a model that confuses classes makes its own
# confusions look like wrong labels (an untrained one "flags" most images). Above it the outputs say so.
PLAUSIBLE_SHARE = 0.10


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
    def implausible(self) -> bool:
        """More flagged than any widely used test set holds wrong labels (:data:`PLAUSIBLE_SHARE`): most flags are
        likely the model's own confusions."""
        return self.share > PLAUSIBLE_SHARE


def probabilities(logits: Tensor, flipped: Tensor | None = None) -> Tensor:
    """Softmax probabilities ``[N, C]`` (float32, CPU) of ``logits``; with the logits of the mirror images, of their
    mean — the flip test-time augmentation ``val/acc`` uses (:func:`train.engine.evaluate`)."""
    mean = logits.float() if flipped is None else (logits.float() + flipped.float()) / 2
    return mean.softmax(1).cpu()


def find_label_issues(probs: Tensor | np.ndarray, labels: Tensor | np.ndarray) -> LabelIssues:
    """Flag and rank the likely label errors among images of known class probabilities.

    Args:
        probs: ``[N, C]`` class probabilities, out-of-sample (the model never trained on these images; in-sample
            probabilities agree with the given labels and hide their errors).
        labels: ``[N]`` given classes in ``0..C-1``.

    Returns:
        The :class:`LabelIssues`: cleanlab's flagged set (:data:`FILTER_BY`) ranked by its label quality score
        (:data:`RANK_BY`), equal scores in input order; its ``notes`` say what limited the check, and when more
        than :data:`PLAUSIBLE_SHARE` of the images are flagged, that most flags are then the model's confusions.

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
    with warnings.catch_warnings():
        # cleanlab warns per class of one image ("too few examples"); said once, in `notes`, instead
        warnings.filterwarnings("ignore", message="May not flag all label issues")
        # n_jobs=1: cleanlab's default forks a process pool per call, inside a training process that holds a CUDA
        # context and W&B threads; the per-class work is a sort of that class's images, microseconds at 10 classes
        flagged = cleanlab.filter.find_label_issues(labels, probs, filter_by=FILTER_BY, n_jobs=1)
    quality = cleanlab.rank.get_label_quality_scores(labels, probs, method=RANK_BY)
    where = np.flatnonzero(flagged)
    ranked = where[np.argsort(quality[where], kind="stable")]
    notes = [f"{len(single)} class(es) with a single image cannot be checked (class index "
             f"{', '.join(map(str, single[:10]))})"] if single else []
    issues = LabelIssues(labels, probs, quality, flagged, ranked.astype(np.int64), METHOD, notes)
    if issues.implausible:
        issues.notes.append(
            f"{issues.share:.0%} of the images are flagged, more than the ~{PLAUSIBLE_SHARE:.0%} of wrong labels "
            f"found in the worst of ten widely used test sets (Northcutt et al. 2021): unless these labels are known "
            f"to be that noisy, most flags are the model's own confusions (it agrees with {issues.accuracy:.1%} of "
            f"the labels); read them as label errors once the model is accurate")
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
