"""Label issues as outputs: ``label_issues.json``, ``label_issues.png`` and the W&B Table ``explain/label_issues``.

:func:`report_label_issues` is what :func:`explain.report.explain_model` calls after the mistakes, on what
:func:`explain.labels.find_label_issues` found on the same images. The table lists the likeliest label errors first:
``image`` (the 32×32 uint8 image, lossless), ``given`` (the class it is filed under), ``suggested`` (the class the
model believes), ``quality`` (cleanlab's label quality; low = likely wrong), ``p_given``, ``p_suggested``, and
``gradcam_suggested``, the CAM of the suggested class: where the model sees it.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from explain.cam import compute_cams
from explain.figures import ALPHA, COLORMAP, DPI, SCALE, label_issues_figure
from explain.labels import CONFUSION_FACTOR, LabelIssues, issue_entries
from explain.overlay import overlay_cam, to_hwc_uint8
from train.data import Dataset
from train.files import write_json

__all__ = ["LABEL_COLUMNS", "LABEL_KEYS", "PNG_ISSUES", "known_cams", "label_issues_line", "mistake_columns",
           "picture_warning", "report_label_issues"]

LABEL_COLUMNS = ("index", "file", "image", "given", "suggested", "quality", "p_given", "p_suggested",
                 "gradcam_suggested")
# also in the W&B summary as explain/<key> (train/run.py and explain.report set them from this tuple)
LABEL_KEYS = ("label_issues", "label_issues_checked", "label_issues_in_sample", "label_issues_expected_if_clean",
              "label_issues_mostly_confusions")
PNG_ISSUES = 32  # label issues drawn in label_issues.png: 4 rows of 8, readable at screen size
# Rows of the W&B table: each needs the CAM of its suggested class (unless it is an explained mistake's) and two
# images; with label_issues.png they are the feature's whole cost, ~0.5 s on a 2-core CPU (bench/label_issue_cost.py).
# label_issues.json lists every flagged image.
TABLE_ISSUES = 32


def mistake_columns(issues: LabelIssues | None, chosen: Tensor) -> list[dict[str, Any]]:
    """Per explained mistake (``chosen`` positions), the ``label_quality`` and ``likely_label_error`` columns of
    ``explain/misclassified``; None in both when label issues were not checked."""
    if issues is None:
        return [{"label_quality": None, "likely_label_error": None} for _ in range(len(chosen))]
    return [{"label_quality": float(issues.quality[i]), "likely_label_error": bool(issues.flagged[i])}
            for i in chosen.tolist()]


def known_cams(chosen: Tensor, classes: Tensor, cams: Tensor) -> dict[tuple[int, int], Tensor]:
    """CAMs already computed for the mistakes, keyed by (position, class), so the table does not compute them twice
    (a label issue is most often a confident mistake, and its suggested class the prediction)."""
    return {(int(p), int(c)): cam for p, c, cam in zip(chosen.tolist(), classes.tolist(), cams, strict=True)}


def label_issues_line(result: dict[str, Any], out_dir: Path) -> str:
    """The printed line: how many of the checked images look mislabelled, and where the list is (and, on images the
    model trained on, that the flags are in-sample)."""
    in_sample = (" (in-sample: the model trained on these labels, so the flags are not to be trusted)"
                 if result.get("label_issues_in_sample") else "")
    return (f"label issues: {result['label_issues']:,} of {result['label_issues_checked']:,} checked images look "
            f"mislabelled (cleanlab){in_sample}; likeliest first in {out_dir / 'label_issues.json'} and "
            f"label_issues.png")


def picture_warning(issues: LabelIssues) -> str | None:
    """The red line under ``label_issues.png``'s title when the flags are mostly the model's own confusions
    (:attr:`~explain.labels.LabelIssues.mostly_confusions`), with the numbers."""
    if not issues.mostly_confusions:
        return None
    return (f"{len(issues.ranked):,} flagged, at most {CONFUSION_FACTOR}× the ~{issues.expected_if_clean:,.0f} this "
            f"model would flag on clean labels: mostly its own confusions (it agrees with {issues.accuracy:.0%} of "
            f"the labels)")


def report_label_issues(model: nn.Module, split: Dataset, issues: LabelIssues, positions: Tensor, *, out_dir: Path,
                        row: dict[str, Any] | None, cam_method: str, layers: Sequence[str],
                        device: torch.device, limit: int,
                        known: dict[tuple[int, int], Tensor] | None = None) -> dict[str, Any]:
    """Write ``label_issues.json`` (``method``, ``checked``, ``in_sample``, ``expected_if_clean``,
    ``mostly_confusions`` and every flagged image under ``issues``) and ``label_issues.png`` (the first
    :data:`PNG_ISSUES`), and put the first ``limit`` into the W&B ``row`` (when given) as the Table
    ``explain/label_issues``.

    Args:
        model: The classifier (unwrapped), for the CAMs of the suggested classes.
        split: The checked images, in the order of ``issues``; its ``files`` name them in the JSON.
        issues: :func:`explain.labels.find_label_issues` on ``split``.
        positions: Per image of ``split``, its position in the full split.
        out_dir: Where the files go.
        row: The explain step's open W&B row, or None when untracked.
        cam_method, layers: The CAM settings of the explain step.
        device: Where the CAMs are computed.
        limit: Rows of the W&B table (the explain step's ``samples``, at most :data:`TABLE_ISSUES`).
        known: CAMs already computed, by (position in ``split``, class) (:func:`known_cams`).

    Returns:
        ``label_issues`` (flagged count), ``label_issues_checked``, ``label_issues_in_sample`` (the model trained on
        these images: the flags are not to be trusted), ``label_issues_expected_if_clean`` (the flags this model would
        give if the labels were clean), ``label_issues_mostly_confusions`` (at most
        :data:`~explain.labels.CONFUSION_FACTOR` × that), ``label_issues_method``, ``label_issues_png``,
        ``label_issues_notes`` (the :class:`~explain.labels.LabelIssues` notes, for ``warning:`` lines) and
        ``label_issues_line`` (:func:`label_issues_line`).
    """
    limit = min(limit, TABLE_ISSUES)
    entries = issue_entries(issues, split.classes, positions, split.files)
    expected = round(issues.expected_if_clean, 1)  # a mean of CLEAN_DRAWS counts: tenths say all it holds
    write_json(out_dir / "label_issues.json", {"method": issues.method, "checked": issues.checked,
                                               "in_sample": issues.in_sample, "expected_if_clean": expected,
                                               "mostly_confusions": issues.mostly_confusions, "issues": entries})
    top = issues.ranked[:max(limit, PNG_ISSUES) if row is not None else PNG_ISSUES]
    pixels = to_hwc_uint8(split.images[torch.as_tensor(top, dtype=torch.long)])
    shown = [{**entry, "image": pixels[i]} for i, entry in enumerate(entries[:PNG_ISSUES])]
    png = out_dir / "label_issues.png"
    label_issues_figure(shown, len(entries), issues.checked, picture_warning(issues),
                        in_sample=issues.in_sample).savefig(png, dpi=DPI)
    result = {"label_issues": len(entries), "label_issues_checked": issues.checked,
              "label_issues_in_sample": issues.in_sample, "label_issues_expected_if_clean": expected,
              "label_issues_mostly_confusions": issues.mostly_confusions,
              "label_issues_method": issues.method, "label_issues_png": str(png),
              "label_issues_notes": list(issues.notes)}
    result["label_issues_line"] = label_issues_line(result, out_dir)
    if row is not None:
        rows = top[:limit]
        row["explain/label_issues"] = _table(model, split, rows, entries, pixels, issues.suggested[rows],
                                             cam_method, layers, device, known or {})
    return result


def _table(model: nn.Module, split: Dataset, rows: np.ndarray, entries: list[dict[str, Any]], pixels: np.ndarray,
           suggested: np.ndarray, cam_method: str, layers: Sequence[str], device: torch.device,
           known: dict[tuple[int, int], Tensor]) -> Any:
    """The W&B Table ``explain/label_issues``; CAMs of the suggested class, computed only where not ``known``."""
    import wandb

    table = wandb.Table(columns=list(LABEL_COLUMNS))
    if not len(rows):
        return table
    keys = [(int(p), int(c)) for p, c in zip(rows.tolist(), suggested.tolist(), strict=True)]
    missing = [i for i, key in enumerate(keys) if key not in known]
    if missing:
        index = torch.as_tensor([keys[i][0] for i in missing], dtype=torch.long)
        computed = compute_cams(model, split.images[index].to(device), torch.as_tensor([keys[i][1] for i in missing]),
                                method=cam_method, layer=list(layers)).cpu()
        known = {**known, **{keys[i]: cam for i, cam in zip(missing, computed, strict=True)}}
    cams = torch.stack([known[key].cpu() for key in keys])
    overlays = overlay_cam(split.images[torch.as_tensor(rows, dtype=torch.long)], cams, alpha=ALPHA,
                           colormap=COLORMAP, scale=SCALE)
    for i, entry in enumerate(entries[:len(rows)]):
        cells = {**entry, "image": wandb.Image(pixels[i]), "gradcam_suggested": wandb.Image(overlays[i])}
        table.add_data(*[cells[c] for c in LABEL_COLUMNS])
    return table
