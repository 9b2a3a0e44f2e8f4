"""Class activation maps of a classifier for a batch of raw images, computed with torchcam.

:func:`compute_cams` returns one ``[H, W]`` map in [0, 1] per image, at the input resolution, for the class asked
for. The torchcam extractor is a context manager, so its hooks are removed even when the computation fails, and the
model's training flags are restored afterwards. Gradient-based methods take their gradients with
``torch.autograd.grad`` on the hooked layer outputs, so parameter ``.grad`` fields are never touched.

Example:
    ```python
    import timm, train
    from explain import compute_cams
    model = timm.create_model("resnet18_cifar", num_classes=10)
    cams = compute_cams(model, images_uint8, class_idx=predictions, method="gradcam", layer="layer4")
    ```
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchcam.methods import ISCAM, SSCAM, GradCAM, GradCAMpp, LayerCAM, ScoreCAM, SmoothGradCAMpp, XGradCAM
from tqdm import tqdm

from train.config import closest

__all__ = ["CAM_METHODS", "compute_cams"]

CAM_METHODS: dict[str, type] = {
    "gradcam": GradCAM,
    "gradcampp": GradCAMpp,
    "smoothgradcampp": SmoothGradCAMpp,
    "xgradcam": XGradCAM,
    "layercam": LayerCAM,
    "scorecam": ScoreCAM,
    "sscam": SSCAM,
    "iscam": ISCAM,
}


def compute_cams(
    model: nn.Module,
    images: Tensor,
    class_idx: int | Sequence[int] | Tensor,
    method: str = "gradcam",
    layer: str | Sequence[str] = "layer4",
    batch_size: int = 256,
    *,
    return_logits: bool = False,
    progress: bool | None = None,
    **method_kwargs: Any,
) -> Tensor | tuple[Tensor, Tensor]:
    """Compute one class activation map per image, upsampled to the input size and scaled to [0, 1].

    The model runs in eval mode on the device of its parameters, ``batch_size`` images per forward pass; gradients
    are enabled inside even when the caller is under ``torch.no_grad()`` or ``torch.inference_mode()``.

    Args:
        model: Classifier taking float images in [0, 1] of shape ``[N, 3, H, W]`` and returning logits ``[N, K]``.
        images: Raw pixels ``[N, 3, H, W]``, either ``uint8`` (divided by 255 here) or float in [0, 1].
            Never normalized images: the model normalizes inside.
        class_idx: The class to explain, one for all images (an int) or one per image (a sequence or 1-D tensor of
            N ints), e.g. the predicted or the true labels.
        method: Name of the torchcam extractor, one of :data:`CAM_METHODS`.
        layer: Name of the hooked module (see ``model.named_modules()``) or a list of names whose maps torchcam
            fuses with its ``fuse_cams``.
        batch_size: Images per forward pass; the Score-CAM family also uses it for its masked forward passes.
        return_logits: Also return the logits ``[N, K]`` of the forward pass the maps come from (fp32, detached):
            the prediction and the map of an image from one forward.
        progress: Show a tqdm bar on stderr; ``None`` = only for the Score-CAM family, which takes minutes on a
            CPU (it then also works through the images a few at a time, so the bar moves).
        **method_kwargs: Passed to the torchcam extractor, e.g. ``num_samples`` or ``std`` for the smoothed methods.

    Returns:
        Float32 maps ``[N, H, W]`` in [0, 1] (each map min-max scaled on its own; a constant map is all zeros), on
        the device of ``images``; with ``return_logits``, ``(maps, logits)``.

    Note:
        The Score-CAM family (``scorecam``, ``sscam``, ``iscam``) runs one masked forward pass per channel of the
        hooked layer and image (times ``num_samples`` for SS-CAM and IS-CAM): 512 per image at ``layer4``.
        ``smoothgradcampp`` and ``sscam`` draw their noise from torch's global RNG, so seed it for repeatable maps.

    Raises:
        TypeError: If ``images`` is not a uint8 or float tensor, or ``class_idx`` is not made of integers.
        ValueError: If the method or a layer is unknown, a layer's output is not a spatial feature map, the images
            are not ``[N, 3, H, W]`` raw pixels, or a class index is out of range or of the wrong length.
    """
    if method not in CAM_METHODS:
        raise ValueError(f"unknown CAM method {method!r}; valid methods: {', '.join(CAM_METHODS)}")
    layers = [layer] if isinstance(layer, str) else list(layer)
    _check_layers(model, layers)
    _check_images(images)
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    if len(images) == 0:
        empty = torch.zeros((0, *images.shape[2:]), device=images.device)
        return (empty, torch.zeros(0, 0, device=images.device)) if return_logits else empty
    targets = _class_indices(class_idx, len(images))

    extractor_cls = CAM_METHODS[method]
    uses_gradients = not issubclass(extractor_cls, ScoreCAM)
    chunk_size = batch_size
    if not uses_gradients:
        method_kwargs.setdefault("batch_size", batch_size)
        chunk_size = min(batch_size, 4)  # each image costs hundreds of forwards already
    show = (not uses_gradients) if progress is None else progress
    training_flags = [(module, module.training) for module in model.modules()]
    model.eval()
    try:
        with (
            torch.inference_mode(False),
            torch.set_grad_enabled(uses_gradients),
            extractor_cls(model, layers, **method_kwargs) as extractor,
            tqdm(total=len(images), desc=f"{method} CAMs", unit="image", disable=not show, leave=False,
                 file=sys.stderr) as bar,
        ):
            results = []
            for chunk, chunk_targets in zip(images.split(chunk_size), targets.split(chunk_size), strict=True):
                results.append(_batch_cams(model, extractor, chunk, chunk_targets))
                bar.update(len(chunk))
    finally:
        for module, training in training_flags:
            module.training = training
    cams = torch.cat([maps for maps, _ in results]).to(images.device)
    return (cams, torch.cat([logits for _, logits in results]).to(images.device)) if return_logits else cams


def _batch_cams(model: nn.Module, extractor: Any, images: Tensor, class_idx: Tensor) -> tuple[Tensor, Tensor]:
    """CAMs and logits of one batch: forward (hooks record the layers), torchcam weights, fuse, upsample, scale."""
    param = next(model.parameters())
    x = images.to(device=param.device, dtype=param.dtype, copy=True)
    if images.dtype == torch.uint8:
        x /= 255
    # With frozen parameters the hooked outputs would not require grad, and autograd could not reach them.
    x.requires_grad_(torch.is_grad_enabled())
    scores = model(x)
    num_classes = scores.shape[-1]
    if int(class_idx.max()) >= num_classes:
        raise ValueError(f"class_idx must be in [0, {num_classes}) for this model, got {int(class_idx.max())}")
    for name, activation in zip(extractor.target_names, extractor.hook_a, strict=True):
        if activation.ndim != 4:
            raise ValueError(f"layer {name!r} outputs shape {tuple(activation.shape)}, not a [N, C, h, w] feature map")
    maps = extractor.fuse_cams(extractor(class_idx=class_idx.tolist(), scores=scores))
    maps = F.interpolate(maps.unsqueeze(1).float(), size=x.shape[-2:], mode="bilinear", align_corners=False)
    return _min_max_scale(maps.squeeze(1).detach()), scores.detach().float()


def _min_max_scale(maps: Tensor) -> Tensor:
    """Scale each ``[H, W]`` map of ``[N, H, W]`` to [0, 1]; constant maps become zeros (no NaN)."""
    low = maps.amin(dim=(1, 2), keepdim=True)
    span = maps.amax(dim=(1, 2), keepdim=True) - low
    return (maps - low) / span.clamp_min(torch.finfo(maps.dtype).tiny)


def _check_layers(model: nn.Module, layers: list[str]) -> None:
    if not layers or not all(isinstance(name, str) for name in layers):
        raise TypeError(f"layer must be a module name or a non-empty list of names, got {layers!r}")
    modules = dict(model.named_modules())
    unknown = [name for name in layers if name not in modules]
    if unknown:
        children = [name for name, _ in model.named_children()]
        raise ValueError(f"unknown layer {unknown}{closest(unknown[0], modules, prefix='')}; the model's top-level "
                         f"modules are {children[:12]} (see model.named_modules())")


def _check_images(images: Tensor) -> None:
    if not isinstance(images, Tensor):
        raise TypeError(f"images must be a torch.Tensor, got {type(images).__name__}")
    if images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"images must have shape [N, 3, H, W], got {tuple(images.shape)}")
    if images.dtype != torch.uint8 and not images.is_floating_point():
        raise TypeError(f"images must be uint8 or float raw pixels, got {images.dtype}")
    if images.is_floating_point() and images.numel() and (images.min() < 0 or images.max() > 1):
        raise ValueError(
            f"float images must be raw pixels in [0, 1], got values in [{images.min():.3g}, {images.max():.3g}]"
            " (the model normalizes inside; do not pass normalized images)"
        )


def _class_indices(class_idx: int | Sequence[int] | Tensor, num_images: int) -> Tensor:
    """One int64 class index per image, on the CPU."""
    idx = torch.as_tensor(class_idx).cpu()
    if idx.dtype == torch.bool or idx.is_floating_point() or idx.is_complex():
        raise TypeError(f"class_idx must be an int or a sequence of ints, got {idx.dtype} values")
    if idx.ndim == 0:
        idx = idx.expand(num_images)
    if idx.shape != (num_images,):
        raise ValueError(f"class_idx must be an int or hold one index per image ({num_images}), got {tuple(idx.shape)}")
    if (idx < 0).any():
        raise ValueError(f"class_idx must be non-negative, got {int(idx.min())}")
    return idx.long()
