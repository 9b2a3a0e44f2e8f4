"""ResNet-18 for 32×32 images, registered in timm as ``resnet18_cifar``.

The network is timm's ResNet with BasicBlocks [2, 2, 2, 2] whose ImageNet stem (7×7 stride-2 conv + max-pool)
is replaced by a 3×3 stride-1 conv, so the 32×32 input keeps its resolution until ``layer2``.

Raw pixels are the only currency of the project: the model takes float images in [0, 1] and normalizes them
itself with the CIFAR-10 statistics held as buffers. Its ``pretrained_cfg`` therefore tells timm's data helpers
``mean=(0, 0, 0), std=(1, 1, 1)`` so that ``timm.data.resolve_data_config(model=...)`` never normalizes twice.
"""

from __future__ import annotations

from typing import Any

import timm
import torch
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model
from timm.models.resnet import BasicBlock, ResNet
from torch import nn

from train.config import ConfigError, closest
from train.data import CIFAR10_CLASSES

__all__ = ["CIFAR10_MEAN", "CIFAR10_STD", "CifarResNet", "check_model_name", "resnet18_cifar"]

CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)


class CifarResNet(ResNet):
    """timm ``ResNet`` with a 3×3 stride-1 stem, no max-pool, and input normalization inside the model.

    Args:
        mean: Per-channel mean subtracted from the [0, 1] input (a buffer, saved in the state_dict).
        std: Per-channel standard deviation the input is divided by (a buffer).
        **kwargs: Passed to :class:`timm.models.resnet.ResNet`.
    """

    def __init__(self, mean: tuple[float, ...] = CIFAR10_MEAN, std: tuple[float, ...] = CIFAR10_STD, **kwargs: Any):
        super().__init__(**kwargs)
        in_chans = kwargs.get("in_chans", 3)
        self.conv1 = nn.Conv2d(in_chans, self.bn1.num_features, kernel_size=3, stride=1, padding=1, bias=False)
        nn.init.kaiming_normal_(self.conv1.weight, mode="fan_out", nonlinearity="relu")
        self.maxpool = nn.Identity()
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1))
        # The stem no longer downsamples: layer1..4 run at strides 1, 2, 4, 8 instead of 4..32.
        for info, reduction in zip(self.feature_info, (1, 1, 2, 4, 8), strict=True):
            info["reduction"] = reduction

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Normalize raw [0, 1] pixels with the buffered statistics, then run the ResNet trunk."""
        x = (x - self.mean.to(x.dtype)) / self.std.to(x.dtype)
        return super().forward_features(x)


default_cfgs = generate_default_cfgs({
    "resnet18_cifar.untrained": {
        "url": "",
        "num_classes": 10,
        "input_size": (3, 32, 32),
        "pool_size": (4, 4),
        "crop_pct": 1.0,
        "interpolation": "bilinear",
        # The model normalizes inside (buffers `mean`/`std` = CIFAR-10 statistics); data pipelines must not.
        "mean": (0.0, 0.0, 0.0),
        "std": (1.0, 1.0, 1.0),
        "first_conv": "conv1",
        "classifier": "fc",
        "label_names": CIFAR10_CLASSES,
        "description": "ResNet-18 for 32x32 inputs in [0, 1]; normalizes inside with CIFAR-10 "
        f"mean={CIFAR10_MEAN} std={CIFAR10_STD} held as the buffers `mean` and `std`.",
    },
})


@register_model
def resnet18_cifar(pretrained: bool = False, **kwargs: Any) -> CifarResNet:
    """ResNet-18 (BasicBlock [2, 2, 2, 2]) for 32×32 images: 11,173,962 parameters at 10 classes."""
    model_args = {"block": BasicBlock, "layers": (2, 2, 2, 2)}
    return build_model_with_cfg(CifarResNet, "resnet18_cifar", pretrained, **dict(model_args, **kwargs))


def check_model_name(name: str) -> None:
    """Raise a :class:`ConfigError` naming the closest timm model when ``name`` is not one."""
    if not timm.is_model(name):
        raise ConfigError(f"--model {name!r} is not a timm model{closest(name, timm.list_models(), prefix='')}")
