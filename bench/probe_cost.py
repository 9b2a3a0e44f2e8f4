"""Benchmark: what the probe images cost per epoch, as a fraction of the epoch, in one process.

    python bench/probe_cost.py                           # 20 probes, one timed epoch of 1,000 training images
    python bench/probe_cost.py --probe_images 20 --train_subset 2000

Per epoch a run with probes does :meth:`explain.probes.Probes.observe` (one batched forward and backward of the
probe images: prediction, p_true and the CAM of the true class) and builds their overlays for W&B
(:meth:`~explain.probes.Probes.images_for`). Both are timed here beside one epoch of ``train/run.py``'s recipe
(the same :func:`train.engine.build_recipe`) on the same device, after a warm-up; ``--repeats`` probe timings, the
fastest counts. The fraction is given for the epoch timed and for a full 50,000-image CIFAR-10 epoch at the
measured training speed (the probes' cost does not grow with the data). Writes ``bench/out/probe_cost.json``.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

if __package__ in (None, ""):  # `python bench/probe_cost.py`: import the repo's packages
    sys.path[0] = str(Path(__file__).resolve().parents[1])

import torch

import train  # noqa: F401  (registers resnet18_cifar)
from bench import common
from explain.probes import Probes, choose_probes
from train.config import MAX_PROBES
from train.data import DataError, balanced_subset, load_data
from train.engine import build_recipe

REPO = Path(__file__).resolve().parents[1]
FULL_EPOCH = 50_000


def main(argv: list[str] | None = None) -> int:
    parser = common.Parser(__doc__)
    parser.add_argument("--data_dir", type=common.folder(), default=str(REPO / ".bench-data" / "cifar10-jpeg"))
    parser.add_argument("--train_subset", type=common.count(1), default=1000)
    parser.add_argument("--batch_size", type=common.count(1), default=100)
    parser.add_argument("--probe_images", type=common.count(1, MAX_PROBES), default=20)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--repeats", type=common.count(1), default=5)
    parser.add_json(REPO / "bench" / "out" / "probe_cost.json")
    args = parser.parse(argv)
    if args.batch_size > args.train_subset:
        parser.error(f"--batch_size {args.batch_size} is more than --train_subset {args.train_subset}")
    config = common.recipe_config([f"--data_dir={args.data_dir}", f"--train_subset={args.train_subset}",
                                   f"--batch_size={args.batch_size}", f"--device={args.device}", "--epochs=2"])
    device = common.device(config.device)
    results = common.Results(args.json, common.machine(device))
    try:
        train_set, test_set = load_data(config.data_dir, download=False)
    except DataError as exc:
        common.fail(str(exc))
    train_set = train_set.subset(balanced_subset(train_set.labels, config.train_subset, 0))
    recipe = build_recipe(config, train_set, test_set, device)
    indices = choose_probes(test_set.labels, args.probe_images, seed=0)
    probes = Probes(test_set.images[indices], test_set.labels[indices], indices, test_set.classes, "gradcam",
                    ["layer4"])

    recipe.train_epoch(recipe.model)  # warm-up (allocator, cuDNN autotuning)
    probes.observe(recipe.model, 0)
    epoch = recipe.train_epoch(recipe.model)
    times = []
    for epoch_number in range(1, args.repeats + 1):
        start = time.perf_counter()
        probes.observe(recipe.model, epoch_number)
        probes.images_for(epoch_number)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append(time.perf_counter() - start)
    probe_seconds = min(times)
    per_image = epoch["seconds"] / epoch["images"]
    result = {
        **common.machine(device), "probe_images": len(indices), "probe_seconds": probe_seconds,
        "epoch_images": epoch["images"], "epoch_seconds": epoch["seconds"],
        "fraction_of_this_epoch": probe_seconds / epoch["seconds"],
        "fraction_of_a_full_epoch": probe_seconds / (per_image * FULL_EPOCH),
        **common.stamp("bench/probe_cost.py", argv),
    }
    print(f"{len(indices)} probes: {probe_seconds * 1000:.0f} ms per epoch (best of {args.repeats}); training epoch "
          f"of {epoch['images']:,} images: {epoch['seconds']:.1f} s -> {100 * result['fraction_of_this_epoch']:.2f} %"
          f" of it, {100 * result['fraction_of_a_full_epoch']:.3f} % of a {FULL_EPOCH:,}-image epoch at this speed")
    return results.finish(result, measured=bool(times))


if __name__ == "__main__":
    common.entry(main)
