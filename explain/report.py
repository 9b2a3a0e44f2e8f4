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

and writes ``misclassified.png``, the CAM grid named after its method (``gradcam.png``, ``layercam.png``, ...) and
``confusion_matrix.png`` into ``out_dir``; the trust step (:mod:`explain.report_trust`) and the label issues
(:mod:`explain.report_labels`) add theirs.

Example:
    ```python
    from pathlib import Path
    import timm, train
    from explain.report import ExplainSettings, explain_model
    model = timm.create_model("resnet18_cifar", num_classes=10)
    result = explain_model(model, test_set, ExplainSettings(samples=64), out_dir=Path("runs/x"), tracker=tracker)
    ```
"""

from __future__ import annotations

import zipfile
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from explain.cam import CAM_METHODS, compute_cams
from explain.figures import (
    ALPHA,
    COLORMAP,
    DPI,
    SCALE,
    cam_grid_figure,
    confusion_figure,
    images_figure,
    misclassified_figure,
    most_confused_classes,
    probes_figure,
    save_pages,
)
from explain.labels import LabelIssues, find_label_issues, probabilities
from explain.overlay import overlay_cam, to_hwc_uint8
from explain.probes import Probes
from explain.report_labels import LABEL_KEYS, known_cams, mistake_columns, report_label_issues
from explain.report_trust import compare_cam_methods, default_trust_images, measure_trust, trust_sample
from explain.trust import TRUST_KEYS
from train.checkpoint import unwrap
from train.data import Dataset, Images
from train.engine import predict, use_channels_last
from train.files import write_json
from train.loader import DeviceLoader
from train.tracking import Tracker

__all__ = [
    "COLUMNS",
    "SCALE",
    "ExplainSettings",
    "cams_for_pred_and_true",
    "check_cam_settings",
    "confusion_matrix",
    "explain_images",
    "explain_model",
    "explain_summary",
    "find_mistakes",
    "write_predictions",
    "write_probes",
]

COLUMNS = ("index", "image", "true", "pred", "confidence", "p_true", "top3", "gradcam_pred", "gradcam_true",
           "label_quality", "likely_label_error")
MOST_CONFUSED = 10  # true→pred pairs listed in explain/most_confused
PROBE_COLUMNS = 8  # epochs shown in probes.png (with the image, 9 columns: ~1,350 px wide)


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


@dataclass(frozen=True)
class ExplainSettings:
    """What the explain step does — one object, from the run's :class:`train.config.Config`
    (:meth:`from_config`) or built directly; :func:`explain_model` takes it with the model and the images.

    Attributes:
        samples: How many of the most confident mistakes to explain (0: no mistakes table or pictures; the confusion
            matrix, trust figures and label issues are still made).
        cam_method: A name of :data:`explain.cam.CAM_METHODS`.
        cam_layer: Module name(s) the CAM is computed on; comma-separated names (or a list) are fused.
        batch_size: Images per prediction pass (the CAMs use :func:`explain.cam.compute_cams`' default 256).
        trust: Measure the trust figures (:mod:`explain.report_trust`) of the CAMs of the predicted class on a
            seeded, class-stratified sample of ``trust_images`` of the images (right and wrong predictions).
        trust_images: Size of that sample (each image costs a few dozen forwards); None = sized to the device
            (:func:`explain.report_trust.default_trust_images`).
        compare: CAM methods to compare on that same sample (``cam_methods.json``/``.png``, W&B table).
        label_issues: Find the images whose label is likely wrong (:mod:`explain.labels`, cleanlab):
            ``label_issues.json``/``.png``, the Table ``explain/label_issues`` and the ``label_quality`` and
            ``likely_label_error`` columns (None without it, or when the images hold a single class).
        tta: Find label issues on the flip-TTA probabilities (image and mirror, as ``val/acc``), and report that
            accuracy beside the single-pass one; the table stays single-pass.
        seed: Seeds the trust sample and its bootstrap intervals.
        in_sample: The model trained on these images (``explain/run.py --split train`` on its training folder):
            every label issues output says its flags are not to be trusted (``label_issues_in_sample``).
    """

    samples: int = 64
    cam_method: str = "gradcam"
    cam_layer: str | Sequence[str] = "layer4"
    batch_size: int = 1024
    trust: bool = True
    trust_images: int | None = None
    compare: Sequence[str] = ()
    label_issues: bool = True
    tta: bool = False
    seed: int = 0
    in_sample: bool = False

    @classmethod
    def from_config(cls, config: Any, **changes: Any) -> ExplainSettings:
        """The settings a run's config (``train/run.py``'s, or the checkpoint's in ``explain/run.py``) names, with
        ``changes`` (e.g. the resolved ``cam_layer``, ``compare``, ``in_sample``)."""
        named = cls(samples=config.explain_samples, cam_method=config.cam_method, cam_layer=config.cam_layer,
                    batch_size=config.eval_batch_size, trust=config.trust, trust_images=config.trust_images,
                    label_issues=config.label_issues, tta=config.tta, seed=config.seed)
        return replace(named, **changes)


def explain_model(model: nn.Module, test_set: Dataset, settings: ExplainSettings | None = None, *,
                  out_dir: str | Path, tracker: Tracker | None = None, device: torch.device | str = "cpu",
                  amp: torch.dtype | None = None, indices: Tensor | None = None, epoch: int | None = None,
                  commit: bool = True, **changes: Any) -> dict[str, Any]:
    """Explain the model's mistakes on ``test_set`` as ``settings`` say: one W&B row (see the module docstring) and
    PNG files.

    Predictions are single-pass (no test-time augmentation), so the table shows what the network itself does.
    The model is left in eval mode.

    Args:
        model: The classifier, on ``device`` (DDP or ``torch.compile`` wrappers are looked through).
        test_set: The images to predict and explain.
        settings: What to do (:class:`ExplainSettings`; default its defaults); ``changes`` are fields of it
            replaced for this call (``explain_model(model, images, out_dir=..., samples=16, trust=False)``).
        out_dir: Where the PNG files (and ``cam_methods.json``) are written.
        tracker: Where the W&B row goes (None or a disabled tracker: only the files).
        device: Where the predictions and CAMs are computed.
        amp: Autocast dtype of the prediction pass (None = fp32); the CAMs are always fp32.
        indices: Position of each ``test_set`` image in the full test set (e.g. a ``--test_subset``'s indices),
            logged as ``index``; default ``0..N-1``.
        epoch: Logged as ``epoch`` in the row when given (the epoch of the explained weights).
        commit: Commit the W&B row; False leaves it open for more keys of the same step (a training run adds the
            probe summary, then commits).

    Returns:
        ``images``, ``acc`` (single pass), ``mistakes`` (count), ``explained`` (table rows), the PNG paths
        (``*_png``; the CAM grid is ``cam_png``, named after the method; at ``samples=0`` only the confusion
        matrix's), ``predictions_npz`` (:func:`write_predictions`), ``acc_tta`` with ``tta``; with ``trust``
        the figures of :data:`explain.trust.TRUST_KEYS` and the others of :func:`explain.trust.trust_figures`,
        ``trust_mistakes`` and ``trust_correct`` (wrong and right predictions in the sample) and the ``trust_line``;
        with ``compare`` the comparison rows under ``cam_methods``; with ``label_issues`` those of
        :func:`explain.report_labels.report_label_issues` (``label_issues``, ``label_issues_checked``, ...).

    Raises:
        ValueError: If ``samples`` is negative, ``indices`` has the wrong length, or the CAM settings are invalid.
        TypeError: If ``changes`` names no field of :class:`ExplainSettings`.
    """
    settings = replace(settings or ExplainSettings(), **changes)
    if settings.samples < 0:
        raise ValueError(f"samples must be >= 0, got {settings.samples}")
    if indices is not None and len(indices) != len(test_set):
        raise ValueError(f"indices must hold one position per test image ({len(test_set)}), got {len(indices)}")
    model, device, out_dir = unwrap(model), torch.device(device), Path(out_dir)
    layers = check_cam_settings(model, settings.cam_method, settings.cam_layer, tuple(test_set.images.shape[-2:]))
    for method in settings.compare:
        check_cam_settings(model, method, layers)
    classes = list(test_set.classes)
    positions = (torch.arange(len(test_set)) if indices is None else indices).cpu()

    # ---- predictions: one pass, softmax, mistakes, then CAMs for the predicted and the true class, batched ----
    channels_last = use_channels_last(device)  # as the training run evaluates: the same predictions in bf16
    logits, mirrored, labels = predict(model.to(memory_format=torch.channels_last) if channels_last else model,
                                       DeviceLoader(test_set, settings.batch_size, device, train=False), amp=amp,
                                       channels_last=channels_last, tta=True)  # the mirror's go to predictions.npz
    flipped = mirrored if settings.tta else None
    probs, labels = logits.float().softmax(1).cpu(), labels.cpu()
    preds = probs.argmax(1)
    counts = confusion_matrix(labels, preds, len(classes))
    chosen = find_mistakes(probs, labels, settings.samples)
    images = test_set.images[chosen]
    cams_pred, cams_true = cams_for_pred_and_true(model, images.to(device), preds[chosen], labels[chosen],
                                                  method=settings.cam_method, layer=layers)
    # ---- label issues: cleanlab on the same out-of-sample probabilities (flip-TTA with `tta`) ----
    issues: LabelIssues | None = None
    if settings.label_issues and len(torch.unique(labels)) > 1:  # a single class has nothing to be confused with
        issues = find_label_issues(probabilities(logits, flipped), labels, in_sample=settings.in_sample)
    rows = _mistake_rows(images, cams_pred, cams_true, probs[chosen], labels[chosen], positions[chosen], classes,
                         mistake_columns(issues, chosen))

    # ---- pictures ----
    out_dir.mkdir(parents=True, exist_ok=True)
    correct = int((preds == labels).sum())
    acc = correct / len(labels) if len(labels) else 0.0  # a ratio of counts: the decimal it is, no float32 noise
    acc_tta = int((((logits + flipped) / 2).argmax(1).cpu() == labels).sum()) / len(labels) \
        if flipped is not None and len(labels) else None
    paths = {f"{name}_png": out_dir / f"{name}.png" for name in ("misclassified", "confusion_matrix")}
    paths["cam_png"] = out_dir / f"{settings.cam_method}.png"  # gradcam.png, layercam.png, ...
    mistakes = len(labels) - correct
    written: dict[str, list[str]] = {}  # the pages of each picture, with samples
    if settings.samples:  # samples=0: no mistakes table or pictures
        pages = {"misclassified_png": misclassified_figure(rows, mistakes),
                 "cam_png": cam_grid_figure(rows, settings.cam_method, layers)}
        written = {f"{key}_pages": save_pages(figures, paths[key]) for key, figures in pages.items()}
    else:
        del paths["misclassified_png"], paths["cam_png"]
    confusion_figure(counts, classes, acc, acc_tta).savefig(paths["confusion_matrix_png"], dpi=DPI)
    paths["predictions_npz"] = write_predictions(out_dir / "predictions.npz", test_set, positions, labels, logits,
                                                 mirrored)
    result = {"images": len(labels), "acc": acc, **({"acc_tta": acc_tta} if acc_tta is not None else {}),
              "mistakes": mistakes, "explained": len(rows), **{key: str(path) for key, path in paths.items()},
              **written}
    logged = tracker is not None and tracker.id is not None  # untracked: skip building the W&B objects
    row = _wandb_row(rows, counts, classes, labels, preds, paths["confusion_matrix_png"], epoch) if logged else {}
    if not settings.samples:
        row.pop("explain/misclassified", None)

    # ---- how far the maps can be trusted (and other methods): a stratified sample, right and wrong predictions ----
    sample = trust_sample(labels, settings.trust_images or default_trust_images(device), settings.seed, preds=preds)
    if (settings.trust or settings.compare) and len(sample) >= 2:  # an interval needs two images
        sample_images, sample_preds = test_set.images[sample].to(device), preds[sample]
        if settings.trust:  # the CAM of the predicted class: what the explain step shows
            figures = measure_trust(model, sample_images, sample_preds, settings.cam_method, layers, out_dir,
                                    row if logged else None, seed=settings.seed, available=len(labels))
            mistakes_in_sample = int((sample_preds != labels[sample]).sum())
            result.update(figures, trust_mistakes=mistakes_in_sample, trust_correct=len(sample) - mistakes_in_sample)
            if logged:
                tracker.summary({f"explain/{key}": result[key] for key in TRUST_KEYS})
        if settings.compare:
            captions = [(f"#{int(positions[i])} {classes[int(labels[i])]}\npred {classes[int(preds[i])]}",
                         bool(preds[i] == labels[i])) for i in sample.tolist()]
            result["cam_methods"] = compare_cam_methods(model, sample_images, sample_preds, settings.compare, layers,
                                                        out_dir, row if logged else None, seed=settings.seed,
                                                        captions=captions)
    if issues is not None:
        result.update(report_label_issues(model, test_set, issues, positions, out_dir=out_dir,
                                          row=row if logged else None, cam_method=settings.cam_method, layers=layers,
                                          device=device, limit=settings.samples,
                                          known=known_cams(chosen, preds[chosen], cams_pred)))
    if logged:
        tracker.log(row, commit=commit)
        if issues is not None:  # after the row: its table has the same key, and the summary shows the count (a
            # caller that commits later sets these again after the commit)
            tracker.summary({f"explain/{key}": result[key] for key in LABEL_KEYS})
    return result


SUMMARY_LEFT_OUT = ("cam_methods", "rows", "lines", "cams")  # in files of their own (cam_methods.json, images.json)


def write_predictions(path: Path, split: Dataset, positions: Tensor, labels: Tensor, logits: Tensor,
                      mirrored: Tensor) -> Path:
    """``predictions.npz``: per checked image its ``index`` (position in the full split), ``file`` (relative to the
    data root; empty for CIFAR-10 batches), given ``label``, and float16 ``logits`` of the image and ``logits_flip``
    of its mirror image, with the ``classes``: enough to re-score label-issue methods without the model
    (``bench/label_quality.py``). ~0.5 MB for 10,000 images."""
    files = split.files if split.files is not None else [""] * len(split)
    arrays = {"index": positions.numpy().astype(np.int64), "file": np.array(files, dtype=str),
              "label": labels.numpy().astype(np.int64), "logits": _half(logits), "logits_flip": _half(mirrored),
              "classes": np.array(list(split.classes), dtype=str)}
    write_npz(path, arrays)
    return path


def write_npz(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """``arrays`` as an ``.npz`` file (what ``np.load`` reads), written whole or not at all.

    ``np.savez_compressed``'s own first parameter is named ``file``, so it cannot take an array named "file": the same
    format (a zip of .npy files) written member by member."""
    tmp = path.with_name(f".{path.name}.tmp")
    with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for name, array in arrays.items():
            with archive.open(f"{name}.npy", "w") as member:
                np.lib.format.write_array(member, np.asarray(array), allow_pickle=False)
    tmp.replace(path)  # a stop mid-write leaves the old file (or none), never half of one


def _half(logits: Tensor) -> np.ndarray:
    return logits.float().cpu().numpy().astype(np.float16)


def explain_summary(result: dict[str, Any]) -> dict[str, Any]:
    """The ``explain`` section of a ``summary.json`` (a training run's and ``explain/run.py``'s alike): what
    :func:`explain_model` (or :func:`explain_images`) returned — counts, accuracy, every trust figure, interval and
    verdict, the label-issue counts — less the picture paths and what has a file of its own."""
    return {k: v for k, v in result.items() if not k.endswith("_png") and k not in SUMMARY_LEFT_OUT}


def _mistake_rows(images: Tensor, cams_pred: Tensor, cams_true: Tensor, probs: Tensor, labels: Tensor,
                  positions: Tensor, classes: list[str], label_columns: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One dict per explained mistake with the table's columns (pictures as uint8 arrays); ``label_columns`` holds
    each one's ``label_quality`` and ``likely_label_error``."""
    pixels = to_hwc_uint8(images)
    overlays_pred = overlay_cam(images, cams_pred, alpha=ALPHA, colormap=COLORMAP, scale=SCALE)
    overlays_true = overlay_cam(images, cams_true, alpha=ALPHA, colormap=COLORMAP, scale=SCALE)
    rows = []
    for i in range(len(images)):
        pred, true = int(probs[i].argmax()), int(labels[i])
        top = torch.topk(probs[i], min(3, len(classes)))
        rows.append({
            "index": int(positions[i]), "true": classes[true], "pred": classes[pred],
            "confidence": float(probs[i, pred]), "p_true": float(probs[i, true]),
            "top3": ", ".join(f"{classes[c]} {p:.2f}" for p, c in zip(top.values.tolist(), top.indices.tolist(),
                                                                       strict=True)),
            "image": pixels[i], "gradcam_pred": overlays_pred[i], "gradcam_true": overlays_true[i],
            **label_columns[i],
        })
    return rows


SHOWN_IMAGES = 48  # images drawn in images.png (the rest are in images.json and W&B): the figure stays bounded
IMAGES_PER_PASS = 256  # images decoded and explained at once by explain/run.py --images: memory stays bounded
TRUST_POOL = 4096  # images kept for the trust sample of --images (the first ones; 12 MB at 32×32)


def explain_images(model: nn.Module, images: Images | Iterable[Images], classes: list[str], *, out_dir: Path,
                   tracker: Tracker | None = None, method: str = "gradcam", layers: Sequence[str] = ("layer4",),
                   target_class: int | None = None, trust: bool = True, trust_images: int | None = None,
                   seed: int = 0, say: Callable[[str], None] | None = None,
                   amp: torch.dtype | None = None) -> dict[str, Any]:
    """Predict and explain any images: top-3 classes and the CAM of the top prediction (or of ``target_class``).

    ``images`` may be one :class:`train.data.Images` or batches of them (:data:`IMAGES_PER_PASS` at a time from
    ``explain/run.py``), so any number of images is explained in bounded memory: ``images.json`` lists every image,
    the W&B Table ``explain/images`` grows batch by batch (an incremental table), ``images.png`` (original
    thumbnail | model input | CAM) shows the first :data:`SHOWN_IMAGES` and says so. With ``trust``, the trust
    figures of these maps, on a seeded sample of ``trust_images`` of the first :data:`TRUST_POOL` images, stratified
    by the explained class (None = sized to the model's device). ``amp``: autocast dtype of the prediction pass
    (None = fp32); the CAMs are always fp32.

    Returns:
        ``rows`` (per image: ``file``, ``size``, ``top3`` as ``[class, p]`` pairs, ``cam_class``), ``lines`` (one
        printable line per image: ``cat.jpg: cat 0.91 (dog 0.05, deer 0.02)``; none when ``say`` prints them as they
        come), ``cams`` (``[N, 32, 32]``, of the first :data:`TRUST_POOL` images), ``images`` (the count) and, with
        ``trust``, the trust figures, ``trust_verdict`` and ``trust_line``.
    """
    model = unwrap(model).eval()
    device = next(model.parameters()).device
    logged = tracker is not None and tracker.id is not None
    table = None
    if logged:
        import wandb

        table = wandb.Table(columns=["file", "original", "input", "cam", "top1", "p_top1", "top3", "cam_class"],
                            log_mode="INCREMENTAL")
    rows, lines, shown, pool, pool_targets, pool_cams = [], [], [], [], [], []
    for batch in [images] if isinstance(images, Images) else images:
        if not batch.names:
            continue
        pixels = batch.pixels.to(device)
        with torch.inference_mode(), torch.autocast(device.type, dtype=amp or torch.float32, enabled=amp is not None):
            probs = model(pixels.float() / 255).float().softmax(1).cpu()
        top = torch.topk(probs, min(3, len(classes)))
        targets = top.indices[:, 0] if target_class is None else torch.full((len(probs),), target_class)
        cams = compute_cams(model, pixels, targets, method=method, layer=list(layers)).cpu()
        # pictures only for what shows them: the W&B table (every image) or images.png (the first SHOWN_IMAGES)
        drawn = len(batch.names) if table is not None else max(SHOWN_IMAGES - len(shown), 0)
        inputs = upscale_all(to_hwc_uint8(batch.pixels[:drawn]))
        overlays = overlay_cam(batch.pixels[:drawn], cams[:drawn], alpha=ALPHA, colormap=COLORMAP, scale=SCALE)
        for i, name in enumerate(batch.names):
            ranked = [[classes[c], round(float(p), 4)] for p, c in zip(top.values[i], top.indices[i], strict=True)]
            row = {"file": name, "size": list(batch.sizes[i]), "top3": ranked, "cam_class": classes[int(targets[i])]}
            others = ", ".join(f"{c} {p:.2f}" for c, p in ranked[1:])
            line = (f"{name}: {ranked[0][0]} {ranked[0][1]:.2f}" + (f" ({others})" if others else "")
                    + (f"; CAM of {classes[target_class]}" if target_class is not None else ""))
            if say:
                say(line)
            else:
                lines.append(line)
            if len(shown) < SHOWN_IMAGES:
                shown.append((batch.thumbnails[i], inputs[i], overlays[i], [
                    Path(name).name[:24], f"{ranked[0][0]} {ranked[0][1]:.2f}", f"CAM of {row['cam_class']}"]))
            if table is not None:
                table.add_data(name, wandb.Image(batch.thumbnails[i]), wandb.Image(inputs[i]),
                               wandb.Image(overlays[i]), ranked[0][0], ranked[0][1],
                               ", ".join(f"{c} {p:.2f}" for c, p in ranked), row["cam_class"])
            rows.append(row)
        room = TRUST_POOL - sum(len(x) for x in pool)
        if room > 0:
            pool.append(batch.pixels[:room])
            pool_targets.append(targets[:room])
            pool_cams.append(cams[:room])
        if table is not None:
            tracker.log({"explain/images": table})  # this batch's rows join the table
    out_dir.mkdir(parents=True, exist_ok=True)
    write_json(out_dir / "images.json", rows)
    if shown:
        thumbs, ins, overs, captions = zip(*shown, strict=True)
        save_pages(images_figure(list(thumbs), np.stack(ins), np.stack(overs), list(captions), len(rows)),
                   out_dir / "images.png")
    result: dict[str, Any] = {"rows": rows, "lines": lines, "images": len(rows),
                              "images_png": str(out_dir / "images.png"),
                              "cams": torch.cat(pool_cams) if pool_cams else torch.zeros(0, 32, 32)}
    row: dict[str, Any] = {}
    targets = torch.cat(pool_targets) if pool_targets else torch.zeros(0, dtype=torch.long)
    sample = trust_sample(targets, trust_images or default_trust_images(device), seed)
    if trust and len(sample) >= 2:  # an interval needs two images
        result.update(measure_trust(model, torch.cat(pool)[sample].to(device), targets[sample], method, list(layers),
                                    out_dir, row if logged else None, seed=seed, available=len(targets)))
    if logged:
        if row:
            tracker.log(row)
        if "trust_verdict" in result:
            tracker.summary({f"explain/{key}": result[key] for key in TRUST_KEYS})
    return result


def write_probes(probes: Probes, out_dir: Path, tracker: Tracker | None = None,
                 pictures: bool = True) -> dict[str, str]:
    """``probes.png`` (probes × at most :data:`PROBE_COLUMNS` epochs spread evenly, 0 and the last included; not
    with ``pictures`` False: a run at ``--explain_samples 0``, such as a sweep trial, writes no pictures),
    ``probes.json`` (:meth:`explain.probes.Probes.summary` with the indices and epochs) and, when tracked, the W&B
    Table ``probes/summary`` in the open row (the caller commits it)."""
    summary = probes.summary()
    write_json(out_dir / "probes.json", {"indices": probes.indices.tolist(), "epochs": probes.epochs,
                                         "method": probes.method, "probes": summary})
    picks = sorted({round(x) for x in np.linspace(0, len(probes.epochs) - 1, PROBE_COLUMNS)}) if probes.epochs else []
    shown = [probes.epochs[i] for i in picks]
    overlays = {epoch: probes.overlays(epoch).numpy() for epoch in shown}
    rows = [[(overlays[epoch][p], epoch, entry["epochs"][str(epoch)]["pred"], entry["epochs"][str(epoch)]["p_true"],
              entry["epochs"][str(epoch)]["pred"] == entry["class"]) for epoch in shown]
            for p, entry in enumerate(summary)]
    labels = [f"#{entry['index']} {entry['class']}" for entry in summary]
    pages = save_pages(probes_figure(rows, upscale_all(to_hwc_uint8(probes.images)), labels),
                       out_dir / "probes.png") if pictures else []
    if tracker is not None and tracker.id is not None and probes.epochs:
        import wandb

        columns = ["index", "class", "learned_epoch", "flips", "final_pred", "final_p_true", "p_true_by_epoch"]
        data = [[e["index"], e["class"], e["learned_epoch"], e["flips"], e["epochs"][str(probes.epochs[-1])]["pred"],
                 e["epochs"][str(probes.epochs[-1])]["p_true"],
                 " ".join(f"{epoch}:{v['p_true']:.2f}" for epoch, v in e["epochs"].items())] for e in summary]
        tracker.log({"epoch": probes.epochs[-1], "probes/summary": wandb.Table(columns=columns, data=data)},
                    commit=False)
    return {**({"probes_png": pages[0], "probes_png_pages": pages} if pages else {}),
            "probes_json": str(out_dir / "probes.json")}


def upscale_all(pictures: np.ndarray) -> np.ndarray:
    """uint8 ``[N, h, w, 3]`` pictures ×:data:`SCALE`, nearest neighbour (as the overlays)."""
    return pictures.repeat(SCALE, axis=1).repeat(SCALE, axis=2)


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
    # W&B's confusion matrix is a table of every (true, pred) pair: beyond MAX_MATRIX_CLASSES classes the others
    # are pooled as "(other classes)", so 1,000 classes make 51², not a million, rows.
    shown = most_confused_classes(counts).tolist()
    names = [classes[i] for i in shown]
    if len(shown) < len(classes):
        remap = torch.full((len(classes),), len(shown), dtype=torch.long)
        remap[shown] = torch.arange(len(shown))
        labels, preds, names = remap[labels], remap[preds], [*names, "(other classes)"]
    row = {
        "explain/misclassified": table,
        "explain/confusion_matrix": wandb.plot.confusion_matrix(y_true=labels.tolist(), preds=preds.tolist(),
                                                                class_names=names,
                                                                title="Confusion matrix (single-pass predictions)"),
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
