"""Tests of explain.cam: the maps localize the evidence of the asked class, and the torchcam plumbing is clean."""

from __future__ import annotations

import pytest
import timm
import torch
from torch import nn

import train  # noqa: F401  (registers resnet18_cifar in timm)
from explain import CAM_METHODS, compute_cams

PATCH = 6
CLASS_COLOURS = torch.tensor([[255, 0, 0], [0, 255, 0], [0, 0, 255]], dtype=torch.uint8)
HOOK_DICTS = ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks")


class TinyNet(nn.Module):
    """Three conv layers (``features``, 16×16 at 32×32 input), global average pooling and a linear classifier."""

    def __init__(self, num_classes: int = 3) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 16, 3, padding=1),
            nn.BatchNorm2d(16),
            nn.ReLU(),
            nn.Conv2d(16, 32, 3, padding=1, stride=2),
            nn.BatchNorm2d(32),
            nn.ReLU(),
            nn.Conv2d(32, 32, 3, padding=1),
            nn.BatchNorm2d(32),
            nn.ReLU(),
        )
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features((x - 0.5) / 0.25))


def patch_images(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Uniform noise images whose class is told only by a solid PATCH×PATCH square of its colour, anywhere."""
    g = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (n, 3, 32, 32), generator=g, dtype=torch.uint8)
    labels = torch.randint(0, len(CLASS_COLOURS), (n,), generator=g)
    corners = torch.randint(0, 32 - PATCH + 1, (n, 2), generator=g)
    for image, label, (y, x) in zip(images, labels, corners.tolist(), strict=True):
        image[:, y : y + PATCH, x : x + PATCH] = CLASS_COLOURS[label].view(3, 1, 1)
    return images, labels, corners


def fraction_peaking_in_patch(cams: torch.Tensor, corners: torch.Tensor, margin: int = 1) -> float:
    """Fraction of maps whose argmax lies in the planted patch, grown by ``margin`` pixels on each side."""
    peak = cams.flatten(1).argmax(1)
    rows, cols = peak // cams.shape[-1], peak % cams.shape[-1]
    top, left = corners[:, 0], corners[:, 1]
    inside_rows = (rows >= top - margin) & (rows < top + PATCH + margin)
    inside_cols = (cols >= left - margin) & (cols < left + PATCH + margin)
    return (inside_rows & inside_cols).float().mean().item()


def leftover_hooks(model: nn.Module) -> list[str]:
    return [
        f"{name or 'model'}.{hooks}"
        for name, module in model.named_modules()
        for hooks in HOOK_DICTS
        if getattr(module, hooks)
    ]


@pytest.fixture(scope="module")
def held_out() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return patch_images(200, seed=1)


@pytest.fixture(scope="module")
def resnet() -> nn.Module:
    torch.manual_seed(0)
    return timm.create_model("resnet18_cifar", num_classes=10).eval()


@pytest.fixture(scope="module")
def cifar_like() -> torch.Tensor:
    return torch.randint(0, 256, (4, 3, 32, 32), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)


# ---------------------------------------------------------------------------------------------------------------------
# The maps explain: they point at the evidence for the asked class
# ---------------------------------------------------------------------------------------------------------------------


def test_patch_net_is_accurate(patch_net: TinyNet, held_out: tuple) -> None:
    images, labels, _ = held_out
    with torch.no_grad():
        accuracy = (patch_net(images.float() / 255).argmax(1) == labels).float().mean().item()
    assert accuracy >= 0.95


@pytest.mark.parametrize("method", ["gradcam", "gradcampp", "layercam", "scorecam"])
def test_cam_peaks_on_the_class_patch(patch_net: TinyNet, held_out: tuple, method: str) -> None:
    images, labels, corners = held_out
    cams = compute_cams(patch_net, images, labels, method=method, layer="features")
    assert fraction_peaking_in_patch(cams, corners) >= 0.95


def test_gradcam_of_another_class_does_not_peak_on_the_patch(patch_net: TinyNet, held_out: tuple) -> None:
    images, labels, corners = held_out
    cams = compute_cams(patch_net, images, (labels + 1) % len(CLASS_COLOURS), method="gradcam", layer="features")
    assert fraction_peaking_in_patch(cams, corners) <= 0.2


# ---------------------------------------------------------------------------------------------------------------------
# Shape, range and semantics of the returned maps
# ---------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("method", sorted(CAM_METHODS))
def test_every_method_gives_unit_maps_and_leaves_no_hooks(patch_net: TinyNet, held_out: tuple, method: str) -> None:
    images, labels, _ = held_out
    smoothing = {"num_samples": 3} if method in ("smoothgradcampp", "sscam", "iscam") else {}
    cams = compute_cams(patch_net, images[:4], labels[:4], method=method, layer="features", **smoothing)
    assert cams.shape == (4, 32, 32) and cams.dtype == torch.float32
    assert not cams.isnan().any() and cams.min() >= 0 and cams.max() <= 1
    assert torch.allclose(cams.amax(dim=(1, 2)), torch.ones(4))
    assert leftover_hooks(patch_net) == []


def test_resnet_maps_have_input_size_and_unit_range(resnet: nn.Module, cifar_like: torch.Tensor) -> None:
    cams = compute_cams(resnet, cifar_like, 3)
    assert cams.shape == (4, 32, 32) and cams.dtype == torch.float32
    assert not cams.isnan().any() and cams.min() == 0 and cams.max() == 1


def test_uint8_and_float_images_give_the_same_maps(resnet: nn.Module, cifar_like: torch.Tensor) -> None:
    torch.testing.assert_close(compute_cams(resnet, cifar_like, 3), compute_cams(resnet, cifar_like.float() / 255, 3))


def test_maps_depend_on_the_requested_class(resnet: nn.Module, cifar_like: torch.Tensor) -> None:
    assert (compute_cams(resnet, cifar_like, 0) - compute_cams(resnet, cifar_like, 1)).abs().amax() > 0.1


def test_per_image_classes_equal_per_class_calls(resnet: nn.Module, cifar_like: torch.Tensor) -> None:
    classes = [0, 3, 5, 9]
    per_image = compute_cams(resnet, cifar_like, torch.tensor(classes))
    per_class = torch.stack([compute_cams(resnet, cifar_like, c)[i] for i, c in enumerate(classes)])
    torch.testing.assert_close(per_image, per_class)


def test_batched_maps_equal_one_image_at_a_time(resnet: nn.Module, cifar_like: torch.Tensor) -> None:
    classes = [1, 2, 3, 4]
    batched = compute_cams(resnet, cifar_like, classes, batch_size=256)
    single = compute_cams(resnet, cifar_like, classes, batch_size=1)
    torch.testing.assert_close(batched, single, atol=1e-4, rtol=0)


def test_other_and_fused_layers(resnet: nn.Module, cifar_like: torch.Tensor) -> None:
    layer3 = compute_cams(resnet, cifar_like, 3, layer="layer3")
    fused = compute_cams(resnet, cifar_like, 3, method="layercam", layer=["layer3", "layer4"])
    for cams in (layer3, fused):
        assert cams.shape == (4, 32, 32) and not cams.isnan().any() and cams.min() >= 0 and cams.max() <= 1
    assert (fused - compute_cams(resnet, cifar_like, 3, method="layercam")).abs().amax() > 0.1


def test_constant_feature_map_gives_zeros_not_nan() -> None:
    model = TinyNet()
    nn.init.zeros_(model.features[-3].weight)  # last conv: constant output, so a constant CAM
    cams = compute_cams(model, torch.rand(2, 3, 32, 32), 0, layer="features")
    assert torch.equal(cams, torch.zeros(2, 32, 32))


def test_no_images_give_no_maps(resnet: nn.Module) -> None:
    assert compute_cams(resnet, torch.zeros(0, 3, 32, 32, dtype=torch.uint8), []).shape == (0, 32, 32)


# ---------------------------------------------------------------------------------------------------------------------
# Side effects: grad mode, training flags, parameter grads, hooks
# ---------------------------------------------------------------------------------------------------------------------


def test_works_under_no_grad_and_inference_mode(resnet: nn.Module, cifar_like: torch.Tensor) -> None:
    expected = compute_cams(resnet, cifar_like, 3)
    with torch.no_grad():
        torch.testing.assert_close(compute_cams(resnet, cifar_like, 3), expected)
    with torch.inference_mode():
        torch.testing.assert_close(compute_cams(resnet, cifar_like, 3), expected)


def test_frozen_parameters_give_the_same_maps(patch_net: TinyNet, held_out: tuple) -> None:
    images = held_out[0][:4]
    expected = compute_cams(patch_net, images, 1, layer="features")
    patch_net.requires_grad_(False)
    try:
        torch.testing.assert_close(compute_cams(patch_net, images, 1, layer="features"), expected)
    finally:
        patch_net.requires_grad_(True)


def test_training_flags_restored_and_nothing_updated() -> None:
    model = TinyNet().train()
    model.head.eval()  # a mixed state must come back as it was
    flags = [m.training for m in model.modules()]
    state = {k: v.clone() for k, v in model.state_dict().items()}
    compute_cams(model, torch.rand(4, 3, 32, 32), [0, 1, 2, 0], layer="features")
    assert [m.training for m in model.modules()] == flags
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())  # BN ran in eval mode
    assert all(p.grad is None for p in model.parameters())


def test_hooks_removed_and_flags_restored_after_an_error_inside(resnet: nn.Module, cifar_like: torch.Tensor) -> None:
    resnet.train()
    try:
        with pytest.raises(ValueError, match=r"class_idx must be in \[0, 10\)"):
            compute_cams(resnet, cifar_like, 10, method="gradcampp")
        assert resnet.training and all(m.training for m in resnet.modules())
    finally:
        resnet.eval()
    assert leftover_hooks(resnet) == []
    assert all(p.grad is None for p in resnet.parameters())


# ---------------------------------------------------------------------------------------------------------------------
# Clear errors
# ---------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"method": "gradcam++"}, ValueError, r"unknown CAM method 'gradcam\+\+'; valid methods: gradcam, gradcampp"),
        ({"layer": "layer5"}, ValueError, r"unknown layer \['layer5'\] \(did you mean layer\d\?\); the model's top"),
        ({"layer": ["layer4", "stem"]}, ValueError, r"unknown layer \['stem'\].*top-level modules are \[.*'layer4'"),
        ({"layer": "fc"}, ValueError, r"layer 'fc' outputs shape \(4, 10\), not a \[N, C, h, w\] feature map"),
        ({"class_idx": 10}, ValueError, r"class_idx must be in \[0, 10\) for this model, got 10"),
        ({"class_idx": -1}, ValueError, r"class_idx must be non-negative"),
        ({"class_idx": [1, 2]}, ValueError, r"one index per image \(4\), got \(2,\)"),
        ({"class_idx": 1.0}, TypeError, r"class_idx must be an int or a sequence of ints"),
        ({"images": torch.zeros(4, 32, 32, 3, dtype=torch.uint8)}, ValueError, r"\[N, 3, H, W\], got \(4, 32, 32, 3\)"),
        ({"images": torch.zeros(4, 3, 32, 32, dtype=torch.int64)}, TypeError, r"uint8 or float raw pixels"),
        ({"images": torch.full((4, 3, 32, 32), -2.0)}, ValueError, r"raw pixels in \[0, 1\].*normalized images"),
        ({"images": torch.zeros(4, 3, 32, 32).numpy()}, TypeError, r"images must be a torch.Tensor"),
        ({"batch_size": 0}, ValueError, r"batch_size must be a positive int"),
    ],
)
def test_bad_arguments_raise_clear_errors(
    resnet: nn.Module, cifar_like: torch.Tensor, kwargs: dict, error: type, match: str
) -> None:
    arguments = {"images": cifar_like, "class_idx": 3} | kwargs
    with pytest.raises(error, match=match):
        compute_cams(resnet, **arguments)
    assert leftover_hooks(resnet) == []
