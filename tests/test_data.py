"""Data: both sources decode to the same tensors, pickles never run code, augmentation and subsets are right."""

from __future__ import annotations

import functools
import http.server
import io
import os
import pickle
import shutil
import subprocess
import sys
import tarfile
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from tests.conftest import CLASSES, REPO
from train.data import (
    DataError,
    Dataset,
    _digest,
    balanced_subset,
    decode_image,
    download_cifar10,
    load_data,
    load_split,
    read_cifar_batch,
)
from train.loader import DeviceLoader, batch_crop, batch_cutout, batch_flip_lr


def write_cifar_batches(root: Path, train: Dataset, test: Dataset, protocol: int = 2) -> Path:
    """Write ``train``/``test`` in the CIFAR-10 python-batch format (5 data batches, a test batch, meta)."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    chunks = np.array_split(np.arange(len(train)), 5)
    for i, chunk in enumerate(chunks, 1):
        batch = {b"batch_label": b"training batch", b"labels": train.labels[chunk].tolist(),
                 b"data": train.images[chunk].reshape(len(chunk), -1).numpy(), b"filenames": [b"x.png"] * len(chunk)}
        (folder / f"data_batch_{i}").write_bytes(pickle.dumps(batch, protocol=protocol))
    test_batch = {b"labels": test.labels.tolist(), b"data": test.images.reshape(len(test), -1).numpy()}
    (folder / "test_batch").write_bytes(pickle.dumps(test_batch, protocol=protocol))
    (folder / "batches.meta").write_bytes(pickle.dumps({b"label_names": [c.encode() for c in train.classes]},
                                                       protocol=protocol))
    return folder


def test_image_folder_loads_real_images(small_folder):
    train, test = load_data(small_folder)
    assert train.images.shape == (120, 3, 32, 32) and train.images.dtype == torch.uint8
    assert test.images.shape == (40, 3, 32, 32) and test.labels.dtype == torch.int64
    assert train.classes == CLASSES
    assert torch.bincount(train.labels).tolist() == [12] * 10
    pixels = np.array(Image.open(small_folder / "train" / "cat" / "0003.jpg").convert("RGB"))
    cat = CLASSES.index("cat")
    assert torch.equal(train.images[cat * 12 + 3], torch.from_numpy(pixels).permute(2, 0, 1))


@pytest.mark.parametrize("protocol", [2, 4])
def test_cifar_batches_and_image_folder_load_identical_tensors(small_folder, tmp_path, protocol):
    train, test = load_data(small_folder)
    write_cifar_batches(tmp_path, train, test, protocol)
    train2, test2 = load_data(tmp_path, download=False)
    assert torch.equal(train.images, train2.images) and torch.equal(train.labels, train2.labels)
    assert torch.equal(test.images, test2.images) and torch.equal(test.labels, test2.labels)
    assert train2.classes == CLASSES


class Payload:
    """Unpickling this would create ``marker`` — the safe loader must refuse before that happens."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_crafted_pickle_in_a_batch_is_refused_and_never_runs(small_folder, tmp_path):
    train, test = load_data(small_folder)
    folder = write_cifar_batches(tmp_path, train, test)
    marker = tmp_path / "pwned"
    (folder / "data_batch_3").write_bytes(pickle.dumps({b"data": Payload(marker), b"labels": [0]}, protocol=2))
    with pytest.raises(DataError, match="refusing to load"):
        load_data(tmp_path, download=False)
    assert not marker.exists()
    # the same pickle really would have created the file: the refusal is what saved us
    pickle.loads((folder / "data_batch_3").read_bytes())
    assert marker.exists()


def test_truncated_batch_is_a_data_error(small_folder, tmp_path):
    train, test = load_data(small_folder)
    folder = write_cifar_batches(tmp_path, train, test)
    blob = (folder / "test_batch").read_bytes()
    (folder / "test_batch").write_bytes(blob[: len(blob) // 2])
    with pytest.raises(DataError, match="not a valid CIFAR-10 batch"):
        read_cifar_batch(folder / "test_batch")


def test_decoded_arrays_are_cached_and_rebuilt_when_the_source_changes(small_folder, tmp_path):
    root = tmp_path / "copy"
    shutil.copytree(small_folder, root)
    first, _ = load_data(root)
    cache = root / ".cache" / "train.pt"
    assert cache.is_file()
    stamp = cache.stat().st_mtime_ns
    again, _ = load_data(root)
    assert cache.stat().st_mtime_ns == stamp and torch.equal(first.images, again.images)
    # replace one image with a blank one: the cache must notice
    Image.new("RGB", (32, 32), (255, 255, 255)).save(root / "train" / "airplane" / "0000.jpg", quality=100)
    changed, _ = load_data(root)
    assert cache.stat().st_mtime_ns != stamp
    assert changed.images[0].float().mean() > 250 and not torch.equal(changed.images[0], first.images[0])


def _tampered(blob: dict, how: str) -> dict:
    images, labels = blob["images"].clone(), blob["labels"].clone()
    if how == "labels swapped":
        labels = torch.where(labels == 3, 5, torch.where(labels == 5, 3, labels))
    elif how == "label out of range":
        labels[0] = 12  # the IndexError ("Target 12 is out of bounds") a trusted cache would hand to training
    elif how == "an image fewer":
        images, labels = images[1:], labels[1:]
    elif how == "pixels changed":
        images[0] = 255 - images[0]
    return {**blob, "images": images, "labels": labels}


@pytest.mark.parametrize("how", ["labels swapped", "label out of range", "an image fewer", "pixels changed"])
def test_a_cache_that_no_longer_matches_its_data_is_rebuilt(how, small_folder, tmp_path):
    root = tmp_path / "copy"
    shutil.copytree(small_folder, root)
    truth, _ = load_data(root)
    train, test = load_data(root)
    write_cifar_batches(tmp_path / "batches", train, test)
    load_data(tmp_path / "batches", download=False)
    for cache in (root / ".cache" / "train.pt", tmp_path / "batches" / ".cache" / "cifar-train.pt"):
        blob = torch.load(cache, weights_only=True)
        torch.save(_tampered(blob, how), cache)
        loaded, _ = load_data(cache.parents[1], download=False)
        assert torch.equal(loaded.labels, truth.labels) and torch.equal(loaded.images, truth.images), cache
        assert torch.equal(torch.load(cache, weights_only=True)["labels"], truth.labels)  # and written again


def test_a_file_changed_with_its_size_and_time_kept_is_not_served_from_the_cache(small_folder, tmp_path):
    """The cache is keyed on the files' content: an image rewritten to the same size with its modification time put
    back (what a size-and-time key would trust) is decoded again."""
    root = tmp_path / "copy"
    shutil.copytree(small_folder, root, ignore=shutil.ignore_patterns(".cache"))
    first, _ = load_data(root)
    files = sorted((root / "train" / "airplane").iterdir())
    path = max(files, key=lambda p: p.stat().st_size)
    before = path.stat()
    other = min((root / "train" / "cat").iterdir(), key=lambda p: p.stat().st_size).read_bytes()
    assert len(other) < before.st_size
    path.write_bytes(other + b"\0" * (before.st_size - len(other)))  # decoders stop at the end-of-image marker
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert path.stat().st_size == before.st_size and path.stat().st_mtime_ns == before.st_mtime_ns
    index = first.files.index(path.relative_to(root).as_posix())
    expected = torch.from_numpy(decode_image(path)[0].copy()).permute(2, 0, 1)
    assert not torch.equal(expected, first.images[index])
    changed, _ = load_data(root)
    assert torch.equal(changed.images[index], expected)


def test_a_cache_rewritten_with_a_matching_digest_is_caught_by_the_spot_check(small_folder, tmp_path):
    """Someone rewrites the cached pixels and stores the digest of the new ones: the key (the files) still matches,
    the digest too; the spot check decodes a few files again and rebuilds the cache."""
    root = tmp_path / "copy"
    shutil.copytree(small_folder, root, ignore=shutil.ignore_patterns(".cache"))
    truth, _ = load_data(root)
    cache = root / ".cache" / "train.pt"
    blob = torch.load(cache, weights_only=True)
    images = 255 - blob["images"]
    torch.save({**blob, "images": images, "digest": _digest(images, blob["labels"])}, cache)
    loaded, _ = load_data(root)
    assert torch.equal(loaded.images, truth.images)
    assert torch.equal(torch.load(cache, weights_only=True)["images"], truth.images)  # and written again


def test_fifos_among_the_images_are_skipped_with_a_warning_not_read(small_folder, tmp_path):
    """Reading a FIFO blocks until someone writes to it: the reads run in a process of their own with a timeout, so a
    regression fails this test instead of hanging the suite."""
    root = tmp_path / "copy"
    shutil.copytree(small_folder, root, ignore=shutil.ignore_patterns(".cache"))
    os.mkfifo(root / "train" / "cat" / "9999.jpg")
    (root / "test" / "dog" / "9999.png").symlink_to(root / "train" / "cat" / "9999.jpg")
    mine = tmp_path / "mine"
    mine.mkdir()
    shutil.copy(small_folder / "test" / "cat" / "0000.jpg", mine / "cat.jpg")
    os.mkfifo(mine / "pipe.jpg")
    code = f"""if True:
        from train.data import DataError, load_data, read_images
        train, test = load_data({str(root)!r})
        print(len(train), len(test), *train.notes, sep="\\n")
        for paths in ([{str(mine)!r}], [{str(mine / "pipe.jpg")!r}, {str(mine / "cat.jpg")!r}]):
            images = read_images(paths)
            print(images.names, *images.notes, sep="\\n")
        try:
            read_images([{str(mine)!r}], skip_special=False)
        except DataError as exc:
            print("refused:", exc)
    """
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr[-2000:]
    lines = result.stdout.splitlines()
    assert lines[0] == "120" and lines[1] == "40"  # the FIFO and the link to it are not images of the data set
    fifo, link = root / "train" / "cat" / "9999.jpg", root / "test" / "dog" / "9999.png"
    assert f"warning: skipped 2 file(s) that are not regular files (reading them could block forever): {fifo} " \
           f"(FIFO), {link} (FIFO)" in lines
    assert lines.count(str([str(mine / "cat.jpg")])) == 2
    assert lines.count(f"warning: skipped 1 file(s) that are not regular files (reading them could block forever): "
                       f"{mine / 'pipe.jpg'} (FIFO)") == 2
    assert lines[-1] == f"refused: --images: {mine / 'pipe.jpg'} is a FIFO, not a regular file"


def test_folder_problems_are_data_errors(small_folder, tmp_path):
    root = tmp_path / "broken"
    shutil.copytree(small_folder, root)
    shutil.rmtree(root / "test" / "truck")
    with pytest.raises(DataError, match="class folders differ \\(truck\\)"):
        load_data(root)
    (root / "test" / "truck").mkdir()
    (root / "train" / "cat" / "notes.txt").write_text("hello")
    with pytest.raises(DataError, match="notes.txt is not an image"):
        load_data(root)
    (root / "train" / "cat" / "notes.txt").unlink()
    (root / "train" / "cat" / "9999.jpg").write_bytes(b"not a jpeg")
    with pytest.raises(DataError, match="cannot read image .*9999.jpg"):
        load_data(root)


def make_cifar_archive(tmp_path: Path, small_folder: Path) -> Path:
    """A ``cifar-10-python.tar.gz`` in the real archive's layout, built from real images."""
    train, test = load_data(small_folder)
    write_cifar_batches(tmp_path / "src", train, test)
    archive = tmp_path / "serve" / "cifar-10-python.tar.gz"
    archive.parent.mkdir()
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(tmp_path / "src" / "cifar-10-batches-py", arcname="cifar-10-batches-py")
    return archive


def test_download_path_fetches_and_unpacks_the_archive(small_folder, tmp_path):
    """torchvision's downloader, served from loopback: the product's download path without internet."""
    archive = make_cifar_archive(tmp_path, small_folder)
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(archive.parent))
    handler.log_message = lambda *args: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        target = tmp_path / "downloaded"
        download_cifar10(target, url=f"http://127.0.0.1:{server.server_address[1]}/{archive.name}")
    finally:
        server.shutdown()
    train, test = load_data(target, download=False)
    reference, _ = load_data(small_folder)
    assert torch.equal(train.images, reference.images) and len(test) == 40


def test_failed_download_names_data_dir_and_the_manual_route(tmp_path):
    url = "http://127.0.0.1:9/cifar-10-python.tar.gz"
    with pytest.raises(DataError, match="--data_dir .*downloading CIFAR-10 into it failed") as failed:
        download_cifar10(tmp_path / "empty", url=url)
    assert f"download {url} yourself and unpack it there (tar xzf cifar-10-python.tar.gz -C " in str(failed.value)
    assert list(tmp_path.iterdir()) == []  # the folder it made is gone


def test_a_failed_download_removes_every_folder_it_made_relative_paths_too(tmp_path, monkeypatch):
    """``--data_dir nope/a/b`` left ``nope/a`` behind (issue 37 item 4); a folder that was there stays."""
    url = "http://127.0.0.1:9/cifar-10-python.tar.gz"
    (tmp_path / "kept").mkdir()
    monkeypatch.chdir(tmp_path)
    for target in (Path("nope/a/b"), tmp_path / "kept" / "x" / "y"):
        with pytest.raises(DataError, match="downloading CIFAR-10 into it failed"):
            download_cifar10(target, url=url)
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["kept"]


def test_balanced_subset_is_balanced_and_seeded():
    labels = torch.arange(10).repeat_interleave(50)
    idx = balanced_subset(labels, 95, seed=1)
    counts = torch.bincount(labels[idx], minlength=10)
    assert len(idx) == 95 and counts.max() - counts.min() <= 1 and len(set(idx.tolist())) == 95
    assert torch.equal(idx, balanced_subset(labels, 95, seed=1))
    assert not torch.equal(idx, balanced_subset(labels, 95, seed=2))
    assert torch.equal(balanced_subset(labels, 0, seed=1), torch.arange(500))


def test_crop_takes_a_window_of_the_padded_image():
    gen = torch.Generator().manual_seed(0)
    images = torch.randint(1, 256, (64, 3, 32, 32), dtype=torch.uint8)
    padded = torch.nn.functional.pad(images, (4, 4, 4, 4))
    out = batch_crop(padded, 32, gen)
    assert out.shape == images.shape and out.dtype == torch.uint8
    offsets = set()
    for i in range(len(images)):
        match = [(dy, dx) for dy in range(9) for dx in range(9)
                 if torch.equal(out[i], padded[i, :, dy:dy + 32, dx:dx + 32])]
        assert match, f"image {i} is not a crop of its padded original"
        offsets.add(match[0])
    assert len(offsets) > 20  # offsets really vary
    assert (out == 0).any()  # some crops reach into the zero padding


def test_flip_mirrors_about_half():
    gen = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (200, 3, 32, 32), dtype=torch.uint8)
    out = batch_flip_lr(images, gen)
    flipped = torch.tensor([torch.equal(o, i.flip(-1)) for o, i in zip(out, images, strict=True)])
    kept = torch.tensor([torch.equal(o, i) for o, i in zip(out, images, strict=True)])
    assert bool((flipped | kept).all()) and 60 < int(flipped.sum()) < 140


def test_cutout_zeroes_one_square():
    gen = torch.Generator().manual_seed(0)
    images = torch.full((50, 3, 32, 32), 200, dtype=torch.uint8)
    out = batch_cutout(images, 8, gen)
    zeroed = (out == 0).all(1)  # [N, H, W]
    areas = zeroed.flatten(1).sum(1)
    assert int(areas.max()) == 64 and int(areas.min()) > 0
    assert torch.equal(out[~zeroed.unsqueeze(1).expand_as(out)], images[~zeroed.unsqueeze(1).expand_as(out)])


def test_device_loader_serves_each_image_once_per_epoch():
    images = torch.arange(40, dtype=torch.uint8).view(40, 1, 1, 1).expand(40, 3, 32, 32).contiguous()
    data = Dataset(images, torch.arange(40), [str(i) for i in range(40)])
    loader = DeviceLoader(data, 8, "cpu", train=True, pad=0, seed=0, dtype=torch.float64)
    epochs = []
    for _ in range(2):
        batches = list(loader)
        assert len(batches) == len(loader) == 5
        x, y = batches[0]
        assert x.dtype == torch.float64 and x.shape == (8, 3, 32, 32) and 0 <= x.min() and x.max() <= 1
        labels = torch.cat([b[1] for b in batches])
        pixels = torch.cat([(b[0][:, 0, 0, 0] * 255).round().long() for b in batches])
        assert torch.equal(pixels, labels) and sorted(labels.tolist()) == list(range(40))
        epochs.append(labels)
    assert not torch.equal(epochs[0], epochs[1])  # reshuffled every epoch
    ordered = torch.cat([b[1] for b in DeviceLoader(data, 16, "cpu", train=False)])
    assert torch.equal(ordered, torch.arange(40))  # evaluation keeps order and the last partial batch


def _sides(loader: DeviceLoader, images: torch.Tensor) -> dict[int, bool]:
    """Per image (its label), whether the epoch served it mirrored."""
    sides = {}
    for batch, labels in loader:
        for picture, label in zip(batch, labels.tolist(), strict=True):
            original = images[label].double() / 255
            assert torch.equal(picture, original) or torch.equal(picture, original.flip(-1))
            sides[label] = torch.equal(picture, original.flip(-1))
    return sides


def test_alternate_flips_keep_each_images_side_and_mirror_all_every_other_epoch():
    gen = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (64, 3, 8, 8), dtype=torch.uint8, generator=gen)
    data = Dataset(images, torch.arange(64), ["x"])
    loader = DeviceLoader(data, 8, "cpu", train=True, pad=0, seed=5, dtype=torch.float64, flip="alternate")
    first, second, third = (_sides(loader, images) for _ in range(3))
    assert 16 < sum(first.values()) < 48  # each image's side drawn once, about half mirrored
    assert all(second[i] != first[i] for i in range(64)) and third == first  # all mirrored together, then back
    resumed = DeviceLoader(data, 8, "cpu", train=True, pad=0, seed=5, dtype=torch.float64, flip="alternate")
    resumed.epoch = 1  # a resumed run sets the epoch: the same side as the run it continues
    assert _sides(resumed, images) == second
    random = DeviceLoader(data, 8, "cpu", train=True, pad=0, seed=5, dtype=torch.float64)
    epochs = [_sides(random, images) for _ in range(3)]
    assert any(epochs[2][i] == epochs[1][i] for i in range(64)) and epochs[2] != epochs[0]  # independent draws
    with pytest.raises(ValueError, match="flip must be random or alternate"):
        DeviceLoader(data, 8, "cpu", train=True, flip="sometimes")


def test_a_lower_training_resolution_scales_the_batches_down_with_antialiasing():
    images = torch.zeros(16, 3, 32, 32, dtype=torch.uint8)
    images[:, :, :, 16:] = 255  # left half black, right half white
    loader = DeviceLoader(Dataset(images, torch.zeros(16, dtype=torch.long), ["x"]), 8, "cpu", train=True, pad=0,
                          flip="alternate")
    loader.resolution = 16
    batch, _ = next(iter(loader))
    assert batch.shape == (8, 3, 16, 16)
    mirrored = batch[:, 0, 0, 0] > 0.5
    batch[mirrored] = batch[mirrored].flip(-1)
    assert torch.allclose(batch[..., :7], torch.zeros(())) and torch.allclose(batch[..., 9:], torch.ones(()))
    assert torch.allclose(batch.mean(), torch.tensor(0.5, dtype=batch.dtype))  # a filtered, not a cropped, view
    assert next(iter(DeviceLoader(Dataset(images, torch.zeros(16, dtype=torch.long), ["x"]), 8, "cpu",
                                  train=False)))[0].shape == (8, 3, 32, 32)  # evaluation stays at full size


def test_ranks_split_each_global_batch_of_the_single_process_order():
    gen = torch.Generator().manual_seed(0)
    data = Dataset(torch.randint(0, 256, (40, 3, 32, 32), dtype=torch.uint8, generator=gen), torch.arange(40), ["x"])
    single = list(DeviceLoader(data, 8, "cpu", train=True, seed=3, cutout=8))
    ranks = [list(DeviceLoader(data, 8, "cpu", train=True, seed=3, cutout=8, rank=r, world_size=2)) for r in range(2)]
    assert len(single) == len(ranks[0]) == len(ranks[1]) == 5
    for whole, half0, half1 in zip(single, *ranks, strict=True):  # same images, same crops/flips/cutouts
        assert len(half0[1]) == len(half1[1]) == 4
        assert torch.equal(torch.cat([half0[0], half1[0]]), whole[0])
        assert torch.equal(torch.cat([half0[1], half1[1]]), whole[1])
    evaluation = [torch.cat([y for _, y in DeviceLoader(data, 6, "cpu", train=False, rank=r, world_size=3)])
                  for r in range(3)]
    assert torch.equal(torch.cat(evaluation), torch.arange(40)) and [len(e) for e in evaluation] == [13, 13, 14]
    with pytest.raises(DataError, match="--batch_size 9 does not split evenly over 2 processes"):
        DeviceLoader(data, 9, "cpu", train=True, world_size=2)


def test_fewer_images_than_batch_size_is_a_data_error():
    data = Dataset(torch.zeros(10, 3, 32, 32, dtype=torch.uint8), torch.zeros(10, dtype=torch.long), ["x"])
    with pytest.raises(DataError, match="fewer than --batch_size 16"):
        DeviceLoader(data, 16, "cpu", train=True)


def test_cache_write_failure_is_not_fatal(small_folder, tmp_path):
    root = tmp_path / "ro"
    shutil.copytree(small_folder, root, ignore=shutil.ignore_patterns(".cache"))
    (root / ".cache").write_text("a file where the cache folder would go")
    train, _ = load_data(root)
    assert len(train) == 120


def test_pickle_free_cache_file(small_folder):
    load_data(small_folder)
    blob = io.BytesIO((small_folder / ".cache" / "train.pt").read_bytes())
    assert set(torch.load(blob, weights_only=True)) == {"key", "images", "labels", "classes", "notes", "digest"}
    assert os.path.getsize(small_folder / ".cache" / "train.pt") > 120 * 3 * 32 * 32


# ---------------------------------------------------------------------------------------------------------------------
# Any image decoded right, or refused


def test_sixteen_bit_png_is_scaled_not_clipped_to_white(tmp_path):
    ramp = (np.arange(32 * 32).reshape(32, 32) * 64).astype(np.uint16)  # 0 .. 65472
    Image.fromarray(ramp).save(tmp_path / "g16.png")
    assert Image.open(tmp_path / "g16.png").mode == "I;16"
    pixels, size = decode_image(tmp_path / "g16.png")
    assert size == (32, 32) and pixels.shape == (32, 32, 3)
    np.testing.assert_allclose(pixels[..., 0].astype(float), np.rint(ramp / 257), atol=1)
    assert 0 < pixels.mean() < 255  # Pillow's convert("RGB") would make this all white


def test_transparency_is_composited_onto_white(tmp_path):
    rgba = np.zeros((32, 32, 4), np.uint8)
    rgba[:, :16] = (200, 10, 10, 255)  # opaque red left half, fully transparent (black) right half
    Image.fromarray(rgba, "RGBA").save(tmp_path / "a.png")
    pixels, _ = decode_image(tmp_path / "a.png")
    assert (pixels[:, :16] == (200, 10, 10)).all() and (pixels[:, 16:] == 255).all()
    palette = Image.fromarray(rgba[..., :3]).quantize(4)
    palette.info["transparency"] = palette.getpixel((20, 5))
    palette.save(tmp_path / "p.png", transparency=palette.getpixel((20, 5)))
    assert (decode_image(tmp_path / "p.png")[0][:, 16:] == 255).all()


def test_exif_orientation_is_applied(tmp_path):
    picture = np.zeros((32, 32, 3), np.uint8)
    picture[:, :16] = (250, 0, 0)  # red left, black right as stored
    exif = Image.Exif()
    exif[0x0112] = 3  # "rotate 180° to display"
    Image.fromarray(picture).save(tmp_path / "r.jpg", exif=exif, quality=95)
    pixels, _ = decode_image(tmp_path / "r.jpg")
    assert pixels[:, 20:, 0].mean() > 200 and pixels[:, :12, 0].mean() < 50  # red is on the right once shown


def test_float_images_are_scaled_or_refused(tmp_path):
    unit = np.linspace(0, 1, 32 * 32, dtype=np.float32).reshape(32, 32)
    Image.fromarray(unit).save(tmp_path / "unit.tiff")
    pixels, _ = decode_image(tmp_path / "unit.tiff")
    assert pixels.max() == 255 and 120 < pixels.mean() < 135  # not truncated to black
    Image.fromarray(unit * 1e6 - 5).save(tmp_path / "wild.tiff")
    with pytest.raises(DataError, match="neither 8 nor 16 bits nor floats"):
        decode_image(tmp_path / "wild.tiff")


@pytest.mark.parametrize("mode", ["L", "P", "CMYK", "LA", "1", "I"])
def test_other_modes_become_rgb(mode, tmp_path):
    image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 24, 3), dtype=np.uint8)).convert(mode)
    path = tmp_path / ("x.tiff" if mode in ("CMYK", "I") else "x.png")
    image.save(path)
    pixels, size = decode_image(path)
    assert pixels.shape == (32, 32, 3) and pixels.dtype == np.uint8 and size == (24, 40)


def test_bombs_dangling_links_and_junk_are_refused(tmp_path):
    bomb = tmp_path / "bomb.png"
    Image.new("L", (20_000, 20_000)).save(bomb)  # 400 megapixels, a few hundred KB on disk
    assert bomb.stat().st_size < 1_000_000
    with pytest.raises(DataError, match="too large to decode safely"):
        decode_image(bomb)
    (tmp_path / "junk.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    with pytest.raises(DataError, match="cannot read image"):
        decode_image(tmp_path / "junk.png")


def test_a_bad_image_error_keeps_the_decoders_reason(small_folder, tmp_path):
    whole = (small_folder / "train" / "cat" / "0000.jpg").read_bytes()
    (tmp_path / "cut.jpg").write_bytes(whole[:len(whole) // 2])
    (tmp_path / "text.png").write_text("not an image at all")
    with pytest.raises(DataError) as cut:
        decode_image(tmp_path / "cut.jpg")
    assert str(cut.value) == f"cannot read image {tmp_path / 'cut.jpg'} (OSError: Truncated File Read)"
    with pytest.raises(DataError) as text:
        decode_image(tmp_path / "text.png")
    assert str(text.value) == f"cannot read image {tmp_path / 'text.png'} (UnidentifiedImageError: cannot identify " \
                              f"image file)"


def image_folder(root: Path, sizes: dict[str, tuple[int, int]], train: int = 3, test: int = 2) -> Path:
    """Class folders of random images of the given (width, height) per class."""
    rng = np.random.default_rng(0)
    for split, count in (("train", train), ("test", test)):
        for name, (width, height) in sizes.items():
            (root / split / name).mkdir(parents=True)
            for i in range(count):
                pixels = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(root / split / name / f"{i}.png")
    return root


def test_resized_images_are_reported_once(tmp_path):
    root = image_folder(tmp_path / "d", {"a": (64, 64), "b": (64, 64), "c": (32, 32)})
    train, test = load_data(root)
    assert train.images.shape == (9, 3, 32, 32)
    assert "train/: resized 6 images from 64×64 to 32×32 (bilinear)" in train.notes
    assert "test/: resized 4 images from 64×64 to 32×32 (bilinear)" in test.notes
    again, _ = load_data(root)  # from the cache: still said
    assert "train/: resized 6 images from 64×64 to 32×32 (bilinear)" in again.notes


def test_empty_classes_are_named_and_one_class_is_an_error(tmp_path):
    root = image_folder(tmp_path / "d", {"a": (32, 32), "b": (32, 32)})
    for split in ("train", "test"):
        (root / split / "empty").mkdir()
    for image in (root / "test" / "b").iterdir():
        image.unlink()
    train, _ = load_data(root)
    assert train.classes == ["a", "b", "empty"]  # the cache noticed the new class folder
    assert "warning: train/ has no images of 1 class(es): empty" in train.notes
    assert "warning: test/ has no images of 2 class(es): b, empty" in train.notes
    for image in (root / "train" / "b").iterdir():
        image.unlink()
    with pytest.raises(DataError, match="1 class folder\\(s\\) with training images; a classifier needs at least two"):
        load_data(root)


def test_load_split_names_the_empty_class_folders_it_explains(tmp_path):
    """Issue 28 item 8: explain's --data_dir with an empty class folder says which (before: nothing was said)."""
    root = image_folder(tmp_path / "d", {"a": (32, 32), "b": (32, 32)})
    (root / "test" / "empty").mkdir()
    test = load_split(root, "test", ["a", "b", "empty"])
    assert "warning: test/ has no images of 1 class folder(s): 'empty'" in test.notes and len(test) == 4
    (root / "test" / "a").rename(tmp_path / "a")  # every class folder empty: the error names them
    for image in (root / "test" / "b").iterdir():
        image.unlink()
    with pytest.raises(DataError, match=r"test/ has no images \(its class folder\(s\) 'b', 'empty' are empty\)"):
        load_split(root, "test", ["a", "b", "empty"])


def test_empty_test_split_and_dangling_links_are_data_errors(tmp_path):
    root = image_folder(tmp_path / "d", {"a": (32, 32), "b": (32, 32)}, test=0)
    with pytest.raises(DataError, match="test/ has no images"):
        load_data(root)
    root = image_folder(tmp_path / "e", {"a": (32, 32), "b": (32, 32)})
    (root / "train" / "a" / "9.png").symlink_to(tmp_path / "nowhere.png")
    with pytest.raises(DataError, match="9.png is a broken symbolic link"):
        load_data(root)


def test_cifar_pickle_bomb_is_refused_without_expanding(small_folder, tmp_path):
    train, test = load_data(small_folder)
    folder = write_cifar_batches(tmp_path, train, test)
    nested: list = [0] * 9
    for _ in range(30):
        nested = [nested] * 9  # 9**30 elements if anyone expanded it
    blob = pickle.dumps({b"data": nested, b"labels": [0]}, protocol=2)
    assert len(blob) < 2000
    (folder / "data_batch_1").write_bytes(blob)
    with pytest.raises(DataError, match="data is not a uint8 array"):
        load_data(tmp_path, download=False)


def test_cache_is_readable_by_the_group(small_folder):
    load_data(small_folder)
    mask = os.umask(0)
    os.umask(mask)
    assert (small_folder / ".cache" / "train.pt").stat().st_mode & 0o777 == 0o666 & ~mask


def test_load_split_is_load_datas_split_and_takes_a_subset_of_classes(small_folder, tmp_path):
    from train.data import load_split

    train, test = load_data(small_folder)
    for split, expected in (("test", test), ("train", train)):
        alone = load_split(small_folder, split, train.classes)
        assert torch.equal(alone.images, expected.images) and torch.equal(alone.labels, expected.labels)
        assert alone.files == expected.files and alone.classes == expected.classes
    only = tmp_path / "only"  # test/ alone, two of the ten classes: labels are positions among all ten
    for name in ("dog", "cat"):
        (only / "test" / name).mkdir(parents=True)
        for path in sorted((small_folder / "test" / name).iterdir())[:2]:
            (only / "test" / name / path.name).write_bytes(path.read_bytes())
    subset = load_split(only, "test", train.classes)
    assert subset.classes == train.classes and subset.labels.tolist() == [CLASSES.index("cat")] * 2 + [
        CLASSES.index("dog")] * 2
    assert subset.files == [f"test/{name}/{path.name}" for name in ("cat", "dog")
                            for path in sorted((small_folder / "test" / name).iterdir())[:2]]
    assert torch.equal(subset.images[0], test.images[test.files.index(subset.files[0])])
    with pytest.raises(DataError, match=r"has no train/ folder nor cifar-10-batches-py/"):
        load_split(only, "train", train.classes)
    with pytest.raises(DataError, match=r"test/ has class folder\(s\) the checkpoint does not know: 'dog'"):
        load_split(only, "test", ["cat", "frog"])
