"""How often the trust step's 95 % intervals hold the true mean, by simulation, at every size a verdict is given on.

The trust figures (gains over the random maps, rank correlations per randomization stage, paired differences between
CAM methods) are means over images with an interval from :func:`explain.trust.bootstrap_interval`. An interval that
claims 95 % must contain the true mean in 95 % of data sets; this bench draws ``--datasets`` data sets of each size
from distributions whose mean is known and counts:

* ``normal`` — N(0, 1);
* ``exponential`` — Exp(1), skewness 2 (per-image gains pile up near 0 with a long tail of images the map explains
  well);
* ``beta`` — Beta(0.5, 4) scaled to [0, 1], skewness ~1.9, bounded like an AUC gain.

It also measures the paired comparison of ``--compare``: three methods whose per-image AUCs have the same mean
(correlated per image, as methods on the same images are), compared by :func:`explain.trust.paired_differences`
(studentized bootstrap p-values, Holm over 3 pairs × 2 metrics): the share of data sets in which any pair is
separated (the family-wise false separation rate, which Holm keeps at or below 5 %).

    python bench/trust_coverage.py                    # 1,000 data sets per size and distribution (~5 min, 2 cores)
    python bench/trust_coverage.py --datasets 200 --sizes 12,32 --json /tmp/c.json

Writes ``bench/results/trust_coverage.json`` (``coverage`` {distribution: {size: share}}, ``false_separation``
{size: share}, ``method``, ``datasets``, ``command``); BENCHMARKS.md shows it.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
if __package__ in (None, ""):  # `python bench/trust_coverage.py`: import the repo's packages
    sys.path[0] = str(REPO)

from bench import common  # noqa: E402  (after the path set-up)
from explain.trust import CONFIDENCE, MIN_IMAGES, bootstrap_interval, paired_differences  # noqa: E402

DISTRIBUTIONS = {
    "normal": (lambda rng, shape: rng.normal(0.0, 1.0, shape), 0.0),
    "exponential": (lambda rng, shape: rng.exponential(1.0, shape), 1.0),
    "beta": (lambda rng, shape: rng.beta(0.5, 4.0, shape), 0.5 / 4.5),
}


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = common.Parser(__doc__)
    parser.add_argument("--datasets", type=common.count(1), default=1000, help="simulated data sets per size")
    parser.add_argument("--sizes", type=common.ints(minimum=2), default=[MIN_IMAGES, 16, 24, 32, 48, 64, 128, 256],
                        help="images per data set (comma-separated): every size a verdict is given on")
    parser.add_argument("--pair_datasets", type=common.count(1), default=300,
                        help="simulated comparisons of three equal methods per size (0 is not allowed)")
    parser.add_argument("--seed", type=common.count(0), default=0)
    parser.add_json(REPO / "bench" / "results" / "trust_coverage.json", help="where the results go")
    return parser.parse(argv)


def coverage(draw, mean: float, size: int, datasets: int, rng: np.random.Generator) -> float:
    """Share of ``datasets`` data sets whose interval holds ``mean``; each data set is bootstrapped on its own
    (resampling several at once would share their resample draws and correlate their errors)."""
    hits = 0
    for _ in range(datasets):
        low, high = bootstrap_interval(draw(rng, size), seed=int(rng.integers(2**31)))
        hits += int(low <= mean <= high)
    return hits / datasets


def false_separation(size: int, datasets: int, rng: np.random.Generator) -> float:
    """Share of data sets in which three methods of equal mean are told apart by any paired difference."""
    separated = 0
    for _ in range(datasets):
        shared = rng.beta(2.0, 5.0, (2, size))  # per image: how hard it is (the same for every method)
        per_image = {name: {metric: torch.from_numpy(shared[m] + rng.normal(0, 0.05, size))
                            for m, metric in enumerate(("deletion", "insertion"))} for name in "abc"}
        pairs = paired_differences(per_image, seed=int(rng.integers(2**31)))
        separated += any(pair["favours"] is not None for pair in pairs)
    return separated / datasets


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    results = common.Results(args.json)  # simulated figures: any machine's file takes them
    rng = np.random.default_rng(args.seed)
    start = time.perf_counter()
    result = {"method": "studentized bootstrap (bootstrap-t), explain.trust.bootstrap_interval",
              "confidence": CONFIDENCE, "datasets": args.datasets, "pair_datasets": args.pair_datasets,
              "min_images": MIN_IMAGES, "coverage": {}, "false_separation": {},
              **common.stamp("bench/trust_coverage.py", argv)}
    for name, (draw, mean) in DISTRIBUTIONS.items():
        result["coverage"][name] = {}
        for size in args.sizes:
            result["coverage"][name][str(size)] = share = coverage(draw, mean, size, args.datasets, rng)
            print(f"{name:12s} {size:4d} images: coverage {share:.3f}", flush=True)
    for size in args.sizes:
        result["false_separation"][str(size)] = share = false_separation(size, args.pair_datasets, rng)
        print(f"three equal methods, {size:4d} images: some pair separated in {share:.3f} of data sets", flush=True)
    result["seconds"] = round(time.perf_counter() - start, 1)
    status = results.finish({**result, **common.machine()}, measured=bool(args.sizes))
    print(json.dumps({"coverage_min": min(min(v.values()) for v in result["coverage"].values()),
                      "false_separation_max": max(result["false_separation"].values())}))
    return status


if __name__ == "__main__":
    common.entry(main)
