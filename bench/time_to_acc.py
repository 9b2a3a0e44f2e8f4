"""Time to accuracy: train a recipe, evaluate after every epoch, stop at the target, per seed.

The recipe is ``train/run.py``'s: same flags and ``--config FILE.yaml``, same data, the loaders, model, optimizer,
schedule and losses of the same :func:`train.engine.build_recipe`, the same evaluation; minus W&B, checkpoints and
explain. This script imports only the config, data, model and engine modules, so it runs on a stock PyTorch image.
For each seed it prints the accuracy curve and the training seconds until ``val/acc`` first reaches ``--target``
(evaluation time is reported, not counted), then the mean and spread over seeds; writes JSON. With ``--full`` every
seed trains the whole schedule (the final accuracy of the recipe) and still records when it first reached the target.

    python bench/time_to_acc.py --data_dir .bench-data/cifar10-jpeg --target 0.94 --seeds 0,1,2     # a GPU
    python bench/time_to_acc.py --target 0.3 --train_subset 2000 --test_subset 1000 --epochs 2 --batch_size 100

With ``--compile`` the first epoch includes compilation: ``compile_seconds`` estimates it as the first epoch's
training time minus the median of the others, and ``train_seconds_excl_compile`` subtracts it.
"""

from __future__ import annotations

import dataclasses
import sys
import time
from pathlib import Path

if __package__ in (None, ""):  # `python bench/time_to_acc.py`: import the repo's packages
    sys.path[0] = str(Path(__file__).resolve().parents[1])

import timm
import timm.utils
import torch

import train  # noqa: F401  (registers resnet18_cifar)
from bench import common
from train.config import Config, resolve
from train.data import DataError, balanced_subset, load_data
from train.engine import build_recipe, compile_overhead

REPO = Path(__file__).resolve().parents[1]


def run_seed(config: Config, train_set, test_set, target: float, device: torch.device, *, full: bool = False) -> dict:
    """Train ``config`` with its seed until ``val/acc >= target`` (or, with ``full``, to the end of the schedule);
    the curve and timings. ``reached_epoch``/``seconds_to_target`` are those of the first epoch at the target."""
    timm.utils.random_seed(config.seed)
    torch.backends.cudnn.benchmark = True
    recipe = build_recipe(config, train_set, test_set, device)
    net = torch.compile(recipe.model) if config.compile else recipe.model

    curve, train_seconds, eval_seconds, reached, reached_seconds, images = [], 0.0, 0.0, None, None, 0
    wall_start = time.perf_counter()
    for epoch in range(1, config.epochs + 1):
        stats = recipe.train_epoch(net)
        val = recipe.evaluate(net, tta=config.tta)
        train_seconds += stats["seconds"]
        images += stats["images"]
        eval_seconds += val["seconds"]
        curve.append({"epoch": epoch, "train_seconds": train_seconds, "epoch_train_seconds": stats["seconds"],
                      "train_acc": stats["acc"], "val_acc": val["acc"], "val_acc_no_tta": val["acc_no_tta"]})
        print(f"  seed {config.seed} epoch {epoch}/{config.epochs}: val acc {val['acc']:.4f} "
              f"(single pass {val['acc_no_tta']:.4f}), {train_seconds:.1f}s training, "
              f"{stats['images_per_second']:.0f} img/s", flush=True)
        if val["acc"] >= target and reached is None:
            reached, reached_seconds = epoch, train_seconds
        if reached is not None and not full:
            break
    compile_seconds = compile_overhead([p["epoch_train_seconds"] for p in curve]) if config.compile else 0.0
    return {
        "seed": config.seed, "reached_epoch": reached, "final_acc": curve[-1]["val_acc"],
        "final_acc_no_tta": curve[-1]["val_acc_no_tta"], "epochs_run": len(curve),
        "train_seconds": train_seconds, "compile_seconds": compile_seconds,
        "train_seconds_excl_compile": train_seconds - compile_seconds, "eval_seconds": eval_seconds,
        "seconds_to_target": None if reached is None else reached_seconds - compile_seconds,
        "images_per_second": images / (train_seconds - compile_seconds),  # training images/s, compilation excluded
        "wall_seconds": time.perf_counter() - wall_start, "curve": curve,
    }


def main(argv: list[str] | None = None) -> int:
    parser = common.Parser(__doc__, add_help=False)
    parser.add_argument("--target", type=common.number(0, 1), default=0.94, help="val/acc to reach (a fraction)")
    parser.add_argument("--seeds", type=common.ints(minimum=0), default="0", help="comma-separated seeds, one run each")
    parser.add_argument("--full", action="store_true",
                        help="train every epoch of the schedule instead of stopping at the target")
    parser.add_json(REPO / "bench" / "out" / "time_to_acc.json")
    own = parser.parse(argv, rest="unknown")  # the rest: train/run.py's flags, checked by its own parser
    config = common.recipe_config(own.rest, seeds=True)
    device = common.device(config.device)
    results = common.Results(own.json, common.machine(device))
    try:
        train_set, test_set = load_data(config.data_dir)
    except DataError as exc:
        common.fail(str(exc))
    train_set = train_set.subset(balanced_subset(train_set.labels, config.train_subset, config.seed))
    test_set = test_set.subset(balanced_subset(test_set.labels, config.test_subset, config.seed))
    resolve(config, len(train_set))  # an unset --batch_size is fitted to the training set, as train/run.py does
    name = common.machine(device)["device"]
    print(f"{config.model} on {name}: {len(train_set):,} train / {len(test_set):,} test images, target "
          f"{own.target:.4f}, {config.epochs} epochs max, batch {config.batch_size}, lr {config.lr}", flush=True)

    def one_seed(seed: int) -> dict:
        run = run_seed(dataclasses.replace(config, seed=seed), train_set, test_set, own.target, device,
                       full=own.full)
        where = (f"reached {own.target:.4f} at epoch {run['reached_epoch']} after {run['seconds_to_target']:.1f}s "
                 f"of training" if run["reached_epoch"] else f"did not reach {own.target:.4f}")
        print(f"seed {seed}: {where}; final acc {run['final_acc']:.4f}"
              + (f", compile ~{run['compile_seconds']:.1f}s" if config.compile else ""), flush=True)
        return run

    runs = common.per_seed(own.seeds, one_seed)
    hits = [run for run in runs if run["reached_epoch"]]
    spread = common.spread
    result = {
        **common.machine(device), "target": own.target, "config": {**config.to_dict(), "seed": own.seeds[-1]},
        "train_images": len(train_set), "test_images": len(test_set), "runs": runs,
        "reached": f"{len(hits)}/{len(runs)}",
        "final_acc": spread([run["final_acc"] for run in runs]),
        "final_acc_no_tta": spread([run["final_acc_no_tta"] for run in runs]),
        "images_per_second": spread([run["images_per_second"] for run in runs]),
        "seconds_to_target": spread([run["seconds_to_target"] for run in hits]),
        "epoch_to_target": spread([run["reached_epoch"] for run in hits]),
        **common.stamp("bench/time_to_acc.py", argv),
    }
    acc = result["final_acc"]
    print(f"{len(hits)}/{len(runs)} seeds reached {own.target:.4f}; final acc {acc['mean']:.4f} ± {acc['std']:.4f} "
          f"(min {acc['min']:.4f}, max {acc['max']:.4f})"
          + (f"; time to target {result['seconds_to_target']['mean']:.1f}s ± {result['seconds_to_target']['std']:.1f}s"
             if hits else ""))
    return results.finish(result, measured=bool(runs))


if __name__ == "__main__":
    common.entry(main)
