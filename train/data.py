"""Images in, uint8 tensors out: the only code that touches disk or network for images.

Sources, chosen by what ``data_dir`` holds:

* ``train/`` and ``test/`` class folders: an image-folder data set (class names = sorted folder names), e.g. the
  JPEG CIFAR-10 copy or any user's own images (see :func:`decode_image` for how any image becomes 32×32 RGB).
* ``cifar-10-batches-py/``: the CIFAR-10 python batches, read with a restricted unpickler that only admits what
  those files contain, so a crafted batch file never runs code and never expands into gigabytes.
* neither: CIFAR-10 is downloaded there with torchvision's downloader, then read as above.

Each split is decoded once into uint8 ``[N, 3, 32, 32]`` images and int64 labels and cached next to the data
(``<data_dir>/.cache/``; keyed on the class folders and the files' names and content, and spot-checked by decoding a
few images again on every load). Batching on the device is
:mod:`train.loader`'s job.
"""

from __future__ import annotations

import hashlib
import io
import os
import pickle
import random
import shutil
import stat
import warnings
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from train.files import atomic_write

__all__ = [
    "CIFAR10_CLASSES",
    "DataError",
    "Dataset",
    "IMAGE_SIZE",
    "Images",
    "RESIZE_FILTER",
    "balanced_subset",
    "decode_image",
    "decode_images",
    "download_cifar10",
    "image_files",
    "image_inputs",
    "load_data",
    "load_split",
    "read_cifar_batch",
    "read_images",
    "resize_note",
    "special_note",
]

CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
IMAGE_SIZE = 32
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp", ".gif")
RESIZE_FILTER = "bilinear"  # Pillow's, with its antialiasing when shrinking
BACKGROUND = (255, 255, 255)  # what transparent pixels are composited onto: white, as image viewers show them
CIFAR_FOLDER = "cifar-10-batches-py"
CIFAR_TRAIN_BATCHES = tuple(f"data_batch_{i}" for i in range(1, 6))
CIFAR_TEST_BATCHES = ("test_batch",)
CIFAR_ROW = 3 * IMAGE_SIZE * IMAGE_SIZE
MAX_BATCH_BYTES = 1 << 30  # a CIFAR-10 batch is ~31 MB
CACHE_VERSION = 4  # 3: the cache holds a hash of its tensors; 4: keyed on the files' content
SPOT_CHECK = 16  # images of a cached image folder decoded again on every load and compared with the cache


class DataError(ValueError):
    """The data cannot be found, read or used; the message is one line meant for the user."""


@dataclass
class Dataset:
    """One split held in memory: raw pixels and labels, plus the class names they index."""

    images: torch.Tensor  # uint8 [N, 3, 32, 32], raw pixels
    labels: torch.Tensor  # int64 [N]
    classes: list[str]
    notes: list[str] = field(default_factory=list)  # what loading did that the user should hear ("warning: ...")
    files: list[str] | None = None  # per image, relative to the data root ("test/cat/0001.jpg"); None: CIFAR batches

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, indices: torch.Tensor) -> Dataset:
        """The images, labels and files at ``indices``, same classes."""
        files = None if self.files is None else [self.files[i] for i in torch.as_tensor(indices).tolist()]
        return Dataset(self.images[indices], self.labels[indices], self.classes, files=files)


# ---------------------------------------------------------------------------------------------------------------------
# CIFAR-10 python batches: a restricted unpickler


def _numpy_reconstruct():
    try:  # numpy >= 2 renamed numpy.core to numpy._core
        from numpy._core.multiarray import _reconstruct
    except ImportError:
        from numpy.core.multiarray import _reconstruct
    return _reconstruct


class _CifarUnpickler(pickle.Unpickler):
    """Admits only what CIFAR-10 batch files contain (dicts, lists, bytes, str, numbers and numpy arrays)."""

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


def _unpickle(path: Path) -> object:
    if path.stat().st_size > MAX_BATCH_BYTES:
        raise DataError(f"{path} is larger than {MAX_BATCH_BYTES >> 20} MB: not a CIFAR-10 batch")
    with open(path, "rb") as file:
        return _CifarUnpickler(file, encoding="bytes").load()


def read_cifar_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Read one CIFAR-10 python batch file safely.

    Only a uint8 ``data`` array of 3,072-byte rows and a flat list of int ``labels`` are accepted, and they are
    checked before anything is converted, so shared references in a crafted pickle (a "billion laughs") are never
    expanded.

    Returns:
        uint8 images ``[N, 3, 32, 32]`` and int64 labels ``[N]``.

    Raises:
        DataError: the file is missing, truncated, not a CIFAR batch, or carries anything but data.
    """
    try:
        batch = _unpickle(path)
        data, labels = batch[b"data"], batch[b"labels"]
        if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != CIFAR_ROW:
            raise ValueError(f"data is not a uint8 array of {CIFAR_ROW}-byte rows")
        if not isinstance(labels, list) or len(labels) != len(data) or not all(type(x) is int for x in labels):
            raise ValueError(f"labels are not a list of {len(data)} ints")
        images = data.reshape(-1, 3, IMAGE_SIZE, IMAGE_SIZE)
    except FileNotFoundError:
        raise DataError(f"CIFAR-10 batch {path} is missing") from None
    except DataError:
        raise
    except Exception as exc:  # any failure to parse is the same user-facing problem
        raise DataError(f"{path} is not a valid CIFAR-10 batch ({type(exc).__name__}: {str(exc)[:200]})") from None
    return images, np.asarray(labels, dtype=np.int64)


def _cifar_classes(folder: Path) -> list[str]:
    meta = folder / "batches.meta"
    if not meta.is_file():
        return list(CIFAR10_CLASSES)
    try:
        names = _unpickle(meta)[b"label_names"]
        if not isinstance(names, list) or not 0 < len(names) <= 100_000:
            raise ValueError("label_names is not a list of names")
        return [n.decode() if isinstance(n, bytes) else str(n) for n in names]
    except Exception as exc:
        raise DataError(f"{meta} is not a valid CIFAR-10 meta file ({type(exc).__name__})") from None


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
    created = data_dir.absolute()  # the topmost folder this call creates: removed whole if the download fails
    while not created.parent.exists():
        created = created.parent
    created = created if not created.exists() else None
    try:
        data_dir.mkdir(parents=True, exist_ok=True)
        download_and_extract_archive(url, download_root=str(data_dir), filename=CIFAR10.filename, md5=md5)
    except Exception as exc:
        if created is not None:  # leave no empty or half-downloaded folder behind, nor the parents made for it
            shutil.rmtree(created, ignore_errors=True)
        raise DataError(
            f"--data_dir {str(data_dir)!r} has no train/ and test/ folders nor {CIFAR_FOLDER}/, and downloading "
            f"CIFAR-10 into it failed ({type(exc).__name__}: {str(exc)[:200]}); point --data_dir at a data set, "
            f"or download {url} yourself and unpack it there (tar xzf {CIFAR10.filename} -C {str(data_dir)!r})"
        ) from None


# ---------------------------------------------------------------------------------------------------------------------
# Images: any file Pillow reads, in any mode and size, to 32×32 RGB uint8


def _to_rgb(image):
    """Pillow's ``convert("RGB")`` clips 16-bit pixels to white, drops alpha and truncates floats to black; this
    scales 16-bit and float pixels to 8 bits and composites transparency onto :data:`BACKGROUND`."""
    from PIL import Image

    mode = image.mode
    if mode.startswith("I;16") or mode in ("I", "F"):
        pixels = np.asarray(image, dtype=np.float64)
        if not np.isfinite(pixels).all():
            raise ValueError(f"{mode} pixels that are not finite numbers")
        low, high = pixels.min(), pixels.max()
        if mode == "F" and low >= 0 and high <= 1:  # float images in [0, 1]
            pixels = pixels * 255
        elif mode.startswith("I;16") or (low >= 0 and 255 < high <= 65535):  # 16-bit samples
            pixels = pixels / 257
        elif low < 0 or high > 255:
            raise ValueError(f"{mode} pixels in [{low:g}, {high:g}], neither 8 nor 16 bits nor floats in [0, 1]")
        image = Image.fromarray(np.rint(pixels).astype(np.uint8), mode="L")
    if mode in ("RGBA", "LA", "PA", "La", "RGBa") or (mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (*BACKGROUND, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


def decode_image(path: Path, size: int = IMAGE_SIZE,
                 thumbnail: int = 0) -> tuple[np.ndarray, tuple[int, int]] | tuple[np.ndarray, tuple[int, int],
                                                                              np.ndarray]:
    """Read any image Pillow can decode as ``size``×``size`` RGB uint8 ``[H, W, 3]``.

    EXIF orientation is applied; 16-bit and float pixels are scaled to 8 bits (floats in [0, 1] or [0, 255];
    others are refused); transparent pixels are composited onto white; palette, grey, CMYK and other modes are
    converted to RGB; other sizes are resized with Pillow's bilinear filter (aspect ratio not kept).

    Args:
        path: The image file.
        size: Side of the square the image is resized to (the model's input size).
        thumbnail: Also return the image as converted, scaled to fit ``thumbnail``×``thumbnail`` (aspect ratio
            kept) and centred on white, for display (0 = no thumbnail).

    Returns:
        The pixels, the original ``(width, height)`` and, with ``thumbnail``, the thumbnail.

    Raises:
        DataError: unreadable, not an image, a decompression bomb (more pixels than Pillow's limit), or pixels
            that cannot be scaled to 8 bits.
    """
    from PIL import Image, ImageOps

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as image:
                original = image.size
                image = _to_rgb(ImageOps.exif_transpose(image))
                pixels = np.asarray(image if image.size == (size, size) else
                                    image.resize((size, size), Image.Resampling.BILINEAR), dtype=np.uint8)
                if not thumbnail:
                    return pixels, original
                enlarge = max(image.size) < thumbnail  # small images grow in whole pixels, large ones shrink smoothly
                small = ImageOps.contain(image, (thumbnail, thumbnail),
                                         Image.Resampling.NEAREST if enlarge else Image.Resampling.BILINEAR)
                canvas = Image.new("RGB", (thumbnail, thumbnail), BACKGROUND)
                canvas.paste(small, ((thumbnail - small.width) // 2, (thumbnail - small.height) // 2))
                return pixels, original, np.asarray(canvas, dtype=np.uint8)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise DataError(f"image {path} is too large to decode safely ({str(exc).split('.')[0]})") from None
    except (OSError, SyntaxError, ValueError, EOFError, MemoryError) as exc:
        # Pillow raises UnidentifiedImageError (an OSError) for non-images, SyntaxError/EOFError for damaged ones;
        # its message is the decoder's reason (on one line: a reason can span several)
        detail = " ".join(str(exc).replace(f" {str(path)!r}", "").split())[:200]
        raise DataError(f"cannot read image {path} ({type(exc).__name__}{': ' + detail if detail else ''})") from None


def _special(path: Path) -> str:
    """What ``path`` is when it exists but is neither a regular file nor a folder (links followed), else ``""``.

    Reading a FIFO blocks until someone writes to it, a character device may never end: only regular files are
    read."""
    try:
        mode = path.stat().st_mode
    except OSError:
        return ""
    if stat.S_ISREG(mode) or stat.S_ISDIR(mode):
        return ""
    return "FIFO" if stat.S_ISFIFO(mode) else "socket" if stat.S_ISSOCK(mode) else \
        "device" if stat.S_ISCHR(mode) or stat.S_ISBLK(mode) else "special file"


def special_note(skipped: list[tuple[Path, str]]) -> list[str]:
    """One ``warning:`` line naming the special files (FIFOs, sockets, devices) that were skipped, if any."""
    if not skipped:
        return []
    shown = ", ".join(f"{path} ({kind})" for path, kind in skipped[:5])
    more = f" and {len(skipped) - 5} more" if len(skipped) > 5 else ""
    return [f"warning: skipped {len(skipped)} file(s) that are not regular files (reading them could block "
            f"forever): {shown}{more}"]


def image_files(folder: Path, recursive: bool = False) -> tuple[list[Path], list[tuple[Path, str]]]:
    """The image files of ``folder`` in name order (hidden files skipped), and the special files (FIFOs, sockets,
    devices) skipped with what they are: only regular files are read.

    Raises:
        DataError: a file that is not an image by its extension, or a broken symbolic link.
    """
    files, special = [], []
    for path in sorted(folder.rglob("*") if recursive else folder.iterdir()):
        if path.name.startswith(".") or (recursive and path.is_dir()):
            continue
        if path.is_symlink() and not path.exists():
            raise DataError(f"{path} is a broken symbolic link")
        if _special(path):
            special.append((path, _special(path)))
            continue
        if path.is_dir() or path.suffix.lower() not in IMAGE_EXTENSIONS:
            raise DataError(f"{path} is not an image file (expected one of {', '.join(IMAGE_EXTENSIONS)})")
        files.append(path)
    return files, special


@dataclass
class Images:
    """Images read from files for the model: pixels, thumbnails, names, original sizes, and what was skipped."""

    pixels: torch.Tensor  # uint8 [N, 3, 32, 32]
    thumbnails: list[np.ndarray]  # uint8 [t, t, 3], for display: of the first images only when bounded
    names: list[str]
    sizes: list[tuple[int, int]]
    skipped: list[tuple[str, str]]  # (file, why) with skip_bad
    notes: list[str]


def image_inputs(paths: list[str | os.PathLike], skip_special: bool = True) -> tuple[list[Path], set[Path],
                                                                                      list[tuple[Path, str]]]:
    """The files ``paths`` name — files, and the files of folders recursively in name order; hidden files of a
    folder and repeats left out — without reading any of them.

    Returns:
        The files, those named directly (which must be images even with ``skip_bad``), and the special files
        skipped with what they are (``special_note`` says so in one line).

    Raises:
        DataError: a missing path, or a special file (FIFO, socket, device) when ``skip_special`` is False.
    """
    files, direct, seen, special = [], set(), set(), []
    for given in paths:
        path = Path(given)
        try:
            if not path.exists():
                raise DataError(f"--images: {str(path)!r} does not exist")
            found = sorted(p for p in path.rglob("*") if not p.is_dir()) if path.is_dir() else [path]
        except OSError as exc:
            raise DataError(f"--images: {str(path)!r} cannot be read ({exc.strerror or exc})") from None
        for file in found:
            if (file.name.startswith(".") and file != path) or file.absolute() in seen:
                continue
            seen.add(file.absolute())
            kind = _special(file)
            if kind and not skip_special:
                raise DataError(f"--images: {file} is a {kind}, not a regular file")
            if kind:
                special.append((file, kind))
                continue
            files.append(file)
            if file == path:
                direct.add(file)
    return files, direct, special


def decode_images(files: list[Path], direct: set[Path] = frozenset(), skip_bad: bool = False, thumbnail: int = 128,
                  thumbnails: int | None = None) -> Images:
    """Decode ``files`` (from :func:`image_inputs`) as the model's input: 32×32 pixels, original sizes, and
    display thumbnails of the first ``thumbnails`` of them (None = all; each is 49 KB at 128×128).

    Raises:
        DataError: a non-image or unreadable file (without ``skip_bad``; always for a file in ``direct``).
    """
    pixels, thumbs, names, sizes, skipped = [], [], [], [], []
    for file in files:
        try:
            if file.suffix.lower() not in IMAGE_EXTENSIONS and file not in direct:
                raise DataError(f"{file} is not an image file (expected one of {', '.join(IMAGE_EXTENSIONS)})")
            array, size, thumb = decode_image(file, thumbnail=thumbnail)
        except DataError as exc:
            if not (skip_bad and file not in direct):
                raise
            skipped.append((str(file), str(exc)))
            continue
        pixels.append(array)
        if thumbnails is None or len(thumbs) < thumbnails:
            thumbs.append(thumb)
        names.append(str(file))
        sizes.append(size)
    images = torch.from_numpy(np.stack(pixels)).permute(0, 3, 1, 2).contiguous() if pixels else \
        torch.zeros(0, 3, IMAGE_SIZE, IMAGE_SIZE, dtype=torch.uint8)
    return Images(images, thumbs, names, sizes, skipped, resize_note(Counter(sizes)))


def read_images(paths: list[str | os.PathLike], skip_bad: bool = False, thumbnail: int = 128,
                skip_special: bool = True) -> Images:
    """Read image files, and the image files of folders (recursively, in name order), as the model's input: all of
    them at once (:func:`image_inputs` and :func:`decode_images` read any number in bounded batches).

    Args:
        paths: Files or folders.
        skip_bad: Skip (and list in ``skipped``) the files of a folder that are not images or cannot be read, instead
            of refusing. A file named directly is always required to be an image.
        thumbnail: Side of the display thumbnails.
        skip_special: Skip files that are not regular files (FIFOs, sockets, devices: reading one could block
            forever), with a ``warning:`` line in ``notes``; False refuses them.

    Raises:
        DataError: a missing path, a non-image or unreadable file (without ``skip_bad``), a special file (without
            ``skip_special``), or no image at all.
    """
    files, direct, special = image_inputs(paths, skip_special)
    images = decode_images(files, direct, skip_bad, thumbnail)
    if not images.names:
        left_out = len(images.skipped) + len(special)
        raise DataError("--images: no image to explain" + (f" ({left_out} files skipped)" if left_out else ""))
    images.notes += special_note(special)
    return images


def resize_note(sizes: Counter) -> list[str]:
    """One line saying how many images were resized from which sizes (none when all were 32×32)."""
    resized = {s: n for s, n in sizes.items() if s != (IMAGE_SIZE, IMAGE_SIZE)}
    if not resized:
        return []
    total = sum(resized.values())
    common = sorted(resized.items(), key=lambda item: -item[1])
    shown = ", ".join(f"{w}×{h}" + (f" ({n:,})" if len(resized) > 1 else "") for (w, h), n in common[:3])
    more = f" and {len(common) - 3} more sizes" if len(common) > 3 else ""
    images = "image" if total == 1 else "images"
    return [f"resized {total:,} {images} from {shown}{more} to {IMAGE_SIZE}×{IMAGE_SIZE} ({RESIZE_FILTER})"]


def _read_image_folder(root: Path, files: list[tuple[Path, int]], classes: list[str]) -> Dataset:
    pixels, sizes = [], Counter()
    for path, _ in files:
        array, size = decode_image(path)
        pixels.append(array)
        sizes[size] += 1
    images = torch.from_numpy(np.stack(pixels)).permute(0, 3, 1, 2).contiguous()
    labels = torch.tensor([label for _, label in files], dtype=torch.int64)
    return Dataset(images, labels, classes, notes=[f"{root.name}/: {note}" for note in resize_note(sizes)])


def _class_folders(root: Path) -> list[str]:
    return sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))


def _split_files(root: Path, classes: list[str], special: list[tuple[Path, str]]) -> list[tuple[Path, int]]:
    """``(image file, label)`` of every class folder of a split; the special files skipped are added to ``special``."""
    files = []
    for label, name in enumerate(classes):
        images, skipped = image_files(root / name)
        files += [(path, label) for path in images]
        special += skipped
    return files


def _class_notes(root: Path, counts: dict[str, list[int]]) -> list[str]:
    """Warnings for classes without training or test images; an error when fewer than two classes can be learned."""
    learnable = [name for name, (train, _) in counts.items() if train]
    if len(learnable) < 2:
        raise DataError(f"--data_dir {str(root)!r}: {len(learnable)} class folder(s) with training images; a "
                        f"classifier needs at least two")
    notes = []
    for split, index in (("train", 0), ("test", 1)):
        empty = [name for name, numbers in counts.items() if not numbers[index]]
        if empty:
            shown = ", ".join(empty[:10]) + (f" and {len(empty) - 10} more" if len(empty) > 10 else "")
            notes.append(f"warning: {split}/ has no images of {len(empty)} class(es): {shown}")
    return notes


# ---------------------------------------------------------------------------------------------------------------------
# Source detection and the decoded-array cache


def _content(path: Path) -> bytes:
    """A digest of the file's bytes. ``os.open``/``os.read`` on a str path: ~5 µs a small file, against ~70 µs for
    ``Path.read_bytes`` (0.3 s for CIFAR-10's 60,000 JPEGs, against a minute to decode them)."""
    fd = os.open(str(path), os.O_RDONLY)
    try:
        digest = hashlib.blake2b(digest_size=16)
        while chunk := os.read(fd, 1 << 20):
            digest.update(chunk)
    finally:
        os.close(fd)
    return digest.digest()


def _fingerprint(classes: list[str], paths: list[Path]) -> str:
    """The cache key: a hash of the class folders and of the files' names and content (not their size and time:
    a file rewritten with the same size and time still changes the key)."""
    digest = hashlib.sha1(f"v{CACHE_VERSION}\0{len(classes)}\0".encode())
    digest.update("\0".join(classes).encode(errors="surrogateescape"))
    for path in paths:
        digest.update(f"{path}\0".encode(errors="surrogateescape") + _content(path) + b"\n")
    return digest.hexdigest()


def _digest(images: torch.Tensor, labels: torch.Tensor) -> str:
    """A hash of the decoded tensors, stored in the cache and checked on load (a fraction of a second for CIFAR-10,
    against a minute of decoding): a cache edited or damaged after it was written is rebuilt, never trusted."""
    digest = hashlib.blake2b(labels.numpy().tobytes())
    digest.update(images.contiguous().numpy().data)
    return digest.hexdigest()


def _verified(blob: object, key: str, classes: list[str], labels: torch.Tensor | None) -> Dataset | None:
    """The cached split when ``blob`` was built from this source (``key``) and its content is intact and consistent
    (types, shapes, classes, labels in range, ``labels`` when known without decoding, the content hash); else None."""
    if not isinstance(blob, dict) or blob.get("key") != key:
        return None
    images, cached_labels, notes = blob.get("images"), blob.get("labels"), blob.get("notes")
    if not (isinstance(images, torch.Tensor) and images.dtype == torch.uint8 and images.dim() == 4
            and tuple(images.shape[1:]) == (3, IMAGE_SIZE, IMAGE_SIZE)
            and isinstance(cached_labels, torch.Tensor) and cached_labels.dtype == torch.int64
            and cached_labels.shape == (len(images),) and blob.get("classes") == classes
            and isinstance(notes, list) and all(isinstance(n, str) for n in notes)):
        return None
    if len(cached_labels) and (cached_labels.min() < 0 or cached_labels.max() >= len(classes)):
        return None
    if labels is not None and not torch.equal(cached_labels, labels):
        return None
    if blob.get("digest") != _digest(images, cached_labels):
        return None
    return Dataset(images, cached_labels, list(classes), list(notes))


def _cached(cache_file: Path, key: str, build, classes: list[str], labels: torch.Tensor | None = None,
            spot_check=None) -> Dataset:
    """Load ``cache_file`` when it was built from the same source (``key``) and verifies (:func:`_verified`), else
    ``build()`` and store it.

    Args:
        classes: The split's class names, read from the source.
        labels: The split's labels when known without decoding (an image folder's come from its file list).
        spot_check: ``spot_check(images) -> bool``, False when the cached pixels are not what the files decode to.
    """
    if cache_file.is_file():
        try:
            dataset = _verified(torch.load(cache_file, map_location="cpu", weights_only=True), key, classes, labels)
            if dataset is not None and (spot_check is None or spot_check(dataset.images)):
                return dataset
        except Exception:  # a damaged cache is simply rebuilt
            pass
    dataset = build()
    blob = {"key": key, "images": dataset.images, "labels": dataset.labels, "classes": dataset.classes,
            "notes": dataset.notes, "digest": _digest(dataset.images, dataset.labels)}
    try:
        cache_file.parent.mkdir(parents=True, exist_ok=True)
        buffer = io.BytesIO()
        torch.save(blob, buffer)
        atomic_write(cache_file, buffer.getbuffer())
    except OSError:  # a read-only data folder still works, just without the cache
        pass
    return dataset


def _load_image_folders(root: Path) -> tuple[Dataset, Dataset]:
    train_classes, test_classes = _class_folders(root / "train"), _class_folders(root / "test")
    if not train_classes:
        raise DataError(f"--data_dir {str(root)!r}: train/ has no class folders")
    if train_classes != test_classes:
        missing = sorted(set(train_classes) ^ set(test_classes))
        raise DataError(f"--data_dir {str(root)!r}: train/ and test/ class folders differ ({', '.join(missing[:10])})")
    special: list[tuple[Path, str]] = []
    files = {split: _split_files(root / split, train_classes, special) for split in ("train", "test")}
    if not files["test"]:
        raise DataError(f"--data_dir {str(root)!r}: test/ has no images")
    counts = {name: [0, 0] for name in train_classes}
    for index, split in enumerate(("train", "test")):
        for _, label in files[split]:
            counts[train_classes[label]][index] += 1
    notes = _class_notes(root, counts) + special_note(special)
    train, test = (_folder_split(root, split, files[split], train_classes) for split in ("train", "test"))
    train.notes = train.notes + notes
    return train, test


def _folder_split(root: Path, split: str, files: list[tuple[Path, int]], classes: list[str]) -> Dataset:
    """The images ``files`` (``(path, label)``) of ``root/split``, decoded or from the cache, with their ``files``."""
    labels = torch.tensor([label for _, label in files], dtype=torch.int64)
    paths = [path for path, _ in files]
    dataset = _cached(root / ".cache" / f"{split}.pt", _fingerprint(classes, paths),
                      lambda: _read_image_folder(root / split, files, classes), classes, labels,
                      spot_check=lambda images: _decodes_to(images, paths))
    dataset.files = [path.relative_to(root).as_posix() for path, _ in files]  # the cache key's order
    return dataset


def _decodes_to(images: torch.Tensor, paths: list[Path], count: int = SPOT_CHECK) -> bool:
    """Whether ``count`` of ``paths`` drawn at random decode to their cached ``images``: the key says the files are
    the ones the cache was built from; this catches a cache whose pixels were rewritten (with a digest to match)
    wholesale. One altered image of N is caught with probability ``count``/N on each load."""
    picks = random.SystemRandom().sample(range(len(paths)), min(count, len(paths)))
    try:
        return all(np.array_equal(decode_image(paths[i])[0], images[i].permute(1, 2, 0).numpy()) for i in picks)
    except DataError:
        return False


def _unreadable(root: Path, exc: OSError) -> DataError:
    """The error for a data folder the system would not let us read."""
    return DataError(f"--data_dir {str(root)!r} cannot be read ({exc.strerror or type(exc).__name__}: "
                     f"{exc.filename or ''})")


def load_data(data_dir: str | os.PathLike, download: bool = True) -> tuple[Dataset, Dataset]:
    """Load the train and test splits found in (or downloaded into) ``data_dir``.

    Returns:
        ``(train, test)`` with the same class names; their ``notes`` say what loading did (resized images,
        ``warning:`` lines for classes without images).

    Raises:
        DataError: nothing usable is there and it cannot be downloaded, or the data is inconsistent or unreadable.
    """
    root = Path(data_dir)
    try:
        if root.exists() and not root.is_dir():
            raise DataError(f"--data_dir {str(root)!r} is a file, not a folder")
        if (root / "train").is_dir() and (root / "test").is_dir():
            return _load_image_folders(root)
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
            splits.append(_cached(root / ".cache" / f"cifar-{split}.pt", _fingerprint([], paths),
                                  lambda s=split: _read_cifar_split(folder, s), _cifar_classes(folder)))
    except OSError as exc:  # permissions, a file vanishing mid-read, names too long for the file system
        raise _unreadable(root, exc) from None
    if len(splits[1]) == 0:
        raise DataError(f"--data_dir {str(root)!r}: the test split is empty")
    return splits[0], splits[1]


def load_split(data_dir: str | os.PathLike, split: str, classes: list[str]) -> Dataset:
    """One split of ``data_dir`` for a model of ``classes`` (e.g. new labelled images to explain), never downloaded.

    An image folder needs only ``<split>/``, and its class folders may be any subset of ``classes`` (a folder of new
    cats and dogs for a CIFAR-10 model): labels are positions in ``classes``, whose names the dataset keeps. A folder
    of CIFAR-10 batches gives that split, when its classes are ``classes``.

    Raises:
        DataError: The split is missing or empty, a class folder is not one of ``classes``, or the data is
            unreadable.
    """
    root = Path(data_dir)
    folder = root / split
    try:
        if root.exists() and not root.is_dir():
            raise DataError(f"--data_dir {str(root)!r} is a file, not a folder")
        if not folder.is_dir():
            if not (root / CIFAR_FOLDER).is_dir():
                raise DataError(f"--data_dir {str(root)!r} has no {split}/ folder nor {CIFAR_FOLDER}/")
            train, test = load_data(root, download=False)
            dataset = test if split == "test" else train
            if dataset.classes != classes:
                raise DataError(f"--data_dir {str(root)!r} has classes {dataset.classes[:20]}, the checkpoint "
                                f"{classes[:20]}")
            return dataset
        names = _class_folders(folder)
        unknown = [name for name in names if name not in classes]
        if unknown:
            raise DataError(f"--data_dir {str(root)!r}: {split}/ has class folder(s) the checkpoint does not know: "
                            f"{', '.join(map(repr, unknown[:10]))} (its classes: {', '.join(classes[:20])})")
        special: list[tuple[Path, str]] = []
        found = _split_files(folder, names, special)
        files = [(path, classes.index(names[label])) for path, label in found]
        present = {label for _, label in found}
        empty = [name for i, name in enumerate(names) if i not in present]
        shown = ", ".join(map(repr, empty[:10])) + (f" and {len(empty) - 10} more" if len(empty) > 10 else "")
        if not files:
            raise DataError(f"--data_dir {str(root)!r}: {split}/ has no images"
                            + (f" (its class folder(s) {shown} are empty)" if empty else ""))
        dataset = _folder_split(root, split, files, classes)
    except OSError as exc:  # permissions, a file vanishing mid-read, names too long for the file system
        raise _unreadable(root, exc) from None
    empty_note = [f"warning: {split}/ has no images of {len(empty)} class folder(s): {shown}"] if empty else []
    dataset.notes = dataset.notes + empty_note + special_note(special)
    return dataset


def data_fingerprint(train: Dataset, test: Dataset) -> dict[str, dict[str, Any]]:
    """What a checkpoint records of the data it trained on, per class: its train and test image counts and a digest
    of its images (decoded pixels, and the file names within the class folder when there are files). Renaming,
    swapping, adding or editing a class's images changes its entry; moving the data folder does not. ``pixels``
    digests the images alone, in any order and under any names: the same ``pixels`` with another ``digest`` means
    the images were renamed (or reordered), not edited."""
    digests = {name: hashlib.blake2b(digest_size=16) for name in train.classes}
    pixels = {name: hashlib.blake2b(digest_size=16) for name in train.classes}  # names and order left out
    counts = {name: {"train": 0, "test": 0} for name in train.classes}
    for split, dataset in (("train", train), ("test", test)):
        for label, name in enumerate(dataset.classes):
            positions = (dataset.labels == label).nonzero().flatten()
            counts[name][split] = len(positions)
            digests[name].update(f"{split}:{len(positions)}\0".encode())
            images = dataset.images[positions].contiguous().numpy()
            digests[name].update(images.data)
            pixels[name].update(f"{split}:".encode() + b"".join(sorted(
                hashlib.blake2b(image.tobytes(), digest_size=8).digest() for image in images)))
            if dataset.files is not None:  # "train/cat/0001.jpg" -> "0001.jpg": a swapped folder keeps its digest
                digests[name].update("\0".join(f.split("/", 2)[-1] for f in (dataset.files[i] for i in
                                                                               positions.tolist())).encode())
    return {name: {**counts[name], "digest": digests[name].hexdigest(), "pixels": pixels[name].hexdigest()}
            for name in train.classes}


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
