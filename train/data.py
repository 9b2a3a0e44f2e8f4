"""Images in, uint8 tensors out: the only code that touches disk or network for images.

Sources, chosen by what ``data_dir`` holds:

* ``train/`` and ``test/`` class folders: an image-folder data set (class names = sorted folder names), e.g. the
  JPEG CIFAR-10 copy or any user's own images (resized to 32×32 when they are not).
* ``cifar-10-batches-py/``: the CIFAR-10 python batches, read with a restricted unpickler that only admits what
  those files contain, so a crafted batch file never runs code.
* neither: CIFAR-10 is downloaded there with torchvision's downloader, then read as above.

Each split is decoded once into uint8 ``[N, 3, 32, 32]`` images and int64 labels and cached next to the data
(``<data_dir>/.cache/``; rebuilt when the source files change). :class:`DeviceLoader` keeps a split on the training
device and augments, shuffles and batches it there with the pure functions :func:`batch_crop`,
:func:`batch_flip_lr` and :func:`batch_cutout` (the airbench recipe): no DataLoader, no per-image Python per step.
"""

from __future__ import annotations

import hashlib
import math
import os
import pickle
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

__all__ = [
    "DataError",
    "Dataset",
    "DeviceLoader",
    "balanced_subset",
    "batch_crop",
    "batch_cutout",
    "batch_flip_lr",
    "load_data",
    "read_cifar_batch",
]

IMAGE_SIZE = 32
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
CIFAR_FOLDER = "cifar-10-batches-py"
CIFAR_TRAIN_BATCHES = tuple(f"data_batch_{i}" for i in range(1, 6))
CIFAR_TEST_BATCHES = ("test_batch",)
CACHE_VERSION = 1


class DataError(ValueError):
    """The data cannot be found, read or used; the message is one line meant for the user."""


@dataclass
class Dataset:
    """One split held in memory: raw pixels and labels, plus the class names they index."""

    images: torch.Tensor  # uint8 [N, 3, 32, 32], raw pixels
    labels: torch.Tensor  # int64 [N]
    classes: list[str]

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, indices: torch.Tensor) -> Dataset:
        """The images and labels at ``indices``, same classes."""
        return Dataset(self.images[indices], self.labels[indices], self.classes)


# ---------------------------------------------------------------------------------------------------------------
# CIFAR-10 python batches: a restricted unpickler


def _numpy_reconstruct():
    try:  # numpy >= 2 renamed numpy.core to numpy._core
        from numpy._core.multiarray import _reconstruct
    except ImportError:
        from numpy.core.multiarray import _reconstruct
    return _reconstruct


class _CifarUnpickler(pickle.Unpickler):
    """Admits only what CIFAR-10 batch files contain (dicts, lists, bytes, str, numbers and uint8 numpy arrays)."""

    def find_class(self, module: str, name: str):
        allowed = {
            ("numpy.core.multiarray", "_reconstruct"): _numpy_reconstruct,
            ("numpy._core.multiarray", "_reconstruct"): _numpy_reconstruct,
            ("numpy", "ndarray"): lambda: np.ndarray,
            ("numpy", "dtype"): lambda: np.dtype,
            ("_codecs", "encode"): lambda: __import__("codecs").encode,  # bytes pickled by Python 3, protocol < 3
        }
        if (module, name) not in allowed:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}: a CIFAR batch holds only arrays and lists")
        return allowed[(module, name)]()


def read_cifar_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Read one CIFAR-10 python batch file safely.

    Returns:
        uint8 images ``[N, 3, 32, 32]`` and int64 labels ``[N]``.

    Raises:
        DataError: the file is missing, truncated, not a CIFAR batch, or carries anything but data.
    """
    try:
        with open(path, "rb") as file:
            batch = _CifarUnpickler(file, encoding="bytes").load()
        data = np.asarray(batch[b"data"], dtype=np.uint8)
        labels = np.asarray(batch[b"labels"], dtype=np.int64)
        images = data.reshape(-1, 3, IMAGE_SIZE, IMAGE_SIZE)
    except FileNotFoundError:
        raise DataError(f"CIFAR-10 batch {path} is missing") from None
    except Exception as exc:  # any failure to parse is the same user-facing problem
        raise DataError(f"{path} is not a valid CIFAR-10 batch ({type(exc).__name__}: {exc})") from None
    if len(images) != len(labels):
        raise DataError(f"{path} is not a valid CIFAR-10 batch ({len(images)} images but {len(labels)} labels)")
    return images, labels


def _cifar_classes(folder: Path) -> list[str]:
    meta = folder / "batches.meta"
    if meta.is_file():
        try:
            with open(meta, "rb") as file:
                names = _CifarUnpickler(file, encoding="bytes").load()[b"label_names"]
            return [n.decode() if isinstance(n, bytes) else str(n) for n in names]
        except Exception as exc:
            raise DataError(f"{meta} is not a valid CIFAR-10 meta file ({type(exc).__name__})") from None
    from train.model import CIFAR10_CLASSES

    return list(CIFAR10_CLASSES)


def _read_cifar_split(folder: Path, split: str) -> Dataset:
    names = CIFAR_TRAIN_BATCHES if split == "train" else CIFAR_TEST_BATCHES
    parts = [read_cifar_batch(folder / name) for name in names]
    images = torch.from_numpy(np.concatenate([p[0] for p in parts]))
    labels = torch.from_numpy(np.concatenate([p[1] for p in parts]))
    classes = _cifar_classes(folder)
    if len(labels) and (labels.min() < 0 or labels.max() >= len(classes)):
        raise DataError(f"{folder}: labels outside 0..{len(classes) - 1}")
    return Dataset(images, labels, classes)


def download_cifar10(data_dir: Path, url: str | None = None, md5: str | None = None) -> None:
    """Download and unpack the CIFAR-10 python batches into ``data_dir`` with torchvision's downloader.

    Args:
        data_dir: Where ``cifar-10-batches-py/`` will appear.
        url: Archive address (default: torchvision's CIFAR-10 address); tests serve a local copy.
        md5: Expected archive checksum (default: torchvision's when ``url`` is the default, else unchecked).
    """
    from torchvision.datasets import CIFAR10
    from torchvision.datasets.utils import download_and_extract_archive

    if url is None:
        url, md5 = CIFAR10.url, CIFAR10.tgz_md5
    created = not data_dir.exists()
    try:
        data_dir.mkdir(parents=True, exist_ok=True)
        download_and_extract_archive(url, download_root=str(data_dir), filename=CIFAR10.filename, md5=md5)
    except Exception as exc:
        if created:  # leave no empty or half-downloaded folder behind
            shutil.rmtree(data_dir, ignore_errors=True)
        raise DataError(
            f"--data_dir {str(data_dir)!r} has no train/ and test/ folders nor {CIFAR_FOLDER}/, and downloading "
            f"CIFAR-10 into it failed ({type(exc).__name__}: {exc}); point --data_dir at a data set"
        ) from None


# ---------------------------------------------------------------------------------------------------------------
# Image folders


def _class_folders(root: Path) -> list[str]:
    return sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))


def _image_files(root: Path, classes: list[str]) -> list[tuple[Path, int]]:
    files = []
    for label, name in enumerate(classes):
        for path in sorted((root / name).iterdir()):
            if path.name.startswith("."):
                continue
            if path.is_dir() or path.suffix.lower() not in IMAGE_EXTENSIONS:
                raise DataError(f"{path} is not an image file (expected one of {', '.join(IMAGE_EXTENSIONS)})")
            files.append((path, label))
    return files


def _decode(path: Path) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            image = image.convert("RGB")
            if image.size != (IMAGE_SIZE, IMAGE_SIZE):
                image = image.resize((IMAGE_SIZE, IMAGE_SIZE), Image.Resampling.BILINEAR)
            return np.asarray(image, dtype=np.uint8)
    except (OSError, UnidentifiedImageError, ValueError) as exc:
        raise DataError(f"cannot read image {path} ({type(exc).__name__})") from None


def _read_image_folder(root: Path, classes: list[str]) -> Dataset:
    files = _image_files(root, classes)
    if not files:
        raise DataError(f"{root} has class folders but no images")
    pixels = np.stack([_decode(path) for path, _ in files])  # [N, H, W, 3]
    images = torch.from_numpy(pixels).permute(0, 3, 1, 2).contiguous()
    labels = torch.tensor([label for _, label in files], dtype=torch.int64)
    return Dataset(images, labels, classes)


# ---------------------------------------------------------------------------------------------------------------
# Source detection and the decoded-array cache


def _fingerprint(paths: list[Path]) -> str:
    """A hash of the files' names, sizes and modification times: changes whenever the source changes."""
    digest = hashlib.sha1(f"v{CACHE_VERSION}".encode())
    for path in paths:
        stat = path.stat()
        digest.update(f"{path}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()


def _cached(cache_file: Path, key: str, build) -> Dataset:
    """Load ``cache_file`` when it was built from the same source (``key``), else ``build()`` and store it."""
    if cache_file.is_file():
        try:
            blob = torch.load(cache_file, map_location="cpu", weights_only=True)
            if blob.get("key") == key:
                return Dataset(blob["images"], blob["labels"], list(blob["classes"]))
        except Exception:  # a stale or damaged cache is simply rebuilt
            pass
    dataset = build()
    blob = {"key": key, "images": dataset.images, "labels": dataset.labels, "classes": dataset.classes}
    try:
        cache_file.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=cache_file.parent, suffix=".tmp", delete=False) as tmp:
            torch.save(blob, tmp)
        os.replace(tmp.name, cache_file)
    except OSError:  # a read-only data folder still works, just without the cache
        pass
    return dataset


def load_data(data_dir: str | os.PathLike, download: bool = True) -> tuple[Dataset, Dataset]:
    """Load the train and test splits found in (or downloaded into) ``data_dir``.

    Returns:
        ``(train, test)`` with the same class names.

    Raises:
        DataError: nothing usable is there and it cannot be downloaded, or the data is inconsistent or unreadable.
    """
    root = Path(data_dir)
    if root.exists() and not root.is_dir():
        raise DataError(f"--data_dir {str(root)!r} is a file, not a folder")
    if (root / "train").is_dir() and (root / "test").is_dir():
        train_classes, test_classes = _class_folders(root / "train"), _class_folders(root / "test")
        if not train_classes:
            raise DataError(f"--data_dir {str(root)!r}: train/ has no class folders")
        if train_classes != test_classes:
            missing = sorted(set(train_classes) ^ set(test_classes))
            raise DataError(f"--data_dir {str(root)!r}: train/ and test/ class folders differ ({', '.join(missing)})")
        splits = []
        for split in ("train", "test"):
            files = [path for path, _ in _image_files(root / split, train_classes)]
            key = _fingerprint(files)
            splits.append(_cached(root / ".cache" / f"{split}.pt", key,
                                  lambda s=split: _read_image_folder(root / s, train_classes)))
        return splits[0], splits[1]
    folder = root / CIFAR_FOLDER
    if not folder.is_dir():
        if not download:
            raise DataError(f"--data_dir {str(root)!r} has no train/ and test/ folders nor {CIFAR_FOLDER}/")
        download_cifar10(root)
    splits = []
    for split, names in (("train", CIFAR_TRAIN_BATCHES), ("test", CIFAR_TEST_BATCHES)):
        paths = [folder / name for name in names]
        missing = [p.name for p in paths if not p.is_file()]
        if missing:
            raise DataError(f"--data_dir {str(root)!r}: {CIFAR_FOLDER}/ lacks {', '.join(missing)}")
        splits.append(_cached(root / ".cache" / f"cifar-{split}.pt", _fingerprint(paths),
                              lambda s=split: _read_cifar_split(folder, s)))
    return splits[0], splits[1]


def balanced_subset(labels: torch.Tensor, size: int, seed: int) -> torch.Tensor:
    """Indices of a seeded subset of ``size`` items with every class equally represented (±1).

    Args:
        labels: int64 ``[N]`` class labels.
        size: Number of items wanted; ``0`` or ``>= N`` means all of them.
        seed: Seeds the choice within each class.

    Returns:
        Sorted int64 indices into ``labels``.
    """
    if size <= 0 or size >= len(labels):
        return torch.arange(len(labels))
    generator = torch.Generator().manual_seed(seed)
    classes = torch.unique(labels)
    quota = [size // len(classes) + (1 if i < size % len(classes) else 0) for i in range(len(classes))]
    chosen = []
    for cls, want in zip(classes.tolist(), quota, strict=True):
        members = torch.nonzero(labels == cls).flatten()
        chosen.append(members[torch.randperm(len(members), generator=generator)[:want]])
    return torch.sort(torch.cat(chosen)).values


# ---------------------------------------------------------------------------------------------------------------
# Batched augmentation on the device (pure functions) and the loader


def batch_crop(images: torch.Tensor, pad: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """Random crops of ``images`` (``[N, C, H, W]``) after zero-padding each side by ``pad``, one offset per image."""
    if pad <= 0:
        return images
    n, channels, height, width = images.shape
    padded = F.pad(images, (pad, pad, pad, pad))
    device = images.device
    dy = torch.randint(0, 2 * pad + 1, (n,), generator=generator, device=device)
    dx = torch.randint(0, 2 * pad + 1, (n,), generator=generator, device=device)
    rows = (dy[:, None] + torch.arange(height, device=device))[:, None, :, None]
    cols = (dx[:, None] + torch.arange(width, device=device))[:, None, None, :]
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

    The whole split lives on the device as uint8. Each training epoch draws one permutation and augments the
    epoch's images in a few batched tensor ops; batches are then slices, converted to ``dtype`` in [0, 1].

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
                 rank: int = 0, world_size: int = 1):
        if train and batch_size % world_size:
            raise DataError(f"--batch_size {batch_size} does not split evenly over {world_size} processes")
        if train and len(dataset.labels) < batch_size:
            raise DataError(f"{len(dataset.labels)} training images are fewer than --batch_size {batch_size}")
        self.device = torch.device(device)
        if not train and world_size > 1:  # evaluation: a contiguous shard each
            bounds = [len(dataset.labels) * r // world_size for r in range(world_size + 1)]
            dataset = dataset.subset(torch.arange(bounds[rank], bounds[rank + 1]))
        self.images = dataset.images.to(self.device)
        self.labels = dataset.labels.to(self.device)
        self.batch_size, self.train, self.dtype = batch_size, train, dtype
        self.pad, self.cutout, self.rank, self.world_size = pad, cutout, rank, world_size
        self.generator = torch.Generator(device=self.device).manual_seed(seed)

    def __len__(self) -> int:
        if self.train:
            return len(self.labels) // self.batch_size
        return math.ceil(len(self.labels) / self.batch_size)

    def _epoch(self) -> tuple[torch.Tensor, torch.Tensor]:
        if not self.train:
            return self.images, self.labels
        order = torch.randperm(len(self.labels), generator=self.generator, device=self.device)
        images = batch_crop(self.images[order], self.pad, self.generator)
        images = batch_flip_lr(images, self.generator)
        images = batch_cutout(images, self.cutout, self.generator)
        return images, self.labels[order]

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        images, labels = self._epoch()
        local = self.batch_size // self.world_size if self.train else self.batch_size
        offset = self.rank * local if self.train else 0
        for step in range(len(self)):
            start = step * self.batch_size + offset
            window = slice(start, start + local)
            yield images[window].to(self.dtype).div_(255), labels[window]
