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

import argparse
import json
import sys
import time
from pathlib import Path

if __package__ in (None, ""):  # `python bench/probe_cost.py`: import the repo's packages
    sys.path[0] = str(Path(__file__).resolve().parents[1])

import torch

import train  # noqa: F401  (registers resnet18_cifar)
from explain.probes import Probes, choose_probes
from train.config import parse_args
from train.data import balanced_subset, load_data
from train.engine import build_recipe, resolve_device

REPO = Path(__file__).resolve().parents[1]
FULL_EPOCH = 50_000


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data_dir", default=str(REPO / ".bench-data" / "cifar10-jpeg"))
    parser.add_argument("--train_subset", type=int, default=1000)
    parser.add_argument("--batch_size", type=int, default=100)
    parser.add_argument("--probe_images", type=int, default=20)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--json", default=str(REPO / "bench" / "out" / "probe_cost.json"))
    args = parser.parse_args(argv)
    config, _ = parse_args([f"--data_dir={args.data_dir}", f"--train_subset={args.train_subset}",
                            f"--batch_size={args.batch_size}", f"--device={args.device}", "--epochs=2"])
    device = resolve_device(config.device)
    train_set, test_set = load_data(config.data_dir, download=False)
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
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu", "torch": torch.__version__,
        "threads": torch.get_num_threads(), "probe_images": len(indices), "probe_seconds": probe_seconds,
        "epoch_images": epoch["images"], "epoch_seconds": epoch["seconds"],
        "fraction_of_this_epoch": probe_seconds / epoch["seconds"],
        "fraction_of_a_full_epoch": probe_seconds / (per_image * FULL_EPOCH),
        "date": time.strftime("%Y-%m-%d"),
        "command": " ".join(["python", "bench/probe_cost.py", *(sys.argv[1:] if argv is None else argv)]),
    }
    print(f"{len(indices)} probes: {probe_seconds * 1000:.0f} ms per epoch (best of {args.repeats}); training epoch "
          f"of {epoch['images']:,} images: {epoch['seconds']:.1f} s -> {100 * result['fraction_of_this_epoch']:.2f} %"
          f" of it, {100 * result['fraction_of_a_full_epoch']:.3f} % of a {FULL_EPOCH:,}-image epoch at this speed")
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
