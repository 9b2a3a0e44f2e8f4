"""The timm registration of resnet18_cifar: size, shape, normalization inside, checkpoint round trip."""

from __future__ import annotations

import warnings

import pytest
import timm
import torch
from timm.data import resolve_data_config

import train  # noqa: F401  (registers resnet18_cifar)
from train.checkpoint import load_checkpoint, save_checkpoint
from train.model import CIFAR10_MEAN, CIFAR10_STD, CifarResNet


@pytest.fixture(scope="module")
def model() -> CifarResNet:
    torch.manual_seed(0)
    return timm.create_model("resnet18_cifar", num_classes=10).eval()


def test_parameter_count_matches_the_seed(model):
    assert sum(p.numel() for p in model.parameters()) == 11_173_962


def test_created_without_warnings():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        timm.create_model("resnet18_cifar", num_classes=10)


def test_registry_round_trip():
    assert "resnet18_cifar" in timm.list_models("resnet18_cifar")
    assert timm.is_model("resnet18_cifar")
    model = timm.create_model("resnet18_cifar", num_classes=7)
    assert isinstance(model, CifarResNet)
    assert model(torch.rand(2, 3, 32, 32)).shape == (2, 7)


def test_stem_is_3x3_stride_1_without_max_pool(model):
    assert model.conv1.kernel_size == (3, 3) and model.conv1.stride == (1, 1)
    assert isinstance(model.maxpool, torch.nn.Identity)
    assert [len(getattr(model, f"layer{i}")) for i in range(1, 5)] == [2, 2, 2, 2]
    assert model.forward_features(torch.rand(1, 3, 32, 32)).shape == (1, 512, 4, 4)


def test_output_shape_and_dtype(model):
    out = model(torch.rand(4, 3, 32, 32))
    assert out.shape == (4, 10) and out.dtype == torch.float32


def test_normalizes_inside_with_buffers(model):
    names = dict(model.named_buffers())
    assert torch.allclose(names["mean"].flatten(), torch.tensor(CIFAR10_MEAN))
    assert torch.allclose(names["std"].flatten(), torch.tensor(CIFAR10_STD))
    assert "mean" not in dict(model.named_parameters())
    x = torch.rand(3, 3, 32, 32)
    normalized = (x - torch.tensor(CIFAR10_MEAN).view(1, 3, 1, 1)) / torch.tensor(CIFAR10_STD).view(1, 3, 1, 1)
    with torch.no_grad():
        expected = model.forward_head(super(CifarResNet, model).forward_features(normalized))
        assert torch.allclose(model(x), expected, atol=1e-5)


def test_timm_data_config_does_not_normalize_twice(model):
    cfg = resolve_data_config(model=model)
    assert cfg["input_size"] == (3, 32, 32)
    assert cfg["mean"] == (0.0, 0.0, 0.0) and cfg["std"] == (1.0, 1.0, 1.0)
    assert "CIFAR-10" in model.pretrained_cfg["description"]
    assert model.pretrained_cfg["label_names"][3] == "cat"


def test_checkpoint_reload_gives_identical_outputs(model, tmp_path):
    path = tmp_path / "m.pt"
    save_checkpoint(path, {"model": model.state_dict(), "config": {"model": "resnet18_cifar"}, "epoch": 1,
                           "metrics": {}, "classes": list("abcdefghij")})
    state = torch.load(path, weights_only=True)
    assert load_checkpoint(path)["epoch"] == 1
    clone = timm.create_model(state["config"]["model"], num_classes=10).eval()
    clone.load_state_dict(state["model"])
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(model(x), clone(x))
