"""A split resident on the training device: padded once, shuffled, cropped, flipped and cut out in batches there.

The pure functions :func:`batch_crop`, :func:`batch_flip_lr` and :func:`batch_cutout` augment a whole epoch in a
few tensor operations (the airbench recipe): no DataLoader, no per-image Python per step.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import torch
import torch.nn.functional as F

from train.data import DataError, Dataset

__all__ = ["DeviceLoader", "batch_crop", "batch_cutout", "batch_flip_lr"]


def batch_crop(padded: torch.Tensor, size: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """Random ``size``×``size`` windows of already padded images ``[N, C, H, W]``, one offset per image."""
    n, channels, height, width = padded.shape
    if (height, width) == (size, size):
        return padded
    device = padded.device
    dy = torch.randint(0, height - size + 1, (n,), generator=generator, device=device)
    dx = torch.randint(0, width - size + 1, (n,), generator=generator, device=device)
    rows = (dy[:, None] + torch.arange(size, device=device))[:, None, :, None]
    cols = (dx[:, None] + torch.arange(size, device=device))[:, None, None, :]
    index_n = torch.arange(n, device=device)[:, None, None, None]
    index_c = torch.arange(channels, device=device)[None, :, None, None]
    return padded[index_n, index_c, rows, cols]


def batch_flip_lr(images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Mirror a random half of ``images`` (``[N, C, H, W]``) left to right."""
    flip = torch.rand(len(images), generator=generator, device=images.device) < 0.5
    return torch.where(flip[:, None, None, None], images.flip(-1), images)


def batch_cutout(images: torch.Tensor, size: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """Zero a ``size``×``size`` square at a random centre of each image (DeVries & Taylor, 2017)."""
    if size <= 0:
        return images
    n, _, height, width = images.shape
    device = images.device
    cy = torch.randint(0, height, (n, 1), generator=generator, device=device) - size // 2
    cx = torch.randint(0, width, (n, 1), generator=generator, device=device) - size // 2
    rows = torch.arange(height, device=device)[None, :]
    cols = torch.arange(width, device=device)[None, :]
    inside_rows = (rows >= cy) & (rows < cy + size)  # [N, H]
    inside_cols = (cols >= cx) & (cols < cx + size)  # [N, W]
    mask = inside_rows[:, None, :, None] & inside_cols[:, None, None, :]
    return images.masked_fill(mask, 0)


class DeviceLoader:
    """Batches of one split, resident on ``device``; training batches are shuffled and augmented there.

    The whole split lives on the device as uint8, zero-padded once for the random crop. Each training epoch draws
    one permutation and augments the epoch's images in a few batched tensor ops; batches are then slices, converted
    to ``dtype`` in [0, 1].

    With ``world_size > 1`` (one process per device under torchrun), ``batch_size`` is still the global batch: every
    rank draws the same permutation and augmentation (same generator, same seed) and takes its own ``1/world_size``
    slice of each global batch, so the processes together see exactly the batches one process would. Evaluation
    splits the (unshuffled) set into contiguous, disjoint shards.

    Args:
        dataset: The split to serve.
        batch_size: Images per (global) batch.
        device: Where the images live and batches are made.
        train: Shuffle, augment (crop with ``pad``, flip, ``cutout``) and drop the last partial batch.
        dtype: Floating type of the batches.
        pad: Zero padding of the random crop.
        cutout: Side of the cutout square (0 = off).
        seed: Seeds the shuffling and augmentation generator (its state is saved in checkpoints).
        rank: This process's rank; world_size: number of processes sharing each batch.
    """

    def __init__(self, dataset: Dataset, batch_size: int, device: torch.device | str, *, train: bool,
                 dtype: torch.dtype = torch.float32, pad: int = 4, cutout: int = 0, seed: int = 0,
                 rank: int = 0, world_size: int = 1, flip: str = "random"):
        if train and batch_size % world_size:
            raise DataError(f"--batch_size {batch_size} does not split evenly over {world_size} processes")
        if train and len(dataset.labels) < batch_size:
            raise DataError(f"{len(dataset.labels)} training images are fewer than --batch_size {batch_size}")
        self.device = torch.device(device)
        if not train and world_size > 1:  # evaluation: a contiguous shard each
            bounds = [len(dataset.labels) * r // world_size for r in range(world_size + 1)]
            dataset = dataset.subset(torch.arange(bounds[rank], bounds[rank + 1]))
        self.size = dataset.images.shape[-1]
        images = dataset.images.to(self.device)
        self.images = F.pad(images, (pad,) * 4) if train and pad > 0 else images  # padded once, not every epoch
        self.labels = dataset.labels.to(self.device)
        self.batch_size, self.train, self.dtype = batch_size, train, dtype
        self.cutout, self.rank, self.world_size = cutout, rank, world_size
        self.generator = torch.Generator(device=self.device).manual_seed(seed)
        self.flip, self.epoch, self.resolution = flip, 0, self.size
        if flip not in ("random", "alternate"):
            raise ValueError(f"flip must be random or alternate, got {flip!r}")
        # alternate: the side each image is first seen from, drawn once (from its own stream: resume-safe)
        side = torch.Generator(device=self.device).manual_seed(seed + 1)
        self.mirror = torch.rand(len(self.labels), generator=side, device=self.device) < 0.5

    def __len__(self) -> int:
        if self.train:
            return len(self.labels) // self.batch_size
        return math.ceil(len(self.labels) / self.batch_size)

    def _epoch(self) -> tuple[torch.Tensor, torch.Tensor]:
        if not self.train:
            return self.images, self.labels
        order = torch.randperm(len(self.labels), generator=self.generator, device=self.device)
        images = batch_crop(self.images[order], self.size, self.generator)
        if self.flip == "alternate":  # each image's own side, mirrored every other epoch (airbench's scheme)
            images = torch.where((self.mirror[order] ^ bool(self.epoch % 2))[:, None, None, None], images.flip(-1),
                                 images)
        else:
            images = batch_flip_lr(images, self.generator)
        images = batch_cutout(images, self.cutout, self.generator)
        self.epoch += 1
        return images, self.labels[order]

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        images, labels = self._epoch()
        local = self.batch_size // self.world_size if self.train else self.batch_size
        offset = self.rank * local if self.train else 0
        for step in range(len(self)):
            start = step * self.batch_size + offset
            window = slice(start, start + local)
            batch = images[window].to(self.dtype).div_(255)
            if self.train and self.resolution < self.size:  # progressive resizing: a cheaper, smaller view
                batch = F.interpolate(batch, size=(self.resolution, self.resolution), mode="bilinear",
                                      antialias=True)
            yield batch, labels[window]
