"""The training math: the recipe's parts built from a config, one epoch of SGD and one evaluation pass.

Pure PyTorch — no wandb, no printing beyond the tqdm bar. Running sums stay on the device and are read with
``.item()`` once per epoch (each ``.item()`` is a host–device sync that would stall the GPU every step). Under
``torch.distributed`` the sums are all-reduced, so every rank returns the global figures.
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import timm
import timm.optim
import torch
import torch.distributed as dist
from timm.utils import ModelEmaV3
from torch import nn
from tqdm import tqdm

from train.checkpoint import unwrap
from train.config import CPU_BATCH, DEFAULT_BATCH, Config, ConfigError, resolve
from train.data import DataError, Dataset
from train.loader import DeviceLoader

__all__ = ["EMULATED_BF16", "NonFiniteLossError", "Recipe", "amp_dtype", "build_recipe", "compile_overhead",
           "epoch_resolutions", "evaluate", "make_optimizer", "make_scheduler", "predict", "resolve_device",
           "smallest_resolution", "train_one_epoch", "whiten_stem"]


WHITEN_IMAGES = 5000  # --stem_init whiten: training images whose patches it whitens (airbench's 5,000)


class NonFiniteLossError(FloatingPointError):
    """The training loss became NaN or infinite; ``step`` is the first bad step of the epoch (0-based)."""

    def __init__(self, step: int):
        super().__init__(f"the training loss became NaN or infinite at step {step}")
        self.step = step


def resolve_device(name: str) -> torch.device:
    """``auto`` → CUDA when available, else CPU; anything else as given (``cpu``, ``cuda``, ``cuda:1``).

    Raises:
        ConfigError: the device asked for is not on this machine.
    """
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"--device {name!r}: CUDA is not available on this machine")
    if device.type == "cuda" and (device.index or 0) >= torch.cuda.device_count():
        raise ConfigError(f"--device {name!r}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise ConfigError(f"--device {name!r}: Apple's MPS is not available on this machine")
    return device


def cpu_bf16_native() -> bool:
    """True when this CPU's oneDNN runs bf16 natively (AMX or AVX-512-BF16), where bf16 autocast with channels-last
    trains ~3.3x faster than fp32 NCHW (BENCHMARKS.md, bench/cpu.py); elsewhere bf16 is emulated and slower."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):  # a torch built without oneDNN
        return False


EMULATED_BF16 = "emulated, this CPU has no native bf16 (slower than --precision fp32)"  # what --precision bf16 is there


def amp_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for ``precision`` on ``device``: bf16 for ``bf16``; for ``auto`` bf16 on CUDA and on a CPU
    whose oneDNN runs bf16 natively (:func:`cpu_bf16_native`), else None (fp32)."""
    if precision == "bf16":
        return torch.bfloat16
    if precision == "auto" and (device.type == "cuda" or (device.type == "cpu" and cpu_bf16_native())):
        return torch.bfloat16
    return None


def use_channels_last(device: torch.device) -> bool:
    """Channels-last (NHWC) on CUDA (cuDNN's fastest convolutions) and on the CPU, where oneDNN's convolutions are
    faster in NHWC in both precisions (fp32 1.2x, bf16 1.4x on the development machine: bench/cpu.py)."""
    return device.type in ("cuda", "cpu")


def precision_name(amp: torch.dtype | None, channels_last: bool) -> str:
    """How a run computes, for its start line: ``bf16 autocast, channels-last`` or ``fp32, NCHW``."""
    return f"{'bf16 autocast' if amp is not None else 'fp32'}, {'channels-last' if channels_last else 'NCHW'}"


def make_optimizer(model: nn.Module, *, lr: float, weight_decay: float, momentum: float,
                   device: torch.device) -> torch.optim.Optimizer:
    """SGD with Nesterov momentum (timm's ``sgd``); weight decay skips biases and norm layers.

    The update is torch's fused kernel on CUDA and CPU (one kernel for all parameters), the for-each one elsewhere.
    """
    return timm.optim.create_optimizer_v2(model, "sgd", lr=lr, weight_decay=weight_decay, momentum=momentum,
                                          fused=device.type in ("cuda", "cpu"))


def make_scheduler(optimizer: torch.optim.Optimizer, *, epochs: int, steps_per_epoch: int,
                   warmup_epochs: float, end: float = 1e-4) -> torch.optim.lr_scheduler.LRScheduler:
    """Per-batch learning rate: linear warm-up from lr/10 to lr (the optimizer's) over ``warmup_epochs``, then
    linear decay to ``end`` × lr (1e-4: ~0), which the step after the last batch reaches."""
    total = epochs * steps_per_epoch
    warmup = min(round(warmup_epochs * steps_per_epoch), total)

    def factor(step: int) -> float:
        if step < warmup:
            return 0.1 + 0.9 * step / warmup
        return 1.0 - (1.0 - end) * min(step - warmup, total - warmup) / max(total - warmup, 1)

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


@dataclass
class Recipe:
    """What a config trains with on one device: ``train/run.py`` and the benchmarks build it the same way."""

    train_loader: DeviceLoader
    test_loader: DeviceLoader
    model: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    train_loss: nn.Module
    eval_loss: nn.Module
    amp: torch.dtype | None  # autocast dtype (None = fp32)
    channels_last: bool
    device: torch.device
    ema: ModelEmaV3 | None = None  # an exponential moving average of the weights (--ema): what is evaluated and saved
    resolutions: list[int] | None = None  # training resolution of each epoch (--min_res); None = the images' own
    epochs_done: int = 0  # epochs trained so far: picks the next epoch's resolution and flip side (resume sets it)

    @property
    def evaluated(self) -> nn.Module:
        """The weights the run evaluates, explains and saves as ``model``: the EMA when there is one."""
        return self.ema.module if self.ema is not None else self.model

    def train_epoch(self, net: nn.Module, *, progress: bool = False, desc: str = "train") -> dict[str, float]:
        """One epoch of :func:`train_one_epoch` of ``net`` (the model, or its DDP/compiled wrapper) with this recipe,
        at the epoch's resolution and flip side."""
        loader = self.train_loader
        if self.resolutions:
            loader.resolution = self.resolutions[min(self.epochs_done, len(self.resolutions) - 1)]
        loader.epoch = self.epochs_done
        stats = train_one_epoch(net, self.train_loader, self.optimizer, self.scheduler, self.train_loss,
                               device=self.device, amp=self.amp, channels_last=self.channels_last, progress=progress,
                               desc=desc, ema=self.ema)
        self.epochs_done += 1
        return {**stats, "resolution": loader.resolution}

    def evaluate(self, net: nn.Module, *, tta: bool) -> dict[str, float]:
        """:func:`evaluate` of ``net`` on this recipe's test loader; with an EMA, of the EMA's weights instead."""
        return evaluate(self.ema.module if self.ema is not None else net, self.test_loader, self.eval_loss,
                        device=self.device, amp=self.amp, channels_last=self.channels_last, tta=tta)


def build_recipe(config: Config, train_set: Dataset, test_set: Dataset, device: torch.device, *, rank: int = 0,
                 world_size: int = 1, batch_source: str = "") -> Recipe:
    """Loaders on ``device``, the model (SyncBatchNorm across GPUs under DDP; channels-last on CUDA and the CPU, where
    NHWC gives cuDNN and oneDNN their fastest convolutions), fused SGD, the per-batch schedule, the losses and, with
    ``config.ema``, an EMA of the weights (timm's ``ModelEmaV3``, its decay ramped up by timm's warm-up and capped at
    ``config.ema``: a fixed 0.999 would still hold 14 % of the random initialization after the default run's 1,940
    steps); ``--stem_init auto|whiten`` whitens the first convolution (:func:`whiten_stem`) and
    ``config.stem_init`` then says what it resolved to. An unset ``batch_size`` (and the ``lr`` scaled from it) is
    fitted to ``train_set`` here (:func:`train.config.fitted_batch`), so ``config`` then holds what trains.
    ``batch_source`` says where a set ``batch_size`` came from, for the errors: ``"checkpoint"`` (a resumed run's),
    else the ``--batch_size`` flag.

    Raises:
        DataError: fewer training images than a batch, or a batch that does not split over ``world_size``.
    """
    fitted = config.batch_size is None
    resolve(config, len(train_set), world_size, CPU_BATCH if device.type == "cpu" else DEFAULT_BATCH)
    images, batch = len(train_set), config.batch_size
    named = ("the default batch (its smallest)" if fitted else
             "the checkpoint's batch size (fitted when the run started)" if batch_source == "checkpoint" else
             "--batch_size")
    if images < batch:
        raise DataError(f"{images} training images are fewer than {named} {batch}"
                        + (f"; give --batch_size {images} or less" if fitted else ""))
    if batch % world_size:
        raise DataError(f"{named} {batch} does not split evenly over {world_size} processes"
                        + ("; resume with a process count that divides it" if batch_source == "checkpoint" else ""))
    train_loader = DeviceLoader(train_set, config.batch_size, device, train=True, cutout=config.cutout,
                                seed=config.seed, rank=rank, world_size=world_size, flip=config.flip)
    test_loader = DeviceLoader(test_set, config.eval_batch_size, device, train=False, rank=rank,
                               world_size=world_size)
    model = timm.create_model(config.model, num_classes=len(train_set.classes)).to(device)
    if world_size > 1 and device.type == "cuda":  # BN over the global batch, as one GPU would (torch: GPUs only)
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    if config.stem_init in ("auto", "whiten"):  # before the optimizer and the EMA copy the weights
        picked = torch.randperm(len(train_set), generator=torch.Generator().manual_seed(config.seed))[:WHITEN_IMAGES]
        try:
            whiten_stem(model, train_set.images[picked].to(device).float().div_(255))
            config.stem_init = "whiten"
        except ValueError as exc:
            if config.stem_init == "whiten":
                raise ConfigError(f"{exc}; use --stem_init default for {config.model}") from None
            config.stem_init = "default"  # auto: this model keeps its own initialization
    if 0 < config.min_res < train_loader.size:  # a model that cannot take small images (strided stems) starts larger
        config.min_res = smallest_resolution(model, config.min_res, train_loader.size, device)
    channels_last = use_channels_last(device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer = make_optimizer(model, lr=config.lr, weight_decay=config.weight_decay, momentum=config.momentum,
                               device=device)
    scheduler = make_scheduler(optimizer, epochs=config.epochs, steps_per_epoch=len(train_loader),
                               warmup_epochs=config.warmup_epochs)
    ema = ModelEmaV3(model, decay=config.ema, use_warmup=True) if config.ema else None
    return Recipe(train_loader, test_loader, model, optimizer, scheduler,
                  train_loss=nn.CrossEntropyLoss(label_smoothing=config.label_smoothing),
                  eval_loss=nn.CrossEntropyLoss(), amp=amp_dtype(config.precision, device),
                  channels_last=channels_last, device=device, ema=ema,
                  resolutions=epoch_resolutions(config.epochs, train_loader.size, config.min_res, config.res_ramp))


class _Captured(Exception):  # noqa: N818  (not an error: stops a forward pass once the stem's input is seen)
    pass


def whiten_stem(model: nn.Module, images: torch.Tensor, eps: float = 5e-4) -> int:
    """Set the model's first convolution (timm's ``pretrained_cfg['first_conv']``) to whiten its input patches: its
    first ``2 k`` filters (``k`` = patch dimension, 27 for a 3×3 RGB stem; as many as it has) become ± the
    eigenvectors of the patches' covariance divided by the square root of their eigenvalues, largest first — airbench's
    whitening initialization (Jordan, 2024), which makes the first layer's outputs decorrelated and equally scaled
    from the first step. The patches are those the convolution really sees: ``images`` (floats in [0, 1]) are fed
    through the model until its input arrives (so a model that normalizes inside is handled). Returns how many filters
    were set; the rest keep their initialization.

    Raises:
        ValueError: the model names no first convolution, or it is not a ``Conv2d``.
    """
    name = getattr(model, "pretrained_cfg", {}).get("first_conv")
    conv = model.get_submodule(name) if name else None
    if not isinstance(conv, nn.Conv2d) or conv.groups != 1:
        raise ValueError(f"--stem_init whiten needs a first (ungrouped) Conv2d named in the model's pretrained_cfg, "
                         f"got {name!r}")
    seen: list[torch.Tensor] = []

    def capture(_module: nn.Module, args: tuple[torch.Tensor, ...]) -> None:
        seen.append(args[0].detach())
        raise _Captured

    hook = conv.register_forward_pre_hook(capture)
    try:
        with torch.no_grad():
            model(images)
    except _Captured:
        pass
    finally:
        hook.remove()
    height, width = conv.kernel_size
    channels = seen[0].shape[1]
    covariance, count = torch.zeros(channels * height * width, channels * height * width, dtype=torch.float64), 0
    for chunk in seen[0].split(500):  # the patches of 500 images at a time: 5,000 at once would be ~1 GB
        patches = chunk.double().cpu().unfold(2, height, conv.stride[0]).unfold(3, width, conv.stride[1])
        patches = patches.permute(0, 2, 3, 1, 4, 5).reshape(-1, channels * height * width)  # [N H' W', C kh kw]
        covariance += patches.T @ patches
        count += len(patches)
    eigenvalues, eigenvectors = torch.linalg.eigh(covariance / count)
    filters = (eigenvectors.T / torch.sqrt(eigenvalues.clamp_min(0) + eps)[:, None]).flip(0)
    both = torch.cat([filters, -filters]).reshape(-1, channels, height, width)
    shown = min(len(both), conv.out_channels)
    with torch.no_grad():
        conv.weight[:shown] = both[:shown].to(conv.weight)
    return shown


def smallest_resolution(model: nn.Module, start: int, size: int, device: torch.device) -> int:
    """The smallest side from ``start`` up (in steps of 4) that ``model`` can take, 0 when only ``size`` itself can:
    progressive resizing's first resolution for models whose strides leave nothing of a small image (a ConvNeXt's
    4-pixel stem and three halvings need 32). One forward of two blank images per side tried, in eval mode."""
    was_training = model.training
    model.eval()
    try:
        for side in range(start, size, 4):
            try:
                with torch.no_grad():
                    model(torch.zeros(2, 3, side, side, device=device))
                return side
            except RuntimeError:
                continue
        return 0
    finally:
        model.train(was_training)


def epoch_resolutions(epochs: int, size: int, min_res: int, ramp: float) -> list[int]:
    """The training resolution of each epoch under progressive resizing: ``min_res`` for the first, rising linearly
    to ``size`` over the first ``floor(ramp * epochs)`` epochs, rounded down to a multiple of 4 (never below
    ``min_res``); then ``size``. The last epoch always trains at ``size``, the resolution the model is tested at
    (a 1-epoch run does not ramp). Every epoch at ``size`` when ``min_res`` is 0 or not below it. As FFCV's ResNet
    recipes (Leclerc et al., 2023): the early epochs learn coarse features as well from smaller images, at a
    fraction of the FLOPs."""
    end = min(math.floor(ramp * epochs), epochs - 1)
    if not min_res or min_res >= size or end < 1:
        return [size] * epochs
    return [size if epoch >= end else max(min_res, int((min_res + (size - min_res) * epoch / end) // 4 * 4))
            for epoch in range(epochs)]


def compile_overhead(epoch_seconds: Sequence[float]) -> float:
    """Seconds the first epoch took beyond a steady one (the median of the others): under ``torch.compile`` the
    compilation, which happens during the first training and evaluation calls. 0.0 with fewer than two epochs."""
    if len(epoch_seconds) < 2:
        return 0.0
    return max(epoch_seconds[0] - statistics.median(epoch_seconds[1:]), 0.0)


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _all_reduce(stats: torch.Tensor) -> torch.Tensor:
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(stats)
    return stats


def train_one_epoch(model: nn.Module, loader: Iterable[tuple[torch.Tensor, torch.Tensor]],
                    optimizer: torch.optim.Optimizer, scheduler: torch.optim.lr_scheduler.LRScheduler | None,
                    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], *, device: torch.device,
                    amp: torch.dtype | None = None, channels_last: bool = False, progress: bool = False,
                    desc: str = "train", ema: ModelEmaV3 | None = None) -> dict[str, float]:
    """Run one epoch of training; the scheduler (if any) steps once per batch, the ``ema`` (if any) is updated
    after every optimizer step.

    Returns:
        ``loss`` (mean), ``acc`` (fraction), ``images``, ``seconds``, ``images_per_second``, ``lr`` (after the epoch).

    Raises:
        NonFiniteLossError: the loss was NaN/inf at some step (detected once, at the end of the epoch).
    """
    model.train()
    loss_sum = torch.zeros((), device=device)
    correct = torch.zeros((), device=device)
    bad_step = torch.full((), -1, device=device, dtype=torch.long)
    seen = 0
    _synchronize(device)
    start = time.perf_counter()
    bar = tqdm(loader, desc=desc, disable=not progress, leave=False, unit="batch", dynamic_ncols=True)
    for step, (images, labels) in enumerate(bar):
        if channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        with torch.autocast(device.type, dtype=amp or torch.float32, enabled=amp is not None):
            logits = model(images)
            loss = loss_fn(logits, labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if scheduler is not None:
            scheduler.step()
        if ema is not None:  # the step count drives timm's decay warm-up (the scheduler's, so it survives a resume)
            ema.update(unwrap(model), step=scheduler.last_epoch if scheduler is not None else None)
        loss = loss.detach().float()
        loss_sum += loss * len(labels)
        correct += (logits.detach().argmax(1) == labels).sum()
        bad_step = torch.where((bad_step < 0) & ~torch.isfinite(loss), step, bad_step)
        seen += len(labels)
        if progress and step % 20 == 0:  # the .item() sync only happens when someone watches the bar
            elapsed = time.perf_counter() - start
            bar.set_postfix(loss=f"{loss_sum.item() / seen:.3f}", acc=f"{correct.item() / seen:.3f}",
                            img_s=f"{seen / max(elapsed, 1e-9):.0f}")
    bar.close()
    stats = _all_reduce(torch.stack([loss_sum, correct, torch.tensor(float(seen), device=device)]))
    _synchronize(device)
    seconds = time.perf_counter() - start
    if bad_step.item() >= 0:
        raise NonFiniteLossError(int(bad_step.item()))
    loss_total, correct_total, seen_total = stats.tolist()
    return {
        "loss": (stats[0] / stats[2]).item(),  # a float32 figure (train.files.shortest_floats writes it short)
        "acc": correct_total / seen_total,
        "images": int(seen_total),
        "seconds": seconds,
        "images_per_second": seen_total / seconds,
        "lr": optimizer.param_groups[0]["lr"],
    }


@torch.no_grad()
def predict(model: nn.Module, loader: Iterable[tuple[torch.Tensor, torch.Tensor]], *,
            amp: torch.dtype | None = None, channels_last: bool = False,
            tta: bool = False) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
    """Logits of every image the (unshuffled) loader yields.

    Returns:
        ``(logits, flipped_logits, labels)``: float32 ``[N, C]`` logits of the images, of their mirror images
        (``None`` unless ``tta``), and the labels, all on the loader's device.
    """
    model.eval()
    outputs, flipped, targets = [], [], []
    for images, labels in loader:
        if channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        with torch.autocast(images.device.type, dtype=amp or torch.float32, enabled=amp is not None):
            outputs.append(model(images).float())
            if tta:
                flipped.append(model(images.flip(-1)).float())
        targets.append(labels)
    return torch.cat(outputs), (torch.cat(flipped) if tta else None), torch.cat(targets)


def evaluate(model: nn.Module, loader: Iterable[tuple[torch.Tensor, torch.Tensor]],
             loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], *, device: torch.device,
             amp: torch.dtype | None = None, channels_last: bool = False, tta: bool = False) -> dict[str, float]:
    """Loss and accuracy over the loader; with ``tta`` the logits of each image and its mirror are averaged.

    Returns:
        ``loss``, ``acc`` (with TTA when enabled), ``acc_no_tta`` (single pass), ``images``, ``seconds``.
    """
    _synchronize(device)
    start = time.perf_counter()
    logits, flipped, labels = predict(model, loader, amp=amp, channels_last=channels_last, tta=tta)
    final = (logits + flipped) / 2 if tta else logits
    stats = torch.stack([
        loss_fn(final, labels).float() * len(labels),
        (final.argmax(1) == labels).sum().float(),
        (logits.argmax(1) == labels).sum().float(),
        torch.tensor(float(len(labels)), device=device),
    ])
    stats = _all_reduce(stats)
    _, correct, correct_single, seen = stats.tolist()
    _synchronize(device)
    return {
        "loss": (stats[0] / stats[3]).item(),  # a float32 figure (train.files.shortest_floats writes it short)
        "acc": correct / seen,
        "acc_no_tta": correct_single / seen,
        "images": int(seen),
        "seconds": time.perf_counter() - start,
    }
