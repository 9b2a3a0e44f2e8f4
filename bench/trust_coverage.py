"""How often the trust step's 95 % intervals hold the true mean, by simulation, at every size a verdict is given on.

The trust figures (gains over the random maps, rank correlations per randomization stage, paired differences between
CAM methods) are means over images with an interval from :func:`explain.trust.bootstrap_interval`. An interval that
claims 95 % must contain the true mean in 95 % of data sets; this bench draws ``--datasets`` data sets of each size
from distributions whose mean is known and counts:

* ``normal`` — N(0, 1);
* ``exponential`` — Exp(1), skewness 2 (per-image gains pile up near 0 with a long tail of images the map explains
  well);
* ``beta`` — Beta(0.5, 4) scaled to [0, 1], skewness ~1.9, bounded like an AUC gain;
* ``correlation`` and ``correlation_high`` — per-image rank correlations ``tanh(N(0.15, 0.8))`` (after randomizing:
  a small mean, spread over most of [−1, 1]) and ``tanh(N(1.8, 0.7))`` (maps that survive: piled up near 1), with the
  randomization check's interval, :func:`explain.trust.correlation_interval` (``correlation_inside``: every interval
  stayed inside [−1, 1]).

It also measures the paired comparison of ``--compare``: three methods whose per-image AUCs have the same mean
(correlated per image, as methods on the same images are), compared by :func:`explain.trust.paired_differences`
(studentized bootstrap p-values, Holm over 3 pairs × 2 metrics): the share of data sets in which any pair is
separated (the family-wise false separation rate, which Holm keeps at or below 5 %).

    python bench/trust_coverage.py                    # 1,000 data sets per size and distribution (~5 min, 2 cores)
    python bench/trust_coverage.py --datasets 200 --sizes 12,32 --json /tmp/c.json
    python bench/trust_coverage.py --distributions correlation,correlation_high --separation False  # those alone

Writes ``bench/results/trust_coverage.json`` (``coverage`` {distribution: {size: share}}, ``correlation_inside``,
``false_separation``
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
from explain.trust import CONFIDENCE, MIN_IMAGES, bootstrap_interval, correlation_interval, paired_differences  # noqa: E402


def _tanh_normal_mean(mu: float, sigma: float) -> float:
    """E[tanh(mu + sigma·Z)], Z ~ N(0, 1), by Gauss–Hermite quadrature (exact to ~1e-12 at 80 nodes)."""
    nodes, weights = np.polynomial.hermite_e.hermegauss(80)
    return float((weights * np.tanh(mu + sigma * nodes)).sum() / weights.sum())


# name -> (draw, true mean, interval): the gains and differences use bootstrap_interval, the rank correlations of the
# randomization check correlation_interval (bounded to [-1, 1]), each on data shaped like what it is used on
DISTRIBUTIONS = {
    "normal": (lambda rng, shape: rng.normal(0.0, 1.0, shape), 0.0, bootstrap_interval),
    "exponential": (lambda rng, shape: rng.exponential(1.0, shape), 1.0, bootstrap_interval),
    "beta": (lambda rng, shape: rng.beta(0.5, 4.0, shape), 0.5 / 4.5, bootstrap_interval),
    # per-image rank correlations after randomizing: spread around a small mean, most of [-1, 1] reached
    "correlation": (lambda rng, shape: np.tanh(rng.normal(0.15, 0.8, shape)), _tanh_normal_mean(0.15, 0.8),
                    correlation_interval),
    # maps that survive randomization: piled up near 1, the bound a plain interval crosses
    "correlation_high": (lambda rng, shape: np.tanh(rng.normal(1.8, 0.7, shape)), _tanh_normal_mean(1.8, 0.7),
                         correlation_interval),
}


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = common.Parser(__doc__)
    parser.add_argument("--datasets", type=common.count(1), default=1000, help="simulated data sets per size")
    parser.add_argument("--sizes", type=common.ints(minimum=2), default=[MIN_IMAGES, 16, 24, 32, 48, 64, 128, 256],
                        help="images per data set (comma-separated): every size a verdict is given on")
    parser.add_argument("--pair_datasets", type=common.count(1), default=300,
                        help="simulated comparisons of three equal methods per size (0 is not allowed)")
    parser.add_argument("--distributions", type=common.choices(DISTRIBUTIONS), default=list(DISTRIBUTIONS),
                        help="which distributions' coverage to simulate (comma-separated; the file keeps the others)")
    parser.add_argument("--separation", type=common.boolean, default=True,
                        help="also simulate the false separation of three equal methods (False: the file keeps it)")
    parser.add_argument("--seed", type=common.count(0), default=0)
    parser.add_json(REPO / "bench" / "results" / "trust_coverage.json", help="where the results go")
    return parser.parse(argv)


def coverage(draw, mean: float, size: int, datasets: int, rng: np.random.Generator,
             interval=bootstrap_interval) -> tuple[float, bool]:
    """Share of ``datasets`` data sets whose ``interval`` holds ``mean``, and whether every interval stayed inside
    the values' possible range ([−1, 1] for correlations); each data set is bootstrapped on its own (resampling
    several at once would share their resample draws and correlate their errors)."""
    hits, inside = 0, True
    for _ in range(datasets):
        low, high = interval(draw(rng, size), seed=int(rng.integers(2**31)))
        hits += int(low <= mean <= high)
        inside &= interval is not correlation_interval or -1 <= low <= high <= 1
    return hits / datasets, bool(inside)


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
    result = {"method": "studentized bootstrap (bootstrap-t), explain.trust.bootstrap_interval; correlation*: the "
                        "same on Fisher's z scale of the mean, explain.trust.correlation_interval",
              "confidence": CONFIDENCE, "datasets": args.datasets, "pair_datasets": args.pair_datasets,
              "min_images": MIN_IMAGES, "coverage": {}, "correlation_inside": {}, "false_separation": {},
              **common.stamp("bench/trust_coverage.py", argv)}
    for name in args.distributions:
        draw, mean, interval = DISTRIBUTIONS[name]
        result["coverage"][name] = {}
        for size in args.sizes:
            share, inside = coverage(draw, mean, size, args.datasets, rng, interval)
            result["coverage"][name][str(size)] = share
            if interval is correlation_interval:
                result["correlation_inside"][f"{name}/{size}"] = inside
            print(f"{name:16s} {size:4d} images: coverage {share:.3f}", flush=True)
    for size in args.sizes if args.separation else []:
        result["false_separation"][str(size)] = share = false_separation(size, args.pair_datasets, rng)
        print(f"three equal methods, {size:4d} images: some pair separated in {share:.3f} of data sets", flush=True)
    result["seconds"] = round(time.perf_counter() - start, 1)
    status = results.finish({**result, **common.machine()}, measured=bool(args.sizes))
    print(json.dumps({"coverage_min": min((min(v.values()) for v in result["coverage"].values() if v), default=None),
                      "false_separation_max": max(result["false_separation"].values(), default=None)}))
    return status


if __name__ == "__main__":
    common.entry(main)
