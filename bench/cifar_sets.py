"""The data sets of ``bench/headline.py``, made once from the two archives of ``../shared/data``.

* the full JPEG copy, ``cifar10-jpeg/`` (50,000 / 10,000), unpacked;
* the lossless originals, ``cifar10-png/`` (8,068 / 1,017 PNGs with the JPEG copy's file numbers), unpacked;
* their JPEG twins, ``cifar10-jpeg-twins/``: the same 8,068 / 1,017 images taken from the JPEG copy, same relative
  paths with ``.jpg`` (:func:`jpeg_twins`), so the two folders differ only by the encoding;
* airbench's format of the JPEG copy, ``airbench/cifar10/{train,test}.pt`` (:func:`to_airbench`).

As a script it makes them all under ``--work`` and writes JSON: where each set is, and how long unpacking, the first
decoding of the JPEG copy (what a user's first ``python train/run.py`` waits for) and its cached reading took::

    python bench/cifar_sets.py --archives ../shared/data --work .bench-data/headline --json sets.json
    python bench/cifar_sets.py --archives DIR --work DIR --per_class 20,5   # the first 20 / 5 per class (tests)
"""

from __future__ import annotations

import io
import shutil
import sys
import tarfile
import time
from pathlib import Path

if __package__ in (None, ""):  # `python bench/cifar_sets.py`: import the repo's packages
    sys.path[0] = str(Path(__file__).resolve().parents[1])

import torch

from bench import common
from train.data import DataError, load_data
from train.files import atomic_write

JPEG_ARCHIVE = "cifar10-jpeg.tar.xz"
PNG_ARCHIVE = "cifar10-png-lossless-subset.tar.xz"
SPLITS = ("train", "test")


def unpack(archive: Path, dest: Path, per_class: dict[str, int] | None = None, also: set[str] = frozenset()) -> Path:
    """Unpack ``archive`` (one top folder, e.g. ``cifar10-jpeg/``) into ``dest`` once; the top folder.

    ``per_class`` keeps only the first N images of each class folder of each split (``{"train": 20, "test": 5}``),
    in name order, and the images named in ``also`` (``split/class/stem``), for small runs; the other files of the
    archive (labels, manifest) are kept. A folder already unpacked (marked by ``.unpacked`` beside it) is reused.
    """
    with tarfile.open(archive) as tar:
        first = tar.next()  # the top folder's name, without reading the whole (xz) archive when already unpacked
        if first is None:
            raise tarfile.TarError(f"{archive} is empty")
        top = Path(first.name).parts[0]
        root, done = dest / top, dest / f".{top}.unpacked"
        if done.is_file():
            return root
        members = tar.getmembers()  # the first and all the others
        if per_class:
            members = _first_per_class(members, per_class, also)
        tar.extractall(dest, members=members, filter="data")
    done.touch()
    return root


def _first_per_class(members: list[tarfile.TarInfo], per_class: dict[str, int],
                     also: set[str]) -> list[tarfile.TarInfo]:
    """The members of ``top/<split>/<class>/<file>`` among the first ``per_class[split]`` of their folder or named in
    ``also``, and all others."""
    kept, images = [], {}
    for member in members:
        parts = Path(member.name).parts
        if member.isfile() and len(parts) == 4 and parts[1] in per_class:
            images.setdefault(parts[1:3], []).append(member)
        else:
            kept.append(member)
    for (split, _), files in images.items():
        files.sort(key=lambda m: m.name)
        kept += files[:per_class[split]] + [m for m in files[per_class[split]:] if _stem(m.name) in also]
    return kept


def _stem(name: str) -> str:
    """``split/class/stem`` of an archive member ``top/split/class/stem.ext``."""
    return Path(*Path(name).parts[1:]).with_suffix("").as_posix()


def jpeg_twins(png_root: Path, jpeg_root: Path, dest: Path) -> Path:
    """An image folder at ``dest`` holding, for every ``<split>/<class>/NNNN.png`` of ``png_root``, the JPEG copy's
    ``<split>/<class>/NNNN.jpg`` (a copy): the same images as the lossless subset, JPEG-encoded.

    Raises:
        DataError: an original has no twin in ``jpeg_root``.
    """
    if (dest / ".complete").is_file():
        return dest
    shutil.rmtree(dest, ignore_errors=True)
    for split in SPLITS:
        for png in sorted((png_root / split).glob("*/*.png")):
            relative = png.relative_to(png_root).with_suffix(".jpg")
            twin = jpeg_root / relative
            if not twin.is_file():
                raise DataError(f"{png} has no JPEG twin: {twin} is missing")
            (dest / relative).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(twin, dest / relative)
    (dest / ".complete").touch()
    return dest


def to_airbench(data_root: Path, dest: Path) -> Path:
    """The image folder ``data_root`` in airbench's format: ``dest/cifar10/{train,test}.pt`` =
    ``{'images': uint8 [N, 32, 32, 3], 'labels': int64 [N], 'classes': [...]}`` (what ``airbench.CifarLoader`` reads
    from ``cifar10/`` of the working directory); ``dest``, the folder to run airbench in.

    Decoded by :func:`train.data.load_data` (its cache), so airbench sees exactly the pixels and labels ours does.
    """
    train_set, test_set = load_data(data_root, download=False)
    for split, dataset in zip(SPLITS, (train_set, test_set), strict=True):
        blob = {"images": dataset.images.permute(0, 2, 3, 1).contiguous(), "labels": dataset.labels,
                "classes": list(dataset.classes)}
        (dest / "cifar10").mkdir(parents=True, exist_ok=True)
        path = dest / "cifar10" / f"{split}.pt"
        buffer = io.BytesIO()
        torch.save(blob, buffer)
        atomic_write(path, buffer.getbuffer())
    return dest


def timed(fn, *args, **kwargs) -> tuple[object, float]:
    """``fn(*args, **kwargs)`` and the seconds it took."""
    start = time.perf_counter()
    result = fn(*args, **kwargs)
    return result, time.perf_counter() - start


def main(argv: list[str] | None = None) -> int:
    parser = common.Parser(__doc__)
    parser.add_argument("--archives", required=True, type=common.folder(JPEG_ARCHIVE, PNG_ARCHIVE),
                        help=f"the folder of {JPEG_ARCHIVE} and {PNG_ARCHIVE}")
    parser.add_argument("--work", required=True, type=common.out_folder,
                        help="where the sets are made (reused when already there)")
    parser.add_argument("--per_class", type=common.ints(minimum=1, length=2, what="TRAIN,TEST"),
                        help="TRAIN,TEST: keep the first images of each class (small runs)")
    parser.add_json(None, help="where the sets and the timings are written")
    args = parser.parse(argv)
    archives, work = args.archives, args.work
    per_class = dict(zip(SPLITS, args.per_class, strict=True)) if args.per_class else None
    results = common.Results(args.json, common.machine())
    work.mkdir(exist_ok=True)
    try:
        png, unpack_png = timed(unpack, archives / PNG_ARCHIVE, work, per_class)
        originals = {p.relative_to(png).with_suffix("").as_posix() for p in png.glob("*/*/*.png")}
        jpeg, unpack_jpeg = timed(unpack, archives / JPEG_ARCHIVE, work, per_class, originals)
        cached_before = (jpeg / ".cache" / "train.pt").is_file()
        _, first = timed(load_data, jpeg, download=False)  # decodes and caches (unless an earlier call did)
        _, cached = timed(load_data, jpeg, download=False)
        twins, twin_seconds = timed(jpeg_twins, png, jpeg, work / "cifar10-jpeg-twins")
        airbench, airbench_seconds = timed(to_airbench, jpeg, work / "airbench")
        counts = {name: [len(d) for d in load_data(root, download=False)]
                  for name, root in (("jpeg", jpeg), ("png", png), ("jpeg_twins", twins))}
    except (DataError, OSError, tarfile.TarError) as exc:
        common.fail(str(exc))
    result = {
        "jpeg": str(jpeg), "png": str(png), "jpeg_twins": str(twins), "airbench": str(airbench),
        "images": {name: {"train": n[0], "test": n[1]} for name, n in counts.items()},
        "seconds": {"unpack_jpeg": unpack_jpeg, "unpack_png": unpack_png, "jpeg_twins": twin_seconds,
                    "airbench_format": airbench_seconds,
                    # the JPEG copy's decoding: the first time (None when a cache from an earlier call was there)
                    "data_decoding_first_run": None if cached_before else first, "data_decoding_cached": cached},
        **common.machine(), **common.stamp("bench/cifar_sets.py", argv),
    }
    print(f"data sets in {work}: " + ", ".join(f"{k} {v['train']:,}/{v['test']:,}" for k, v in result["images"].items())
          + f"; decoding the JPEG copy {first:.1f}s first, {cached:.2f}s cached")
    return results.finish(result, measured=True)


if __name__ == "__main__":
    common.entry(main)
