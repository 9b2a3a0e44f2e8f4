"""The training math on tiny real tensors: dict outputs, learning, TTA, NaN detection."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from train.data import Dataset
from train.engine import (
    NonFiniteLossError,
    amp_dtype,
    compile_overhead,
    evaluate,
    make_optimizer,
    make_scheduler,
    predict,
    resolve_device,
    train_one_epoch,
)
from train.loader import DeviceLoader


def separable(n: int = 256, seed: int = 0) -> Dataset:
    """Two classes told apart by brightness of the left half: learnable in a few steps, flip-sensitive."""
    gen = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, 2, (n,), generator=gen)
    images = torch.randint(0, 100, (n, 3, 32, 32), generator=gen, dtype=torch.uint8)
    images[labels == 1, :, :, :16] += 150
    return Dataset(images, labels, ["dark", "bright-left"])


def tiny_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d((1, 2)), nn.Flatten(),
                         nn.Linear(16, 2))


def test_train_one_epoch_returns_a_dict_and_learns():
    data, model = separable(), tiny_model()
    loader = DeviceLoader(data, 32, "cpu", train=True, pad=0)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    losses = []
    for _ in range(5):
        stats = train_one_epoch(model, loader, optimizer, scheduler, nn.CrossEntropyLoss(),
                                device=torch.device("cpu"))
        assert set(stats) == {"loss", "acc", "images", "seconds", "images_per_second", "lr"}
        assert stats["images"] == 256 and 0 <= stats["acc"] <= 1 and stats["lr"] == 0.1
        losses.append(stats["loss"])
    assert losses[-1] < losses[0] and stats["acc"] > 0.8


def test_evaluate_reports_tta_and_single_pass():
    data, model = separable(), tiny_model()
    loader = DeviceLoader(data, 100, "cpu", train=False)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    for _ in range(5):
        train_one_epoch(model, DeviceLoader(data, 32, "cpu", train=True, pad=0), optimizer, None,
                        nn.CrossEntropyLoss(), device=torch.device("cpu"))
    plain = evaluate(model, loader, nn.CrossEntropyLoss(), device=torch.device("cpu"), tta=False)
    flipped = evaluate(model, loader, nn.CrossEntropyLoss(), device=torch.device("cpu"), tta=True)
    assert plain["acc"] == plain["acc_no_tta"] == flipped["acc_no_tta"] > 0.8
    with torch.no_grad():  # TTA is the mean of the logits of each image and its mirror image
        x = data.images.float() / 255
        expected = (model(x) + model(x.flip(-1))) / 2
    assert flipped["loss"] == pytest.approx(nn.functional.cross_entropy(expected, data.labels).item(), rel=1e-5)
    assert flipped["acc"] == (expected.argmax(1) == data.labels).float().mean().item()
    assert flipped["loss"] != pytest.approx(plain["loss"], rel=1e-5) and plain["images"] == 256
    logits, mirror, labels = predict(model, loader, tta=True)
    assert logits.shape == mirror.shape == (256, 2) and torch.equal(labels, data.labels)


def test_diverging_loss_names_the_step():
    data, model = separable(), tiny_model()
    optimizer = torch.optim.SGD(model.parameters(), lr=1e12)
    with pytest.raises(NonFiniteLossError, match="at step") as info:
        train_one_epoch(model, DeviceLoader(data, 32, "cpu", train=True), optimizer, None, nn.CrossEntropyLoss(),
                        device=torch.device("cpu"))
    assert 0 < info.value.step < 8


def test_device_and_precision_choices():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    assert amp_dtype("auto", torch.device("cuda")) is torch.bfloat16
    assert amp_dtype("bf16", torch.device("cpu")) is torch.bfloat16
    assert amp_dtype("fp32", torch.device("cuda")) is None
    assert amp_dtype("fp32", torch.device("cpu")) is None


PRECISION_ON_CPU = ("import torch; from train.engine import amp_dtype, use_channels_last, cpu_bf16_native; "
                    "print(cpu_bf16_native(), amp_dtype('auto', torch.device('cpu')), "
                    "use_channels_last(torch.device('cpu')))")


@pytest.mark.parametrize("isa", ["", "AVX2"])
def test_auto_precision_on_the_cpu_follows_what_onednn_runs_natively(isa):
    """--precision auto on the CPU: bf16 autocast where oneDNN runs bf16 natively (AMX / AVX-512-BF16), fp32 where
    it would be emulated. oneDNN's own ONEDNN_MAX_CPU_ISA=AVX2 makes this CPU one without native bf16."""
    import os
    import subprocess
    import sys

    env = {**os.environ, **({"ONEDNN_MAX_CPU_ISA": isa} if isa else {})}
    env.pop("ONEDNN_MAX_CPU_ISA", None) if not isa else None
    said = subprocess.run([sys.executable, "-c", PRECISION_ON_CPU], capture_output=True, text=True, env=env,
                          check=True).stdout.split()
    native = said[0] == "True"
    if not isa and not native:
        pytest.skip("this CPU has no native bf16: the fp32 case below covers it")
    assert said == (["True", "torch.bfloat16", "True"] if not isa else ["False", "None", "True"])


def test_optimizer_is_fused_nesterov_sgd_without_decay_on_norms_and_biases():
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.Flatten(), nn.LazyLinear(2))
    model(torch.rand(2, 3, 8, 8))
    optimizer = make_optimizer(model, lr=0.4, weight_decay=5e-4, momentum=0.9, device=torch.device("cpu"))
    assert isinstance(optimizer, torch.optim.SGD) and optimizer.defaults["fused"] and optimizer.defaults["nesterov"]
    decay = {g["weight_decay"]: sum(p.numel() for p in g["params"]) for g in optimizer.param_groups}
    assert decay == {5e-4: 8 * 3 * 9 + 2 * 8 * 36, 0.0: 8 + 8 + 8 + 2}  # conv+linear weights vs biases+BN
    before = [p.detach().clone() for p in model.parameters()]
    model(torch.rand(2, 3, 8, 8)).sum().backward()
    optimizer.step()
    assert all(not torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))


def test_schedule_warms_up_linearly_then_decays_to_lr_over_1e4():
    optimizer = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=0.4)
    scheduler = make_scheduler(optimizer, epochs=10, steps_per_epoch=5, warmup_epochs=2)
    lrs = [optimizer.param_groups[0]["lr"]]
    for _ in range(50):
        optimizer.step()
        scheduler.step()
        lrs.append(optimizer.param_groups[0]["lr"])
    assert lrs[0] == pytest.approx(0.04) and max(lrs) == pytest.approx(0.4) and lrs.index(max(lrs)) == 10
    assert lrs[5] == pytest.approx(0.22)  # halfway up the warm-up
    assert lrs[30] == pytest.approx(0.4 - (0.4 - 0.4e-4) / 2)  # halfway down
    assert lrs[-1] == pytest.approx(0.4 / 1e4) and min(lrs) > 0
    assert all(a >= b for a, b in zip(lrs[10:], lrs[11:], strict=False))


def test_compile_overhead_is_the_first_epoch_beyond_the_median_one():
    assert compile_overhead([70.0, 10.0, 12.0, 11.0]) == 59.0
    assert compile_overhead([9.0, 10.0, 12.0]) == 0.0  # a first epoch no slower than the others compiled nothing
    assert compile_overhead([70.0]) == 0.0 and compile_overhead([]) == 0.0  # nothing to compare it with


def test_ema_is_timms_average_of_every_step_and_what_evaluates():
    """``--ema``: timm's ModelEmaV3, updated after every optimizer step with the scheduler's step count (its decay
    warm-up), is what the recipe evaluates; the trained weights go on unchanged."""
    from timm.utils import ModelEmaV3

    from train.config import Config, resolve
    from train.engine import build_recipe

    data = separable(64)
    config = resolve(Config(batch_size=32, epochs=2, ema=0.99, precision="fp32"))  # the by-hand loop below is fp32
    torch.manual_seed(0)
    recipe = build_recipe(config, data, data, torch.device("cpu"))
    assert isinstance(recipe.ema, ModelEmaV3) and recipe.evaluated is recipe.ema.module
    recipe.train_epoch(recipe.model)
    assert recipe.scheduler.last_epoch == len(recipe.train_loader) == 2
    trained, ema_weights = recipe.model.state_dict(), recipe.ema.module.state_dict()
    assert not all(torch.equal(ema_weights[k], trained[k]) for k in trained)  # an average, not the weights
    # the same epoch by hand (same init, same batches), the average kept step by step as train_one_epoch must
    torch.manual_seed(0)
    fresh = build_recipe(resolve(Config(batch_size=32, epochs=2, precision="fp32")), data, data, torch.device("cpu"))
    shadow = ModelEmaV3(fresh.model, decay=0.99, use_warmup=True)
    fresh.model.train()
    for step, (images, labels) in enumerate(fresh.train_loader, start=1):
        if fresh.channels_last:  # as train_one_epoch feeds them (the CPU and CUDA train channels-last)
            images = images.contiguous(memory_format=torch.channels_last)
        loss = fresh.train_loss(fresh.model(images), labels)
        fresh.optimizer.zero_grad()
        loss.backward()
        fresh.optimizer.step()
        fresh.scheduler.step()
        shadow.update(fresh.model, step=step)
    for key, value in shadow.module.state_dict().items():
        torch.testing.assert_close(value, ema_weights[key], msg=key)
    evaluated = recipe.evaluate(recipe.model, tta=False)  # the net passed is the trained one: the EMA evaluates
    direct = evaluate(recipe.ema.module, recipe.test_loader, recipe.eval_loss, device=torch.device("cpu"))
    assert evaluated["loss"] == direct["loss"] and evaluated["acc"] == direct["acc"]
    assert fresh.ema is None and fresh.evaluated is fresh.model
