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
    config = resolve(Config(batch_size=32, epochs=2, ema=0.99, precision="fp32", min_res=0))  # the by-hand loop: fp32
    torch.manual_seed(0)
    recipe = build_recipe(config, data, data, torch.device("cpu"))
    assert isinstance(recipe.ema, ModelEmaV3) and recipe.evaluated is recipe.ema.module
    recipe.train_epoch(recipe.model)
    assert recipe.scheduler.last_epoch == len(recipe.train_loader) == 2
    trained, ema_weights = recipe.model.state_dict(), recipe.ema.module.state_dict()
    assert not all(torch.equal(ema_weights[k], trained[k]) for k in trained)  # an average, not the weights
    # the same epoch by hand (same init, same batches), the average kept step by step as train_one_epoch must
    torch.manual_seed(0)
    fresh = build_recipe(resolve(Config(batch_size=32, epochs=2, precision="fp32", min_res=0)), data, data,
                         torch.device("cpu"))
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


def test_progressive_resizing_rises_from_min_res_to_full_size_in_steps_of_four():
    from train.engine import epoch_resolutions

    assert epoch_resolutions(8, 32, 16, 0.75) == [16, 16, 20, 24, 24, 28, 32, 32]
    assert epoch_resolutions(20, 32, 16, 0.5) == [16, 16, 16, 20, 20, 24, 24, 24, 28, 28] + [32] * 10
    assert epoch_resolutions(2, 32, 16, 0.75) == [16, 32]  # the last epoch at the size the model is tested at
    assert epoch_resolutions(4, 32, 16, 1.0) == [16, 20, 26 // 4 * 4, 32]  # even when the ramp spans the run
    assert epoch_resolutions(3, 32, 0, 0.75) == [32] * 3 and epoch_resolutions(3, 32, 40, 0.75) == [32] * 3  # off
    assert epoch_resolutions(1, 32, 16, 1.0) == [32]  # a one-epoch run does not ramp


def test_the_recipe_trains_each_epoch_at_its_resolution_and_a_resumed_recipe_picks_up_the_schedule():
    from train.config import Config, resolve
    from train.engine import build_recipe

    data = separable(64)
    config = resolve(Config(batch_size=32, epochs=4, min_res=16, res_ramp=0.5, precision="fp32", flip="alternate"))
    torch.manual_seed(0)
    recipe = build_recipe(config, data, data, torch.device("cpu"))
    seen = []
    hook = recipe.model.register_forward_pre_hook(lambda _, args: seen.append(args[0].shape[-1]))
    sizes = [recipe.train_epoch(recipe.model)["resolution"] for _ in range(2)]
    assert sizes == [16, 24] and sorted(set(seen)) == [16, 24]  # what the model was fed, not only what was logged
    resumed = build_recipe(config, data, data, torch.device("cpu"))
    resumed.epochs_done = 3  # train/run.py sets it from the checkpoint's epoch
    assert resumed.train_epoch(resumed.model)["resolution"] == 32 and resumed.train_loader.epoch == 4
    assert recipe.evaluate(recipe.model, tta=False)["images"] == 64  # evaluation at full size
    hook.remove()


def test_batch_errors_name_where_the_batch_came_from():
    """A fitted batch was blamed on a --batch_size never given; a resumed run's batch did not say it was the
    checkpoint's (issue 37 item 6)."""
    from train.config import Config
    from train.data import DataError
    from train.engine import build_recipe

    cpu = torch.device("cpu")
    with pytest.raises(DataError, match=r"^10 training images are fewer than the default batch \(its smallest\) 32; "
                                        r"give --batch_size 10 or less$"):
        build_recipe(Config(precision="fp32"), separable(10), separable(10), cpu)
    with pytest.raises(DataError, match=r"^10 training images are fewer than --batch_size 16$"):
        build_recipe(Config(batch_size=16, precision="fp32"), separable(10), separable(10), cpu)
    with pytest.raises(DataError, match=r"^the checkpoint's batch size \(fitted when the run started\) 32 does not "
                                        r"split evenly over 3 processes; resume with a process count that divides it$"):
        build_recipe(Config(batch_size=32, precision="fp32"), separable(64), separable(64), cpu, world_size=3,
                     batch_source="checkpoint")
    with pytest.raises(DataError, match=r"^--batch_size 32 does not split evenly over 3 processes$"):
        build_recipe(Config(batch_size=32, precision="fp32"), separable(64), separable(64), cpu, world_size=3)


def test_the_start_line_says_what_the_recipe_resolved_to():
    from train.config import Config
    from train.engine import build_recipe
    from train.run import recipe_words

    data = separable(64)
    recipe = build_recipe(config := Config(epochs=8, min_res=16, flip="alternate", ema=0.99, precision="fp32"), data,
                          data, torch.device("cpu"))
    assert recipe_words(config, recipe) == ("batch 32, lr 0.025, 1.6 warm-up epochs, label smoothing 0.1, alternate "
                                            "flips, whitened stem, EMA 0.99, 16->32 px over the first 6 epochs")
    plain = Config(batch_size=16, epochs=2, precision="fp32", stem_init="default", min_res=0)
    assert recipe_words(plain, build_recipe(plain, data, data, torch.device("cpu"))) == (
        "batch 16, lr 0.0125, 0.4 warm-up epochs, label smoothing 0.1, random flips")


def test_whiten_stem_decorrelates_the_patches_its_first_conv_sees():
    """--stem_init whiten: the stem's first 27 filters map the 3x3 patches of the images (as the model normalizes
    them) to decorrelated, unit-variance outputs; the next 27 are their negatives; the rest keep their init."""
    import timm
    import torch.nn.functional as F

    import train  # noqa: F401  (registers resnet18_cifar)
    from train.engine import whiten_stem

    torch.manual_seed(0)
    model = timm.create_model("resnet18_cifar", num_classes=2)
    before = model.conv1.weight.detach().clone()
    images = separable(200).images.float() / 255
    assert whiten_stem(model, images, eps=1e-9) == 54
    weight = model.conv1.weight.detach().double()
    seen = (images - model.mean) / model.std  # what conv1 sees: the model normalizes inside
    out = F.conv2d(seen.double(), weight[:27])  # the valid patches only, as whitened
    flat = out.permute(0, 2, 3, 1).reshape(-1, 27)
    second_moment = flat.T @ flat / len(flat)
    assert torch.allclose(second_moment, torch.eye(27, dtype=torch.float64), atol=1e-4)
    assert torch.equal(weight[27:54], -weight[:27]) and torch.equal(model.conv1.weight[54:], before[54:])


def test_stem_init_whiten_is_part_of_the_recipe_and_refused_without_a_first_conv():
    from train.config import Config
    from train.engine import build_recipe, whiten_stem

    data = separable(64)
    torch.manual_seed(0)
    plain = build_recipe(Config(batch_size=32, precision="fp32", stem_init="default"), data, data,
                         torch.device("cpu"))
    torch.manual_seed(0)
    whitened = build_recipe(Config(batch_size=32, precision="fp32", stem_init="whiten"), data, data,
                            torch.device("cpu"))
    assert not torch.equal(plain.model.conv1.weight[:54], whitened.model.conv1.weight[:54])
    assert torch.equal(plain.model.conv1.weight[54:], whitened.model.conv1.weight[54:])
    with pytest.raises(ValueError, match="needs a first .* Conv2d"):
        whiten_stem(tiny_model(), data.images.float() / 255)
    assert whitened.model.conv1.weight.abs().sum() > 0
    auto = Config(batch_size=32, precision="fp32")  # the default: whitened where the model allows, and it says so
    torch.manual_seed(0)
    assert torch.equal(build_recipe(auto, data, data, torch.device("cpu")).model.conv1.weight,
                       whitened.model.conv1.weight) and auto.stem_init == "whiten"


def test_the_default_batch_on_the_cpu_is_128_and_fitted_below_it_for_small_sets():
    from train.config import Config, fitted_batch
    from train.engine import build_recipe

    big = separable(128 * 48)  # enough for 48 steps of 128
    config = Config(precision="fp32", min_res=0, stem_init="default")
    build_recipe(config, big, separable(8), torch.device("cpu"))
    assert config.batch_size == 128 and config.lr == pytest.approx(0.1)  # lr_base 0.1 per 128 images
    assert fitted_batch(128 * 48) == 512 // 4 and fitted_batch(50_000) == 512  # a GPU keeps 512 on CIFAR-10
    assert fitted_batch(50_000, start=128) == 128 and fitted_batch(3_000, start=128) == 32


def test_progressive_resizing_starts_where_the_model_can_take_the_images():
    """A ConvNeXt's 4-pixel stem and three halvings leave nothing of a 16-pixel image: its schedule stays at full
    size (and the config says so) instead of crashing in the first step."""
    from train.config import Config
    from train.engine import build_recipe

    data = separable(64)
    config = Config(model="convnext_atto", batch_size=32, epochs=4, precision="fp32", stem_init="default")
    recipe = build_recipe(config, data, data, torch.device("cpu"))
    assert config.min_res == 0 and recipe.resolutions == [32] * 4
    assert recipe.train_epoch(recipe.model)["images"] == 64
    config = Config(batch_size=32, epochs=4, precision="fp32", stem_init="default")  # resnet18_cifar takes 16
    assert build_recipe(config, data, data, torch.device("cpu")).resolutions == [16, 20, 24, 32]
    assert config.min_res == 16
