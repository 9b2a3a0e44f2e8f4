"""Benchmark: CAMs for the predicted and the true class of 1,000 test images, batched vs one image at a time.

    python bench/cam_speed.py                          # 1,000 images batched, the per-image loop on 100 of them
    python bench/cam_speed.py --loop_images 1000       # time the whole loop too (minutes on a laptop CPU)

The batched path is what ``explain`` runs (:func:`explain.report.cams_for_pred_and_true`: the images go through
``compute_cams`` stacked twice, ``--batch_sizes`` per forward pass); the loop calls ``compute_cams`` once per image and
class. The variants run interleaved ``--repeats`` times and the fastest run of each counts.
Both run in this process on the same model (a randomly initialised ``resnet18_cifar``: the cost of a CAM does not
depend on the weights) and the same real CIFAR-10 test images, unpacked from ``../shared/data/cifar10-jpeg.tar.xz``
into ``.bench-data/`` (synthetic images where the archive is absent). The loop's maps are checked against the
batched ones. Prints both timings and their ratio; writes ``bench/out/cam_speed.json``.
"""

from __future__ import annotations

import sys
import tarfile
import time
from pathlib import Path

if __package__ in (None, ""):  # `python bench/cam_speed.py`: import the repo's packages
    sys.path[0] = str(Path(__file__).resolve().parents[1])

import timm
import torch

import train  # noqa: F401  (registers resnet18_cifar)
from bench import common
from explain.cam import CAM_METHODS, compute_cams
from explain.report import cams_for_pred_and_true
from train.data import balanced_subset, load_data

REPO = Path(__file__).resolve().parents[1]
ARCHIVE = REPO.parent / "shared" / "data" / "cifar10-jpeg.tar.xz"
DATA = REPO / ".bench-data"


def test_images(count: int) -> tuple[torch.Tensor, torch.Tensor, str]:
    """``count`` class-balanced real test images and labels (synthetic when the archive is absent), and a label."""
    root = DATA / "cifar10-jpeg"
    if not root.is_dir() and ARCHIVE.is_file():
        DATA.mkdir(exist_ok=True)
        with tarfile.open(ARCHIVE) as tar:
            tar.extractall(DATA, filter="data")
    if root.is_dir():
        _, test = load_data(root, download=False)
        chosen = balanced_subset(test.labels, count, seed=0)
        return test.images[chosen], test.labels[chosen], f"real CIFAR-10 test images ({root})"
    generator = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (count, 3, 32, 32), generator=generator, dtype=torch.uint8)
    return images, torch.randint(0, 10, (count,), generator=generator), f"synthetic images ({ARCHIVE} is absent)"


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> int:
    parser = common.Parser(__doc__)
    parser.add_argument("--images", type=common.count(1), default=1000, help="images explained by the batched path")
    parser.add_argument("--loop_images", type=common.count(1), default=100, help="images timed in the per-image loop")
    parser.add_argument("--batch_sizes", type=common.ints(minimum=1), default="256,64",
                        help="CAM batch sizes of the batched path (256 = default)")
    parser.add_argument("--repeats", type=common.count(1), default=2,
                        help="interleaved repetitions; the fastest one counts")
    parser.add_argument("--method", default="gradcam", choices=list(CAM_METHODS))
    parser.add_argument("--layer", default="layer4")
    parser.add_argument("--device", default="cpu", help="where the model runs (cpu, cuda, auto)")
    parser.add_json(REPO / "bench" / "out" / "cam_speed.json", "--out")
    args = parser.parse(argv)
    device = common.device(args.device)
    torch.manual_seed(0)
    model = timm.create_model("resnet18_cifar", num_classes=10).to(device).eval()
    if args.layer not in dict(model.named_modules()):
        common.fail(f"--layer {args.layer!r} is not a module of resnet18_cifar (layer1 ... layer4, say)")
    results = common.Results(args.out, common.machine(device))

    images, labels, source = test_images(args.images)
    with torch.no_grad():
        preds = torch.cat([model(chunk.to(device).float() / 255).argmax(1).cpu() for chunk in images.split(256)])
    n = min(args.loop_images, len(images))
    sizes = args.batch_sizes
    maps = {}

    def batched(size: int) -> None:
        maps[size] = cams_for_pred_and_true(model, images, preds, labels, method=args.method, layer=args.layer,
                                            batch_size=size)

    def loop() -> None:
        maps["loop"] = [torch.cat([compute_cams(model, images[i:i + 1], classes[i:i + 1], args.method, args.layer)
                                   for i in range(n)]) for classes in (preds, labels)]

    cams_for_pred_and_true(model, images[:8], preds[:8], labels[:8], method=args.method, layer=args.layer)  # warm-up
    times: dict[str, list[float]] = {}
    for _ in range(args.repeats):  # interleaved, so a burst of load elsewhere hits every variant alike
        for size in sizes:
            times.setdefault(f"batched_{size}", []).append(timed(lambda size=size: batched(size)))
        times.setdefault("loop", []).append(timed(loop))
    # The loop's maps are the batched maps. On a GPU cuDNN picks other (TF32) kernels for each batch size: on an H200
    # a few pixels of 100 maps differed by up to 0.012 (of 1), so the bound there is looser.
    atol = 5e-2 if device.type == "cuda" else 1e-3
    max_diff = max((maps["loop"][i] - maps[size][i][:n]).abs().max().item() for size in sizes for i in (0, 1))
    for size in sizes:
        torch.testing.assert_close(maps["loop"][0], maps[size][0][:n], atol=atol, rtol=0)
        torch.testing.assert_close(maps["loop"][1], maps[size][1][:n], atol=atol, rtol=0)

    loop_all = min(times["loop"]) * len(images) / n
    scaled = f" (timed on {n} images, scaled x{len(images) / n:g})" if n < len(images) else ""
    print(f"{args.method} on {args.layer} ({device}), pred + true class of {len(images)} {source}, "
          f"{torch.get_num_threads()} threads, best of {args.repeats}")
    result = {"images": len(images), "classes_per_image": 2, "method": args.method, "layer": args.layer,
              "source": source, **common.machine(device), "max_abs_diff_loop_vs_batched": max_diff,
              "loop_images_timed": n, "loop_seconds": min(times["loop"]),
              "loop_seconds_for_all": loop_all, "loop_extrapolated": n < len(images), "batched": {},
              "all_times": times, **common.stamp("bench/cam_speed.py", argv)}
    for size in sizes:
        seconds = min(times[f"batched_{size}"])
        result["batched"][str(size)] = {"seconds": seconds, "images_per_second": len(images) / seconds,
                                   "speedup_vs_loop": loop_all / seconds}
        print(f"  batched, {size:3d} per pass: {seconds:7.2f} s  ({len(images) / seconds:6.1f} images/s)  "
              f"{loop_all / seconds:5.2f}x the loop")
    print(f"  per-image loop:      {loop_all:7.2f} s  ({len(images) / loop_all:6.1f} images/s){scaled}")
    return results.finish(result, measured=True)


if __name__ == "__main__":
    common.entry(main)
