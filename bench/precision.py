"""Does bf16 on the CPU cost accuracy? The same short real-data run in fp32 and in bf16 autocast, same seeds.

Runs ``train/run.py`` as a user would, once per seed and precision (``--precision fp32`` and ``--precision bf16``,
both channels-last on the CPU, fresh out_dir, W&B disabled, no explain step), on a class-balanced subset of the JPEG
CIFAR-10 copy, and reports each run's test accuracy (single pass and flip TTA), the per-seed paired difference
bf16 − fp32, and its 95 % t interval over the seeds (the seeds are few: a t interval, not a bootstrap of 3 values).
Same seed = same initialization, subset, shuffling and augmentation, so the pair differs only in the arithmetic.

    python bench/precision.py --data_dir cifar10-jpeg                 # 3 seeds, 1,000 images, 4 epochs (~6 min)
    python bench/precision.py --seeds 0,1,2 -- --train_subset 2000 --epochs 5

Writes ``bench/results/precision.json`` (``runs``, ``difference`` {acc, acc_no_tta: mean, ci}, ``command``).
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if __package__ in (None, ""):  # `python bench/precision.py`: import the repo's packages
    sys.path[0] = str(REPO)

from bench import common  # noqa: E402  (after the path set-up)

DEFAULT_RUN = ["--train_subset=1000", "--test_subset=1000", "--epochs=4", "--batch_size=100"]
FIXED = ["--wandb_mode=disabled", "--explain_samples=0", "--probe_images=0", "--device=cpu"]


def one_run(data_dir: Path, precision: str, seed: int, run_args: list[str], work: Path) -> dict:
    out_dir = work / f"{precision}-{seed}"
    start = time.perf_counter()
    done = subprocess.run([sys.executable, str(REPO / "train" / "run.py"), f"--data_dir={data_dir}", *run_args,
                           *FIXED, f"--precision={precision}", f"--seed={seed}", f"--out_dir={out_dir}"],
                          capture_output=True, text=True, cwd=REPO, env=os.environ.copy())
    if done.returncode != 0:
        common.fail(f"train/run.py --precision {precision} --seed {seed} failed (exit {done.returncode}): "
                    f"{(done.stderr.strip().splitlines() or ['no output'])[-1]}")
    summary = json.loads((out_dir / "summary.json").read_text())
    return {"precision": precision, "seed": seed, "acc": summary["test_acc"], "acc_no_tta": summary["test_acc_no_tta"],
            "train_seconds": summary["train_seconds"], "wall_seconds": round(time.perf_counter() - start, 1)}


def main(argv: list[str] | None = None) -> int:
    parser = common.Parser(__doc__)
    parser.add_argument("--data_dir", type=common.folder("train", "test"), default=str(REPO / "cifar10-jpeg"),
                        help="image-folder root with train/ and test/ (the JPEG CIFAR-10 copy)")
    parser.add_argument("--seeds", type=common.ints(0), default="0,1,2", help="comma-separated seeds")
    parser.add_json(REPO / "bench" / "results" / "precision.json")
    args = parser.parse(argv, rest="--")
    run_args = args.rest or DEFAULT_RUN
    common.recipe_config(run_args)  # train/run.py's own parser checks them before the first run
    if len(args.seeds) < 2:
        common.fail(f"--seeds needs at least 2 seeds for an interval, got {args.seeds}")
    results = common.Results(args.json, common.machine("cpu"))
    runs = []
    with tempfile.TemporaryDirectory(prefix="precision-") as tmp:
        for seed in args.seeds:
            for precision in ("fp32", "bf16") if seed % 2 == 0 else ("bf16", "fp32"):  # interleaved
                run = one_run(args.data_dir, precision, seed, run_args, Path(tmp))
                runs.append(run)
                print(f"  seed {seed} {precision}: acc {run['acc']:.4f} (single pass {run['acc_no_tta']:.4f}), "
                      f"{run['train_seconds']:.0f}s", flush=True)
    difference = {}
    for key in ("acc", "acc_no_tta"):
        paired = [next(r[key] for r in runs if r["seed"] == s and r["precision"] == "bf16")
                  - next(r[key] for r in runs if r["seed"] == s and r["precision"] == "fp32") for s in args.seeds]
        difference[key] = {"mean": statistics.fmean(paired), "ci": common.t_interval(paired), "per_seed": paired}
    speed = {p: statistics.median(r["train_seconds"] for r in runs if r["precision"] == p) for p in ("fp32", "bf16")}
    result = {"run_args": run_args + FIXED, "seeds": args.seeds, "runs": runs, "difference": difference,
              "train_seconds_median": speed, "speedup": speed["fp32"] / speed["bf16"],
              **common.machine("cpu"), **common.stamp("bench/precision.py", argv)}
    low, high = difference["acc"]["ci"]
    print(f"bf16 - fp32 test accuracy over {len(args.seeds)} seeds: {difference['acc']['mean']:+.4f} "
          f"[{low:+.4f}, {high:+.4f}] (95% t interval); bf16 trained {result['speedup']:.2f}x as fast")
    return results.finish(result, measured=bool(runs))


if __name__ == "__main__":
    common.entry(main)
