"""What the JPEG copy costs: the same recipe trained on lossless originals and on their JPEG twins, each model tested
on both, per seed.

``--png_dir`` holds the lossless originals (``cifar10-png/`` of ``../shared/data/cifar10-png-lossless-subset.tar.xz``),
``--jpeg_dir`` the same images from the JPEG copy (``bench/cifar_sets.py`` makes both). For each seed the recipe
(``train/run.py``'s flags after the script's own; :func:`train.engine.build_recipe`, as ``bench/time_to_acc.py``)
trains once on each training set, and each model is tested on both test sets: the 2×2 table ``<train>_<test>``
(``png_png``, ``png_jpeg``, ``jpeg_png``, ``jpeg_jpeg``), one accuracy per seed, with the recipe's TTA (and
without, under ``no_tta``). Imports only the config, data, model and engine modules (a stock PyTorch image runs it).

    python bench/jpeg_cost.py --png_dir W/cifar10-png --jpeg_dir W/cifar10-jpeg-twins --seeds 0,1,2 --json out.json
    python bench/jpeg_cost.py --png_dir P --jpeg_dir J --seeds 0 --epochs 1 --batch_size 50 --device cpu  # a smoke test
"""

from __future__ import annotations

import dataclasses
import statistics
import sys
from pathlib import Path

if __package__ in (None, ""):  # `python bench/jpeg_cost.py`: import the repo's packages
    sys.path[0] = str(Path(__file__).resolve().parents[1])

import timm.utils
import torch

import train  # noqa: F401  (registers resnet18_cifar)
from bench import common
from train.config import resolve
from train.data import DataError, load_data
from train.engine import build_recipe
from train.loader import DeviceLoader

SOURCES = ("png", "jpeg")
CELLS = tuple(f"{fit}_{test}" for fit in SOURCES for test in SOURCES)  # train data _ test data


def check_twins(sets: dict) -> None:
    """The two folders must hold the same images (file numbers) in the same order with the same labels.

    Raises:
        DataError: they differ.
    """
    for split in ("train", "test"):
        png, jpeg = sets["png"][split], sets["jpeg"][split]
        stems = [[Path(f).with_suffix("").as_posix() for f in d.files] for d in (png, jpeg)]
        if stems[0] != stems[1] or not torch.equal(png.labels, jpeg.labels) or png.classes != jpeg.classes:
            raise DataError(f"the {split} images of --png_dir and --jpeg_dir are not the same files "
                            f"({len(png):,} vs {len(jpeg):,})")


def run_seed(config, sets: dict, device: torch.device) -> dict:
    """Train on each source with ``config`` (its seed); each model's accuracy on each test set."""
    out = {"seed": config.seed, "acc": {}, "acc_no_tta": {}, "train_seconds": {}}
    for source in SOURCES:
        timm.utils.random_seed(config.seed)
        recipe = build_recipe(config, sets[source]["train"], sets[source]["test"], device)
        net = torch.compile(recipe.model) if config.compile else recipe.model
        seconds = sum(recipe.train_epoch(net)["seconds"] for _ in range(config.epochs))
        out["train_seconds"][source] = seconds
        for test in SOURCES:  # the recipe's own evaluation, on each test set in turn
            loader = DeviceLoader(sets[test]["test"], config.eval_batch_size, device, train=False)
            val = dataclasses.replace(recipe, test_loader=loader).evaluate(net, tta=config.tta)
            out["acc"][f"{source}_{test}"], out["acc_no_tta"][f"{source}_{test}"] = val["acc"], val["acc_no_tta"]
        print(f"  seed {config.seed}, trained on {source} ({config.epochs} epochs, {seconds:.1f}s): "
              + ", ".join(f"{test} test {out['acc'][f'{source}_{test}']:.4f}" for test in SOURCES), flush=True)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = common.Parser(__doc__, add_help=False)
    parser.add_argument("--png_dir", required=True, type=common.folder("train", "test"),
                        help="the lossless originals (train/ and test/ class folders)")
    parser.add_argument("--jpeg_dir", required=True, type=common.folder("train", "test"),
                        help="the same images from the JPEG copy")
    parser.add_argument("--seeds", type=common.ints(minimum=0), default="0", help="comma-separated seeds, one pair "
                        "of runs each")
    parser.add_json(None)
    own = parser.parse(argv, rest="unknown")  # the rest: train/run.py's flags, checked by its own parser
    config = common.recipe_config(["--data_dir", str(own.jpeg_dir), *own.rest], seeds=True)
    device = common.device(config.device)
    results = common.Results(own.json, common.machine(device))
    try:
        sets = {}
        for source, folder in zip(SOURCES, (own.png_dir, own.jpeg_dir), strict=True):
            train_set, test_set = load_data(folder, download=False)
            sets[source] = {"train": train_set, "test": test_set}
        check_twins(sets)
    except DataError as exc:
        common.fail(str(exc))
    resolve(config, len(sets["png"]["train"]))  # an unset --batch_size is fitted to the training set, as in a run
    name = common.machine(device)["device"]
    print(f"JPEG cost on {name}: {len(sets['png']['train']):,} train / {len(sets['png']['test']):,} test images, "
          f"{config.epochs} epochs, batch {config.batch_size}, seeds {','.join(map(str, own.seeds))}", flush=True)
    runs = common.per_seed(own.seeds, lambda seed: run_seed(dataclasses.replace(config, seed=seed), sets, device))
    result = {
        **common.machine(device), "config": config.to_dict(), "seeds": own.seeds,
        "train_images": len(sets["png"]["train"]), "test_images": len(sets["png"]["test"]),
        **{cell: [run["acc"][cell] for run in runs] for cell in CELLS},
        "no_tta": {cell: [run["acc_no_tta"][cell] for run in runs] for cell in CELLS},
        "train_seconds": {source: [run["train_seconds"][source] for run in runs] for source in SOURCES},
        **common.stamp("bench/jpeg_cost.py", argv),
    }
    for cell in CELLS:
        values = result[cell]
        print(f"{cell}: {statistics.fmean(values):.4f}" + (f" ± {statistics.stdev(values):.4f}" if len(values) > 1
                                                           else "") + f" (n={len(values)})")
    return results.finish(result, measured=bool(runs))


if __name__ == "__main__":
    common.entry(main)
