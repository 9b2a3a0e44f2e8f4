"""Heat-map overlays of class activation maps on raw pixels, as uint8 RGB arrays ready for W&B or matplotlib.

Both functions return NumPy ``uint8`` arrays ``[N, H, W, 3]`` (channels last), the layout ``wandb.Image`` and
``matplotlib.pyplot.imshow`` take as is. Pixels are never normalized or stretched: a uint8 image comes back pixel for
pixel, a float image in [0, 1] is only rounded to the nearest of the 256 levels.

Example:
    ```python
    from explain import compute_cams
    from explain.overlay import overlay_cam
    cams = compute_cams(model, images_uint8, class_idx=predictions)
    pictures = overlay_cam(images_uint8, cams, alpha=0.5, colormap="jet", scale=4)  # [N, 128, 128, 3] uint8
    ```
"""

from __future__ import annotations

import matplotlib
import numpy as np
import torch

__all__ = ["overlay_cam", "to_hwc_uint8"]


def to_hwc_uint8(images: torch.Tensor | np.ndarray) -> np.ndarray:
    """Turn raw images ``[N, 3, H, W]`` into displayable ``[N, H, W, 3]`` uint8 arrays, without normalizing.

    Args:
        images: Raw pixels ``[N, 3, H, W]``, uint8 (kept exactly) or float in [0, 1] (times 255, rounded).

    Returns:
        A new uint8 NumPy array ``[N, H, W, 3]`` on the CPU.

    Raises:
        ValueError: If the shape is not ``[N, 3, H, W]``, the dtype is neither uint8 nor float, or float pixels are
            outside [0, 1].
    """
    array = _as_numpy(images, "images")
    if array.ndim != 4 or array.shape[1] != 3:
        raise ValueError(f"images must have shape [N, 3, H, W], got {array.shape}")
    if array.dtype != np.uint8:
        if not np.issubdtype(array.dtype, np.floating):
            raise ValueError(f"images must be uint8 or float raw pixels, got dtype {array.dtype}")
        _check_unit_range(array, "float images")
        array = np.rint(array.astype(np.float64) * 255).astype(np.uint8)
    return array.transpose(0, 2, 3, 1).copy()


def overlay_cam(
    images: torch.Tensor | np.ndarray,
    cams: torch.Tensor | np.ndarray,
    alpha: float = 0.5,
    colormap: str = "jet",
    scale: int = 1,
) -> np.ndarray:
    """Blend colour-mapped CAMs over their images: ``round((1 - alpha) * image + alpha * colormap(cam))``.

    Args:
        images: Raw pixels ``[N, 3, H, W]``, uint8 or float in [0, 1] (see :func:`to_hwc_uint8`).
        cams: Maps ``[N, H, W]`` in [0, 1], e.g. from :func:`explain.cam.compute_cams`.
        alpha: Weight of the heat layer, 0 (the image alone) to 1 (the heat map alone).
        colormap: Name of a matplotlib colormap (``matplotlib.colormaps``), e.g. ``"jet"`` or ``"inferno"``.
        scale: Integer upscaling factor for display, nearest neighbour (each pixel becomes a ``scale × scale``
            block), so 32×32 CIFAR images stay crisp in W&B tables.

    Returns:
        uint8 NumPy array ``[N, H * scale, W * scale, 3]`` (RGB, channels last).

    Raises:
        ValueError: If the shapes do not match, the CAMs are not finite values in [0, 1], ``alpha`` is outside
            [0, 1], ``scale`` is not a positive int, or the colormap is unknown.
    """
    pixels = to_hwc_uint8(images)
    heat = _as_numpy(cams, "cams")
    if heat.shape != pixels.shape[:3]:
        raise ValueError(f"cams must have shape [N, H, W] = {pixels.shape[:3]} to match the images, got {heat.shape}")
    if not np.issubdtype(heat.dtype, np.floating):
        raise ValueError(f"cams must be float maps in [0, 1], got dtype {heat.dtype}")
    _check_unit_range(heat, "cams")
    if not 0 <= alpha <= 1:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    if isinstance(scale, bool) or not isinstance(scale, int) or scale < 1:
        raise ValueError(f"scale must be a positive int, got {scale!r}")
    if colormap not in matplotlib.colormaps:
        raise ValueError(f"unknown colormap {colormap!r}; e.g. 'jet', 'viridis', 'inferno' (see matplotlib.colormaps)")

    heat_rgb = matplotlib.colormaps[colormap](heat)[..., :3] * 255
    blended = np.rint((1 - alpha) * pixels + alpha * heat_rgb).clip(0, 255).astype(np.uint8)
    return blended.repeat(scale, axis=1).repeat(scale, axis=2)


def _as_numpy(array: torch.Tensor | np.ndarray, name: str) -> np.ndarray:
    if isinstance(array, torch.Tensor):
        tensor = array.detach().cpu()
        return (tensor.float() if tensor.is_floating_point() else tensor).numpy()
    if isinstance(array, np.ndarray):
        return array
    raise ValueError(f"{name} must be a torch.Tensor or a numpy array, got {type(array).__name__}")


def _check_unit_range(array: np.ndarray, name: str) -> None:
    if array.size and not (np.isfinite(array).all() and array.min() >= 0 and array.max() <= 1):
        raise ValueError(f"{name} must be finite values in [0, 1], got values in [{array.min()}, {array.max()}]")
