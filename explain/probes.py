"""Probe images: a fixed handful of test images whose prediction and CAM are recorded before training (epoch 0) and
after every epoch, so a run shows when each image was learned, where the model looked, and what it forgot.

No wandb and no matplotlib here: :class:`Probes` returns plain numbers and uint8 pictures (the W&B row is made by
:mod:`train.tracking`, ``probes.png`` by :mod:`explain.figures`, the ``probes/summary`` table by
:mod:`explain.report`). Its :meth:`Probes.to_dict` is stored in each ``last.pt``, so a resumed run continues the
series.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor, nn

from explain.cam import compute_cams
from explain.overlay import overlay_cam
from train.checkpoint import unwrap

__all__ = ["PER_CLASS", "Probes", "choose_probes"]

PER_CLASS = 2  # probes per class (more when there are fewer classes than half the probes)
SCALE = 4  # overlay upscaling for display (32×32 → 128×128)


def choose_probes(labels: Tensor, count: int, seed: int) -> Tensor:
    """Indices of ``count`` test images: :data:`PER_CLASS` of each class, classes in label order (the first
    ``count / PER_CLASS`` classes when there are more), chosen within each class by ``seed``.

    The same labels, count and seed give the same indices, so runs on the same data compare side by side.
    """
    classes = torch.unique(labels).tolist()
    if count <= 0 or not classes:
        return torch.zeros(0, dtype=torch.long)
    per_class = max(PER_CLASS, math.ceil(count / len(classes)))
    generator = torch.Generator().manual_seed(seed)
    chosen: list[int] = []
    for cls in classes[: math.ceil(count / per_class)]:
        members = torch.nonzero(labels == cls).flatten()
        chosen += members[torch.randperm(len(members), generator=generator)[:per_class]].tolist()
    return torch.tensor(chosen[:count], dtype=torch.long)


class Probes:
    """The probe images of a run and what the model made of them, epoch by epoch.

    Args:
        images: Raw uint8 pixels ``[P, 3, H, W]`` of the probes.
        labels: Their true classes ``[P]``.
        indices: Their positions in the full test set ``[P]``.
        classes: Class names.
        method, layer: CAM method and layer(s) (:func:`explain.cam.compute_cams`).
        series: A stored :meth:`to_dict` to continue (resume); None starts empty. A series keeps the method and
            layer it started with, so its maps compare across epochs.
    """

    def __init__(self, images: Tensor, labels: Tensor, indices: Tensor, classes: list[str], method: str,
                 layer: str | list[str], series: dict[str, Any] | None = None):
        self.images, self.labels, self.indices = images.cpu(), labels.cpu().long(), indices.cpu().long()
        self.classes, self.method, self.layer = list(classes), method, layer
        self.epochs: list[int] = []
        self.preds: list[Tensor] = []  # per epoch, [P] int64
        self.p_pred: list[Tensor] = []  # per epoch, [P] float32: the probability of the prediction
        self.p_true: list[Tensor] = []  # per epoch, [P] float32
        self.cams: list[Tensor] = []  # per epoch, [P, H, W] uint8 (the CAM of the true class × 255)
        if series:
            self._load(series)

    def __len__(self) -> int:
        return len(self.labels)

    def observe(self, model: nn.Module, epoch: int) -> None:
        """Record epoch ``epoch``: one batched forward and backward for all probes (prediction, ``p_true`` and the
        CAM of the true class from the same pass)."""
        model = unwrap(model)
        device = next(model.parameters()).device
        cams, logits = compute_cams(model, self.images.to(device), self.labels, method=self.method,
                                    layer=self.layer, return_logits=True, progress=False)
        probs = logits.float().softmax(1).cpu()
        self.epochs.append(epoch)
        self.preds.append(probs.argmax(1))
        self.p_pred.append(probs.max(1).values)
        self.p_true.append(probs.gather(1, self.labels[:, None]).squeeze(1))
        self.cams.append(torch.round(cams.cpu() * 255).to(torch.uint8))

    def row(self, epoch: int) -> dict[str, float]:
        """``probes/acc`` (fraction of probes right) and ``probes/mean_p_true`` at ``epoch``."""
        i = self.epochs.index(epoch)
        return {"probes/acc": float((self.preds[i] == self.labels).float().mean()),
                "probes/mean_p_true": float(self.p_true[i].mean())}

    def key(self, probe: int) -> str:
        """The stable W&B key of a probe: ``probes/<index>_<class>``."""
        return f"probes/{int(self.indices[probe])}_{self.classes[int(self.labels[probe])]}"

    def overlays(self, epoch: int, scale: int = SCALE) -> Tensor:
        """The probes at ``epoch``: the CAM of the true class over the raw pixels, uint8 ``[P, H*s, W*s, 3]``."""
        cams = self.cams[self.epochs.index(epoch)].float() / 255
        return torch.from_numpy(overlay_cam(self.images, cams, scale=scale))

    def captions(self, epoch: int) -> list[str]:
        """``epoch N: pred <class> <p> · p_true <p>`` for each probe."""
        i = self.epochs.index(epoch)
        return [f"epoch {epoch}: pred {self.classes[int(pred)]} {float(p_pred):.2f} · p_true {float(p_true):.2f}"
                for pred, p_pred, p_true in zip(self.preds[i], self.p_pred[i], self.p_true[i], strict=True)]

    def images_for(self, epoch: int) -> dict[str, tuple[Any, str]]:
        """The W&B images of ``epoch``: ``{probes/<index>_<class>: (uint8 overlay, caption)}``."""
        overlays, captions = self.overlays(epoch).numpy(), self.captions(epoch)
        return {self.key(p): (overlays[p], captions[p]) for p in range(len(self))}

    def summary(self) -> list[dict[str, Any]]:
        """Per probe: index, class, per epoch ``pred`` and ``p_true``, ``learned_epoch`` (the first epoch from which
        it stayed right; None when it is wrong at the last one) and ``flips`` (times it went from right to wrong or
        back between consecutive epochs)."""
        out = []
        for probe in range(len(self)):
            right = [bool(preds[probe] == self.labels[probe]) for preds in self.preds]
            learned = None
            for i in range(len(right) - 1, -1, -1):
                if not right[i]:
                    break
                learned = self.epochs[i]
            out.append({
                "index": int(self.indices[probe]),
                "class": self.classes[int(self.labels[probe])],
                "epochs": {str(epoch): {"pred": self.classes[int(self.preds[i][probe])],
                                        "p_true": round(float(self.p_true[i][probe]), 4)}
                           for i, epoch in enumerate(self.epochs)},
                "learned_epoch": learned,
                "flips": sum(a != b for a, b in zip(right, right[1:], strict=False)),
            })
        return out

    def to_dict(self) -> dict[str, Any]:
        """The series as tensors and lists, for ``last.pt`` (loads with ``weights_only=True``)."""
        def stacked(seq: list[Tensor], empty: Tensor) -> Tensor:
            return torch.stack(seq) if seq else empty

        size = (0, len(self))
        return {"indices": self.indices, "epochs": list(self.epochs), "method": self.method,
                "layer": list(self.layer) if isinstance(self.layer, list | tuple) else [self.layer],
                "preds": stacked(self.preds, torch.zeros(size, dtype=torch.long)),
                "p_pred": stacked(self.p_pred, torch.zeros(size)), "p_true": stacked(self.p_true, torch.zeros(size)),
                "cams": stacked(self.cams, torch.zeros(*size, *self.images.shape[2:], dtype=torch.uint8))}

    def _load(self, series: dict[str, Any]) -> None:
        try:
            epochs = [int(e) for e in series["epochs"]]
            method, layer = str(series["method"]), [str(name) for name in series["layer"]]
            preds, p_pred, p_true, cams = series["preds"], series["p_pred"], series["p_true"], series["cams"]
            shapes_fit = (torch.equal(series["indices"].long(), self.indices)
                          and len(preds) == len(p_pred) == len(p_true) == len(cams) == len(epochs)
                          and tuple(preds.shape[1:]) == tuple(p_true.shape[1:]) == (len(self),)
                          and tuple(cams.shape[1:]) == (len(self), *self.images.shape[2:]))
        except (KeyError, TypeError, AttributeError, ValueError) as exc:
            raise ValueError(f"the stored probe series is damaged ({type(exc).__name__})") from None
        if not shapes_fit:
            raise ValueError("the stored probe series does not fit these probe images")
        self.epochs, self.method, self.layer = epochs, method, layer
        self.preds, self.p_pred, self.p_true = list(preds.long()), list(p_pred.float()), list(p_true.float())
        self.cams = list(cams.to(torch.uint8))
