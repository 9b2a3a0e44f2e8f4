"""Reports of a classifier's mistakes: the W&B table of the most confident ones with Grad-CAMs, the confusion matrix,
per-class accuracy and the most confused pairs, and the same pictures as PNG files. The only explain module that
imports wandb.

:func:`explain_model` is what a training run calls at its end (``explain_samples > 0``; the caller skips it at 0)
and what ``explain/run.py`` calls on a checkpoint. It logs one W&B row:

* ``explain/misclassified`` — a Table of the ``samples`` most confident mistakes, most confident first, with the
  columns :data:`COLUMNS`. ``image`` is the unmodified 32×32 uint8 test image (W&B stores it as PNG: lossless);
  ``gradcam_pred`` / ``gradcam_true`` are CAM overlays for the predicted / true class, upscaled ×:data:`SCALE`
  (nearest neighbour, so 128×128 for CIFAR) to stay crisp in the W&B table.
* ``explain/confusion_matrix`` (``wandb.plot.confusion_matrix``; W&B stores its data as
  ``explain/confusion_matrix_table``), ``explain/confusion_matrix_image`` (row-normalized heat map),
  ``explain/per_class_acc`` (Table: class, acc, n) and ``explain/most_confused`` (Table: true, pred, count).

and writes ``misclassified.png``, ``gradcam.png`` and ``confusion_matrix.png`` into ``out_dir``.

Example:
    ```python
    from pathlib import Path
    import timm, train
    from explain.report import explain_model
    model = timm.create_model("resnet18_cifar", num_classes=10)
    result = explain_model(model, test_set, out_dir=Path("runs/x"), tracker=tracker, samples=64)
    ```
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from explain.cam import CAM_METHODS, compute_cams
from explain.figures import DPI, SCALE, confusion_figure, gradcam_figure, misclassified_figure
from explain.overlay import overlay_cam, to_hwc_uint8
from train.checkpoint import unwrap
from train.data import Dataset
from train.engine import predict
from train.loader import DeviceLoader
from train.tracking import Tracker

__all__ = [
    "COLUMNS",
    "SCALE",
    "cams_for_pred_and_true",
    "check_cam_settings",
    "confusion_matrix",
    "explain_model",
    "find_mistakes",
]

COLUMNS = ("index", "image", "true", "pred", "confidence", "p_true", "top3", "gradcam_pred", "gradcam_true")
ALPHA = 0.5  # weight of the heat layer in the overlays
COLORMAP = "jet"
MOST_CONFUSED = 10  # true→pred pairs listed in explain/most_confused


def find_mistakes(probs: Tensor, labels: Tensor, k: int) -> Tensor:
    """Indices of the ``k`` most confident mistakes, most confident first.

    Args:
        probs: Class probabilities ``[N, C]``; the prediction is the argmax and its probability the confidence.
        labels: True classes ``[N]``.
        k: How many to return at most (fewer when there are fewer mistakes).

    Returns:
        int64 indices into ``probs`` (on its device); equal confidences keep their order in the input.

    Raises:
        ValueError: If ``k`` is negative or the shapes do not match.
    """
    if k < 0:
        raise ValueError(f"k must be >= 0, got {k}")
    if probs.ndim != 2 or labels.shape != probs.shape[:1]:
        raise ValueError(f"probs must be [N, C] and labels [N], got {tuple(probs.shape)} and {tuple(labels.shape)}")
    confidence, preds = probs.max(1)
    wrong = torch.nonzero(preds != labels.to(preds.device)).flatten()
    order = torch.sort(confidence[wrong], descending=True, stable=True).indices
    return wrong[order[:k]]


def confusion_matrix(labels: Tensor, preds: Tensor, num_classes: int) -> Tensor:
    """Counts ``[C, C]`` of (true class, predicted class) pairs, rows = true class; one ``torch.bincount``."""
    pairs = labels.long() * num_classes + preds.long()
    return torch.bincount(pairs, minlength=num_classes * num_classes).view(num_classes, num_classes).cpu()


def check_cam_settings(model: nn.Module, method: str, layer: str | Sequence[str],
                       image_size: tuple[int, int] = (32, 32)) -> list[str]:
    """Validate a CAM method and layer(s) before any heavy work, so a typo fails fast instead of after training.

    The layers are checked by computing a Grad-CAM of one blank image with :func:`explain.cam.compute_cams` (one
    forward and a backward through the head; every method hooks the same layers, and Grad-CAM is the cheapest).

    Args:
        model: The classifier (DDP or ``torch.compile`` wrappers are looked through).
        method: A name of :data:`explain.cam.CAM_METHODS`.
        layer: A module name, several separated by commas (their maps are fused), or a list of names.
        image_size: Input size of the probe image.

    Returns:
        The layer names as a list.

    Raises:
        ValueError: If the method or a layer is unknown or a layer's output is not a spatial feature map.
    """
    if method not in CAM_METHODS:
        raise ValueError(f"unknown CAM method {method!r}; valid methods: {', '.join(CAM_METHODS)}")
    layers = [name.strip() for name in layer.split(",")] if isinstance(layer, str) else list(layer)
    model = unwrap(model)
    device = next(model.parameters()).device
    compute_cams(model, torch.zeros(1, 3, *image_size, dtype=torch.uint8, device=device), 0, layer=layers)
    return layers


def cams_for_pred_and_true(model: nn.Module, images: Tensor, preds: Tensor, labels: Tensor, *,
                           method: str = "gradcam", layer: str | Sequence[str] = "layer4",
                           batch_size: int = 256) -> tuple[Tensor, Tensor]:
    """CAMs of each image for its predicted and for its true class, batched.

    The images go through :func:`explain.cam.compute_cams` once, stacked twice (predicted classes, then true
    classes), ``batch_size`` per forward pass — never one image at a time.

    Returns:
        ``(cams_pred, cams_true)``, each float ``[N, H, W]`` in [0, 1].
    """
    stacked = torch.cat([images, images])
    classes = torch.cat([preds, labels]).cpu()
    cams = compute_cams(unwrap(model), stacked, classes, method=method, layer=layer, batch_size=batch_size)
    return cams[: len(images)], cams[len(images):]


def explain_model(model: nn.Module, test_set: Dataset, *, out_dir: str | Path, tracker: Tracker | None = None,
                  samples: int = 64, cam_method: str = "gradcam", cam_layer: str | Sequence[str] = "layer4",
                  device: torch.device | str = "cpu", amp: torch.dtype | None = None, batch_size: int = 1024,
                  indices: Tensor | None = None, epoch: int | None = None) -> dict[str, Any]:
    """Explain the model's mistakes on ``test_set``: one W&B row (see the module docstring) and three PNG files.

    Predictions are single-pass (no test-time augmentation), so the table shows what the network itself does.
    The model is left in eval mode. ``samples=0`` still logs the confusion matrix and its companions with an empty
    table; a training run skips explain altogether at ``explain_samples=0``.

    Args:
        model: The classifier, on ``device`` (DDP or ``torch.compile`` wrappers are looked through).
        test_set: The images to predict and explain.
        out_dir: Where ``misclassified.png``, ``gradcam.png`` and ``confusion_matrix.png`` are written.
        tracker: Where the W&B row goes (None or a disabled tracker: only the PNG files).
        samples: How many of the most confident mistakes to explain.
        cam_method: A name of :data:`explain.cam.CAM_METHODS`.
        cam_layer: Module name(s) the CAM is computed on; comma-separated names (or a list) are fused.
        device: Where the predictions and CAMs are computed.
        amp: Autocast dtype of the prediction pass (None = fp32); the CAMs are always fp32.
        batch_size: Images per prediction pass (the CAMs use :func:`explain.cam.compute_cams`' default 256).
        indices: Position of each ``test_set`` image in the full test set (e.g. a ``--test_subset``'s indices),
            logged as ``index``; default ``0..N-1``.
        epoch: Logged as ``epoch`` in the row when given (the epoch of the explained weights).

    Returns:
        ``images``, ``acc`` (single pass), ``mistakes`` (count), ``explained`` (table rows), and the paths of the
        three PNGs as ``misclassified_png``, ``gradcam_png``, ``confusion_matrix_png``.

    Raises:
        ValueError: If ``samples`` is negative, ``indices`` has the wrong length, or the CAM settings are invalid.
    """
    if samples < 0:
        raise ValueError(f"samples must be >= 0, got {samples}")
    if indices is not None and len(indices) != len(test_set):
        raise ValueError(f"indices must hold one position per test image ({len(test_set)}), got {len(indices)}")
    model, device = unwrap(model), torch.device(device)
    layers = check_cam_settings(model, cam_method, cam_layer, tuple(test_set.images.shape[-2:]))
    classes = list(test_set.classes)
    positions = (torch.arange(len(test_set)) if indices is None else indices).cpu()

    # ---- predictions: one pass, softmax, mistakes ----
    loader = DeviceLoader(test_set, batch_size, device, train=False)
    logits, _, labels = predict(model, loader, amp=amp)
    probs = logits.float().softmax(1).cpu()
    labels = labels.cpu()
    preds = probs.argmax(1)
    counts = confusion_matrix(labels, preds, len(classes))
    chosen = find_mistakes(probs, labels, samples)

    # ---- CAMs for the predicted and the true class, batched, then overlays on the raw pixels ----
    images = test_set.images[chosen]
    cams_pred, cams_true = cams_for_pred_and_true(model, images.to(device), preds[chosen], labels[chosen],
                                                  method=cam_method, layer=layers)
    pixels = to_hwc_uint8(images)
    overlays_pred = overlay_cam(images, cams_pred, alpha=ALPHA, colormap=COLORMAP, scale=SCALE)
    overlays_true = overlay_cam(images, cams_true, alpha=ALPHA, colormap=COLORMAP, scale=SCALE)
    rows = []
    for i, index in enumerate(chosen.tolist()):
        top = torch.topk(probs[index], min(3, len(classes)))
        rows.append({
            "index": int(positions[index]),
            "true": classes[labels[index]],
            "pred": classes[preds[index]],
            "confidence": float(probs[index, preds[index]]),
            "p_true": float(probs[index, labels[index]]),
            "top3": ", ".join(f"{classes[c]} {p:.2f}" for p, c in zip(top.values.tolist(), top.indices.tolist(),
                                                                       strict=True)),
            "image": pixels[i], "gradcam_pred": overlays_pred[i], "gradcam_true": overlays_true[i],
        })

    # ---- pictures ----
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    acc = float((preds == labels).float().mean()) if len(labels) else 0.0
    paths = {
        "misclassified_png": out_dir / "misclassified.png",
        "gradcam_png": out_dir / "gradcam.png",
        "confusion_matrix_png": out_dir / "confusion_matrix.png",
    }
    mistakes = int((preds != labels).sum())
    misclassified_figure(rows, mistakes).savefig(paths["misclassified_png"], dpi=DPI)
    gradcam_figure(rows, cam_method, layers).savefig(paths["gradcam_png"], dpi=DPI)
    confusion_figure(counts, classes, acc).savefig(paths["confusion_matrix_png"], dpi=DPI)

    if tracker is not None and tracker.id is not None:  # untracked: skip building the W&B objects
        tracker.log(_wandb_row(rows, counts, classes, labels, preds, paths["confusion_matrix_png"], epoch))
    return {"images": len(labels), "acc": acc, "mistakes": mistakes, "explained": len(rows),
            **{key: str(path) for key, path in paths.items()}}


# ---------------------------------------------------------------------------------------------------------------------
# The W&B row


def _wandb_row(rows: list[dict[str, Any]], counts: Tensor, classes: list[str], labels: Tensor, preds: Tensor,
               confusion_png: Path, epoch: int | None) -> dict[str, Any]:
    import wandb

    table = wandb.Table(columns=list(COLUMNS))
    for row in rows:
        # uint8 HWC arrays: W&B writes them as PNG, so the image cell is the test image pixel for pixel.
        table.add_data(*[wandb.Image(row[c]) if c in ("image", "gradcam_pred", "gradcam_true") else row[c]
                         for c in COLUMNS])
    totals = counts.sum(1)
    per_class = wandb.Table(columns=["class", "acc", "n"], data=[
        [name, float(counts[c, c] / totals[c]) if totals[c] else 0.0, int(totals[c])] for c, name in enumerate(classes)
    ])
    most_confused = wandb.Table(columns=["true", "pred", "count"],
                                data=[[classes[t], classes[p], n] for t, p, n in _most_confused(counts)])
    row = {
        "explain/misclassified": table,
        "explain/confusion_matrix": wandb.plot.confusion_matrix(y_true=labels.tolist(), preds=preds.tolist(),
                                                                class_names=classes),
        "explain/confusion_matrix_image": wandb.Image(str(confusion_png)),
        "explain/per_class_acc": per_class,
        "explain/most_confused": most_confused,
    }
    if epoch is not None:
        row["epoch"] = epoch
    return row


def _most_confused(counts: Tensor, top: int = MOST_CONFUSED) -> list[tuple[int, int, int]]:
    """The ``top`` off-diagonal (true, pred, count) cells with the most images, largest first, zeros left out."""
    off = counts.clone()
    off.fill_diagonal_(0)
    values, flat = torch.sort(off.flatten(), descending=True, stable=True)
    size = counts.shape[1]
    return [(f // size, f % size, v) for v, f in zip(values.tolist()[:top], flat.tolist()[:top], strict=True) if v]
