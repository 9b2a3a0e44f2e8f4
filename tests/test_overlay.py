"""Tests of explain.overlay: uint8 HWC overlays that change the image only by the colour-mapped heat layer."""

from __future__ import annotations

import matplotlib
import numpy as np
import pytest
import torch

from explain.overlay import overlay_cam, to_hwc_uint8


@pytest.fixture()
def images() -> torch.Tensor:
    return torch.randint(0, 256, (3, 3, 8, 10), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)


@pytest.fixture()
def cams() -> torch.Tensor:
    return torch.rand(3, 8, 10, generator=torch.Generator().manual_seed(1))


def test_to_hwc_uint8_round_trips_raw_pixels(images: torch.Tensor) -> None:
    pictures = to_hwc_uint8(images)
    assert isinstance(pictures, np.ndarray) and pictures.dtype == np.uint8 and pictures.shape == (3, 8, 10, 3)
    assert torch.equal(torch.from_numpy(pictures).permute(0, 3, 1, 2), images)
    np.testing.assert_array_equal(to_hwc_uint8(images.numpy()), pictures)
    np.testing.assert_array_equal(to_hwc_uint8(images.float() / 255), pictures)


def test_to_hwc_uint8_never_normalizes() -> None:
    dark = torch.full((1, 3, 4, 4), 0.1)
    assert (to_hwc_uint8(dark) == 26).all()


@pytest.mark.parametrize("scale", [1, 3])
def test_overlay_is_uint8_hwc_of_the_scaled_size(images: torch.Tensor, cams: torch.Tensor, scale: int) -> None:
    overlays = overlay_cam(images, cams, scale=scale)
    assert isinstance(overlays, np.ndarray) and overlays.dtype == np.uint8
    assert overlays.shape == (3, 8 * scale, 10 * scale, 3)


def test_alpha_zero_gives_the_image_pixels(images: torch.Tensor, cams: torch.Tensor) -> None:
    np.testing.assert_array_equal(overlay_cam(images, cams, alpha=0.0), images.permute(0, 2, 3, 1).numpy())


@pytest.mark.parametrize(("alpha", "colormap"), [(0.5, "jet"), (0.3, "viridis"), (1.0, "inferno")])
def test_overlay_adds_only_the_heat_layer(
    images: torch.Tensor, cams: torch.Tensor, alpha: float, colormap: str
) -> None:
    heat = matplotlib.colormaps[colormap](cams.numpy())[..., :3] * 255
    expected = np.rint((1 - alpha) * images.permute(0, 2, 3, 1).numpy() + alpha * heat)
    overlays = overlay_cam(images, cams, alpha=alpha, colormap=colormap)
    assert np.abs(overlays.astype(np.int16) - expected.astype(np.int16)).max() <= 1


def test_scale_repeats_each_pixel_as_a_block(images: torch.Tensor, cams: torch.Tensor) -> None:
    small = overlay_cam(images, cams)
    large = overlay_cam(images, cams, scale=4)
    blocks = large.reshape(3, 8, 4, 10, 4, 3)
    np.testing.assert_array_equal(blocks, np.broadcast_to(small[:, :, None, :, None, :], blocks.shape))


def test_float_images_and_numpy_inputs(images: torch.Tensor, cams: torch.Tensor) -> None:
    expected = overlay_cam(images, cams)
    np.testing.assert_array_equal(overlay_cam(images.float() / 255, cams), expected)
    np.testing.assert_array_equal(overlay_cam(images.numpy(), cams.numpy()), expected)


@pytest.mark.parametrize(
    ("change", "match"),
    [
        ({"images": torch.zeros(3, 8, 10, 3, dtype=torch.uint8)}, r"images must have shape \[N, 3, H, W\]"),
        ({"images": torch.zeros(3, 3, 8, 10, dtype=torch.int64)}, r"images must be uint8 or float raw pixels"),
        ({"images": torch.full((3, 3, 8, 10), 2.0)}, r"float images must be finite values in \[0, 1\]"),
        ({"images": [[0, 1]]}, r"images must be a torch.Tensor or a numpy array"),
        ({"cams": torch.rand(3, 10, 8)}, r"cams must have shape \[N, H, W\] = \(3, 8, 10\)"),
        ({"cams": torch.full((3, 8, 10), 1.5)}, r"cams must be finite values in \[0, 1\]"),
        ({"cams": torch.full((3, 8, 10), float("nan"))}, r"cams must be finite values in \[0, 1\]"),
        ({"cams": torch.ones(3, 8, 10, dtype=torch.uint8)}, r"cams must be float maps"),
        ({"alpha": 1.5}, r"alpha must be in \[0, 1\]"),
        ({"scale": 0}, r"scale must be a positive int"),
        ({"scale": 2.0}, r"scale must be a positive int"),
        ({"colormap": "no-such-map"}, r"unknown colormap 'no-such-map'"),
    ],
)
def test_bad_inputs_raise_value_error(images: torch.Tensor, cams: torch.Tensor, change: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        overlay_cam(**({"images": images, "cams": cams} | change))
