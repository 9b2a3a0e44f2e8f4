"""Which short-schedule tricks carry over to ``resnet18_cifar`` on the CPU: paired, seeded, on a subset.

Every variant trains the same seeded, class-balanced subset of the training set (chosen with seed 0 for every run,
so runs differ only in their training seed and the variant) for a short schedule, with ``train/run.py``'s recipe
otherwise (:func:`train.engine.build_recipe`: loaders, fused SGD-Nesterov, warm-up then linear decay, bf16 autocast
and channels-last where native). Each trained model, and an EMA of its weights kept beside it (timm's
``ModelEmaV3``, which never changes the training itself), is then evaluated on the same seeded test subset in six
views: the image, its mirror, and both shifted one pixel diagonally either way (reflect-padded, as airbench's
``tta_level=2``). So one run gives, for free and paired: single pass, flip TTA, flip + translate TTA, with and
without the EMA. Training variants:

* ``base`` — ``train/run.py``'s recipe with every trick below off (``--min_res 0 --stem_init default``, random flips,
  the flags' label smoothing);
* ``ls02`` — label smoothing 0.2 (airbench's) instead of the config's;
* ``altflip`` — ``--flip alternate``: each image keeps its own mirror side, all flipped together every other epoch
  (airbench);
* ``whiten`` — ``--stem_init whiten``: the 3×3 stem's first 54 filters set to the ± eigenvectors of the training
  patches' covariance divided by the square root of their eigenvalues (airbench's whitening init, here on a trained
  stem; :func:`train.engine.whiten_stem`);
* ``prog`` — progressive resizing as ``train/run.py --min_res 16 --res_ramp 0.75`` does it
  (:func:`train.engine.epoch_resolutions`: 16 pixels rising to full size at three quarters of the schedule), with
  ``--prog_epochs`` epochs (default: chosen so that its training takes about as long as ``base``'s, the fair
  question for a fixed budget);
* ``lookahead`` — timm's ``Lookahead`` around the optimizer (Zhang et al. 2019: every ``k`` = 6 steps the weights
  move half way back towards their slow copy, alpha 0.5); the slow weights are what is evaluated;
* ``bias_lr`` — the BatchNorm biases train at ``--bias_lr_scale`` times the learning rate (airbench trains its
  BatchNorm biases at 64 times its weights' rate), the rest as before;
* ``lr_end`` — the schedule's linear decay ends at ``--lr_end`` of the peak (airbench94's 0.07) instead of ~0
  (``train/run.py``'s 1e-4);
* ``bundle`` — the variants named by ``--bundle`` together.

``--base`` names tricks every arm has, ``base`` included (``--base whiten,prog``: each variant added to the adopted
default, not to the recipe with every trick off).

Each variant's difference from ``base`` is paired by seed: mean, and a t interval over seeds (with 2 seeds an
interval is wide, and says so: "inconclusive" unless it excludes 0).

    python bench/recipe_study.py --data_dir cifar10-jpeg --variants base,ls02,altflip,whiten,prog --seeds 0,1
    python bench/recipe_study.py --data_dir cifar10-jpeg --base whiten,prog --variants base,lookahead,bias_lr,lr_end
"""

from __future__ import annotations

import math
import statistics
import sys
import time
from pathlib import Path

if __package__ in (None, ""):  # `python bench/recipe_study.py`: import the repo's packages
    sys.path[0] = str(Path(__file__).resolve().parents[1])

from bench import common

REPO = Path(__file__).resolve().parents[1]
VARIANTS = ("base", "ls02", "altflip", "whiten", "prog", "lookahead", "bias_lr", "lr_end", "bundle")
TRICKS = VARIANTS[1:-1]
VIEWS = ("single", "flip", "flip_translate")


def views(model, loader, amp, channels_last: bool):
    """Logits ``[6, N, C]`` of the test images in the six views, and the labels."""
    import torch
    import torch.nn.functional as F

    model.eval()
    outputs, labels = [], []
    with torch.no_grad():
        for images, target in loader:
            padded = F.pad(images, (1,) * 4, mode="reflect")
            shifted = [padded[..., :-2, :-2], padded[..., 2:, 2:]]
            batch = [images, images.flip(-1), shifted[0], shifted[0].flip(-1), shifted[1], shifted[1].flip(-1)]
            row = []
            for view in batch:
                if channels_last:
                    view = view.contiguous(memory_format=torch.channels_last)
                with torch.autocast(images.device.type, dtype=amp or torch.float32, enabled=amp is not None):
                    row.append(model(view).float())
            outputs.append(torch.stack(row))
            labels.append(target)
    return torch.cat(outputs, 1), torch.cat(labels)


def accuracies(logits, labels) -> dict[str, float]:
    """Single pass, flip TTA and airbench's flip + translate TTA (half the flip pair, half the mean of the shifted
    flip pairs) from the six views' logits."""
    flip = (logits[0] + logits[1]) / 2
    translate = (logits[2] + logits[3] + logits[4] + logits[5]) / 4
    final = {"single": logits[0], "flip": flip, "flip_translate": (flip + translate) / 2}
    return {name: (value.argmax(1) == labels).float().mean().item() for name, value in final.items()}


def optimizer_tricks(recipe, parts: set[str], config, *, bias_lr_scale: float, lr_end: float):
    """The optimizer and schedule of ``recipe`` with the ``bias_lr``, ``lr_end`` and ``lookahead`` tricks of
    ``parts`` applied (the recipe's own where none is)."""
    import torch
    from timm.optim import Lookahead

    from train.engine import make_scheduler

    optimizer, scheduler = recipe.optimizer, recipe.scheduler
    if "bias_lr" in parts:  # BatchNorm biases in a group of their own, at bias_lr_scale × the rate
        biases = {id(m.bias) for m in recipe.model.modules()
                  if isinstance(m, torch.nn.modules.batchnorm._BatchNorm) and m.bias is not None}
        groups = []
        for group in optimizer.param_groups:  # peak rates (the scheduler has already set lr to its first step's)
            peak = group.get("initial_lr", group["lr"])
            options = {k: v for k, v in group.items() if k not in ("params", "initial_lr", "lr")}
            rest = [p for p in group["params"] if id(p) not in biases]
            mine = [p for p in group["params"] if id(p) in biases]
            groups += [{**options, "params": rest, "lr": peak}] if rest else []
            groups += [{**options, "params": mine, "lr": peak * bias_lr_scale}] if mine else []
        optimizer = type(optimizer)(groups, **optimizer.defaults)
    if parts & {"bias_lr", "lr_end"}:  # the schedule again, on the new optimizer or to a new end (from the peaks)
        scheduler = make_scheduler(optimizer, epochs=config.epochs, steps_per_epoch=len(recipe.train_loader),
                                   warmup_epochs=config.warmup_epochs, end=lr_end if "lr_end" in parts else 1e-4)
    if "lookahead" in parts:
        optimizer = Lookahead(optimizer, alpha=0.5, k=6)
    return optimizer, scheduler


def run_variant(variant: str, seed: int, args, train_set, test_set, device) -> dict:
    """Train one variant with one seed; its accuracies (model and EMA, three TTA levels) and seconds."""
    import timm.utils
    from timm.utils import ModelEmaV3

    from train.config import Config
    from train.engine import build_recipe, train_one_epoch

    parts = set(args.base) | (set(args.bundle) if variant == "bundle" else {variant} - {"base"})
    epochs = args.prog_epochs if "prog" in parts else args.epochs
    smoothing = 0.2 if "ls02" in parts else args.label_smoothing
    config = Config(epochs=epochs, batch_size=args.batch_size, label_smoothing=smoothing, seed=seed,
                    precision=args.precision, flip="alternate" if "altflip" in parts else "random",
                    stem_init="whiten" if "whiten" in parts else "default", min_res=16 if "prog" in parts else 0)
    timm.utils.random_seed(seed)
    recipe = build_recipe(config, train_set, test_set, device)
    optimizer, scheduler = optimizer_tricks(recipe, parts, config, bias_lr_scale=args.bias_lr_scale,
                                            lr_end=args.lr_end)
    ema = ModelEmaV3(recipe.model, decay=args.ema, use_warmup=True)
    seconds, curve = 0.0, []
    for epoch in range(epochs):
        recipe.train_loader.resolution = recipe.resolutions[epoch]  # prog: --min_res 16 (--res_ramp 0.75)
        stats = train_one_epoch(recipe.model, recipe.train_loader, optimizer, scheduler,
                                recipe.train_loss, device=device, amp=recipe.amp, channels_last=recipe.channels_last,
                                ema=ema)
        seconds += stats["seconds"]
        curve.append({"epoch": epoch + 1, "resolution": recipe.train_loader.resolution, "loss": stats["loss"],
                      "acc": stats["acc"], "seconds": stats["seconds"]})
    if "lookahead" in parts:  # end on the slow weights: one more lookahead step (none if the last step was one)
        optimizer.sync_lookahead()
    result = {"variant": variant, "seed": seed, "epochs": epochs, "train_seconds": seconds, "curve": curve}
    for name, net in (("model", recipe.model), ("ema", ema.module)):
        logits, labels = views(net, recipe.test_loader, recipe.amp, recipe.channels_last)
        result[name] = accuracies(logits, labels)
    print(f"  {variant} seed {seed}: {epochs} epochs {seconds:.0f}s  model {result['model']}  ema {result['ema']}",
          flush=True)
    return result


def paired(runs: list[dict], variant: str, weights: str, view: str) -> dict | None:
    """``variant`` minus ``base`` paired by seed (same weights and view): mean, t interval over seeds, verdict."""
    base = {r["seed"]: r[weights][view] for r in runs if r["variant"] == "base"}
    diffs = [r[weights][view] - base[r["seed"]] for r in runs if r["variant"] == variant and r["seed"] in base]
    return difference(diffs)


def difference(diffs: list[float]) -> dict | None:
    """Mean of paired differences with its 95 % t interval (:func:`bench.common.t_interval`) and a verdict
    ("better", "worse", "inconclusive")."""
    if len(diffs) < 2:
        return None
    low, high = common.t_interval(diffs)
    verdict = "better" if low > 0 else "worse" if high < 0 else "inconclusive"
    return {"mean": statistics.fmean(diffs), "low": low, "high": high, "n": len(diffs), "diffs": diffs,
            "verdict": verdict}


def pooled(runs: list[dict], weights: str = "model", view: str = "flip") -> dict:
    """Every variant's paired difference from ``base`` with a t interval whose spread is pooled over all the variants'
    paired differences (one variance, ``sum(n_v - 1)`` degrees of freedom): with 2 seeds a variant's own interval has
    1 degree of freedom (t = 12.7) and can tell almost nothing; pooling assumes the seed-to-seed noise of a paired
    difference is the same for every variant, which the per-variant spreads can be checked against."""
    from scipy import stats

    base = {r["seed"]: r[weights][view] for r in runs if r["variant"] == "base"}
    diffs: dict[str, list[float]] = {}
    for r in runs:
        if r["variant"] != "base" and r["seed"] in base:
            diffs.setdefault(r["variant"], []).append(r[weights][view] - base[r["seed"]])
    dof = sum(len(d) - 1 for d in diffs.values())
    if dof < 1:
        return {}
    variance = sum(sum((x - statistics.fmean(d)) ** 2 for x in d) for d in diffs.values()) / dof
    t = stats.t.ppf(0.975, dof)
    out = {}
    for variant, d in diffs.items():
        mean, half = statistics.fmean(d), t * math.sqrt(variance / len(d))
        out[variant] = {"mean": mean, "low": mean - half, "high": mean + half, "n": len(d), "dof": dof,
                        "verdict": "better" if mean - half > 0 else "worse" if mean + half < 0 else "inconclusive"}
    return out


def main(argv: list[str] | None = None) -> int:
    parser = common.Parser(__doc__)
    parser.add_argument("--data_dir", type=common.folder("train", "test"), default="cifar10-jpeg",
                        help="image-folder root of the data (the JPEG CIFAR-10 copy)")
    parser.add_argument("--variants", type=common.choices(VARIANTS), default="base,ls02,altflip,whiten,prog")
    parser.add_argument("--bundle", type=common.choices(TRICKS), default="ls02,altflip",
                        help="the variants the bundle variant combines")
    parser.add_argument("--base", type=common.choices(TRICKS, empty=True), default="",
                        help="tricks every arm has, base included (none: the recipe with every trick off)")
    parser.add_argument("--bias_lr_scale", type=common.number(0.01, 1000), default=8.0,
                        help="the bias_lr variant's factor on the BatchNorm biases' learning rate")
    parser.add_argument("--lr_end", type=common.number(0, 1), default=0.07,
                        help="the lr_end variant's last learning rate, a fraction of the peak (airbench94's 0.07)")
    parser.add_argument("--seeds", type=common.ints(minimum=0), default="0,1")
    parser.add_argument("--train_subset", type=common.count(100), default=10_000)
    parser.add_argument("--test_subset", type=common.count(100), default=4_000)
    parser.add_argument("--epochs", type=common.count(1, 200), default=5)
    parser.add_argument("--prog_epochs", type=common.count(1, 200), default=8,
                        help="epochs of the prog variant (8 at 5 for base: about base's training time)")
    parser.add_argument("--batch_size", type=common.count(8), default=128)
    parser.add_argument("--label_smoothing", type=common.number(0, 0.99), default=0.1)
    parser.add_argument("--ema", type=common.number(0, 0.99999), default=0.98,
                        help="decay of the EMA evaluated beside each model")
    parser.add_argument("--precision", type=common.choices(("auto", "fp32", "bf16")), default="auto")
    parser.add_argument("--pair_with", default="",
                        help="a study in the results file whose base runs (same settings and seeds) these variants "
                             "are paired with, instead of training base again")
    parser.add_argument("--analyze_only", action="store_true",
                        help="recompute the paired figures from the runs the results file holds; no training")
    parser.add_json(REPO / "bench" / "results" / "recipe_study.json")
    args = parser.parse(argv)
    args.precision = args.precision[0]

    import torch

    import train  # noqa: F401  (registers resnet18_cifar)
    from train.data import balanced_subset, load_data

    device = torch.device("cpu")
    results = common.Results(args.json, common.machine(device))
    key = ("+".join(args.variants) + (f" on {'+'.join(args.base)}" if args.base else "")
           + (f" (base of {args.pair_with})" if args.pair_with else ""))
    if args.pair_with:
        other = (results.earlier.get("study") or {}).get(args.pair_with)
        if not other or "base" in args.variants:
            common.fail(f"--pair_with {args.pair_with!r}: {args.json} holds no such study, or base is in --variants")
        same = ("train_subset", "test_subset", "epochs", "batch_size", "label_smoothing", "ema", "base")
        differ = [k for k in same if other["settings"].get(k, [] if k == "base" else None) != getattr(args, k)]
        if differ or not set(args.seeds) <= set(other["settings"]["seeds"]):
            common.fail(f"--pair_with {args.pair_with!r}: its base runs differ from these settings "
                        f"({', '.join(differ) or 'seeds'})")
    twice = [v for v in args.variants if v in args.base or v == "bundle" and set(args.bundle) <= set(args.base)]
    if twice:
        common.fail(f"--variants {','.join(twice)}: --base already has it, so it would train base again")
    start = time.perf_counter()
    if args.analyze_only:  # the figures again from the runs the file holds (a changed analysis, no training)
        try:
            runs = results.earlier["study"][key]["runs"]
        except (KeyError, TypeError):
            common.fail(f"{args.json} holds no study of the variants {key}")
    else:
        train_set, test_set = load_data(args.data_dir, download=False)
        train_set = train_set.subset(balanced_subset(train_set.labels, args.train_subset, 0))
        test_set = test_set.subset(balanced_subset(test_set.labels, args.test_subset, 0))
        runs = [run_variant(variant, seed, args, train_set, test_set, device)
                for variant in args.variants for seed in args.seeds]
        if args.pair_with:  # base runs of another study in the file, same settings: no need to train them again
            runs = [r for r in results.earlier["study"][args.pair_with]["runs"] if r["variant"] == "base"] + runs
    differences = {
        variant: {weights: {view: paired(runs, variant, weights, view) for view in VIEWS}
                  for weights in ("model", "ema")}
        for variant in args.variants if variant != "base"}
    free = {}  # the evaluation-only tricks, paired within each run
    for name, pick in {"ema_vs_model_flip": lambda r: r["ema"]["flip"] - r["model"]["flip"],
                       "translate_vs_flip_model": lambda r: r["model"]["flip_translate"] - r["model"]["flip"],
                       "translate_vs_flip_ema": lambda r: r["ema"]["flip_translate"] - r["ema"]["flip"]}.items():
        free[name] = difference([pick(r) for r in runs])
    for variant, table in differences.items():
        for weights, by_view in table.items():
            d = by_view["flip"]
            if d:
                print(f"{variant} - base ({weights}, flip TTA): {100 * d['mean']:+.2f} points "
                      f"[{100 * d['low']:+.2f}, {100 * d['high']:+.2f}] {d['verdict']}")
    for name, d in free.items():
        if d:
            print(f"{name}: {100 * d['mean']:+.2f} points [{100 * d['low']:+.2f}, {100 * d['high']:+.2f}] "
                  f"{d['verdict']} (n={d['n']})")
    for weights in ("model", "ema"):
        for variant, d in pooled(runs, weights).items():
            print(f"{variant} - base ({weights}, flip TTA, pooled spread, {d['dof']} dof): {100 * d['mean']:+.2f} "
                  f"points [{100 * d['low']:+.2f}, {100 * d['high']:+.2f}] {d['verdict']}")
    settings = {k: getattr(args, k) for k in ("train_subset", "test_subset", "epochs", "prog_epochs", "batch_size",
                                              "label_smoothing", "ema", "seeds", "bundle", "base", "bias_lr_scale",
                                              "lr_end")}
    wall, command = time.perf_counter() - start, common.stamp("bench/recipe_study.py", argv)["command"]
    if args.analyze_only:  # the runs' own settings, time and command, not this command's
        earlier = results.earlier["study"][key]
        settings, wall = earlier["settings"], earlier["wall_seconds"]
        command = earlier.get("command", results.earlier.get("command"))
    pooled_vs_base = {weights: pooled(runs, weights) for weights in ("model", "ema")}
    result = {**common.machine(device), "study": {key: {"settings": settings, "runs": runs,
                                                        "paired_vs_base": differences, "pooled_vs_base": pooled_vs_base,
                                                        "evaluation_only": free,
                                                        "wall_seconds": wall, "command": command}},
              **common.stamp("bench/recipe_study.py", argv)}
    return results.finish(result, measured=bool(runs))


if __name__ == "__main__":
    common.entry(main)
