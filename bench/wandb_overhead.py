"""W&B overhead: the same training run with ``--wandb_mode offline`` and ``--wandb_mode disabled``, interleaved.

Runs ``train/run.py`` as a user would (one process per run, fresh out_dir and W&B folder each time), alternating
the two modes ``--repeats`` times, and compares the medians of

* **wall** — the whole process, start to exit (W&B's service start, every log call and the final flush included);
* **loop** — ``summary.json``'s ``train_seconds``, the epochs alone (training + evaluation), where a logging cost
  that slows training down (the ``wandb-core`` process competing for cores) would show.

Everything after ``--`` goes to ``train/run.py`` (default: 2 epochs of 1,000 images; explain off, as it only runs
once at the end). Writes JSON.

    python bench/wandb_overhead.py --repeats 3 -- --data_dir .bench-data/cifar10-jpeg --train_subset 1000 \\
        --test_subset 500 --epochs 2 --batch_size 100
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
if __package__ in (None, ""):  # `python bench/wandb_overhead.py`: import the repo's packages
    sys.path[0] = str(REPO)

from bench import common  # noqa: E402  (after the path set-up)

DEFAULT_RUN = ["--train_subset=1000", "--test_subset=500", "--epochs=2", "--batch_size=100", "--explain_samples=0"]


def one_run(mode: str, run_args: list[str], work: Path, index: int) -> dict:
    """Train once in ``mode``; the wall and loop seconds and where W&B wrote."""
    out_dir = work / f"{mode}-{index}"
    env = os.environ | {name: str(work / "wandb-home") for name in
                        ("WANDB_DIR", "WANDB_DATA_DIR", "WANDB_CACHE_DIR", "WANDB_CONFIG_DIR")}
    env.pop("WANDB_MODE", None)
    start = time.perf_counter()
    done = subprocess.run([sys.executable, str(REPO / "train" / "run.py"), *run_args, f"--wandb_mode={mode}",
                           f"--out_dir={out_dir}"], capture_output=True, text=True, env=env, cwd=REPO)
    wall = time.perf_counter() - start
    if done.returncode != 0:  # its own one-line error (exit 2 for bad flags), or the last line of a crash
        print(f"error: train/run.py failed in {mode} mode (exit {done.returncode}): "
              f"{(done.stderr.strip().splitlines() or ['no output'])[-1]}", file=sys.stderr)
        sys.exit(2 if done.returncode == 2 else 1)
    summary = json.loads((out_dir / "summary.json").read_text())
    return {"mode": mode, "wall_seconds": wall, "loop_seconds": summary["train_seconds"],
            "wandb_run_dir": summary["wandb_run_dir"]}


def main(argv: list[str] | None = None) -> int:
    parser = common.Parser(__doc__)
    parser.add_argument("--repeats", type=common.count(1), default=3, help="runs per mode, interleaved")
    parser.add_json(REPO / "bench" / "out" / "wandb_overhead.json")
    args = parser.parse(argv, rest="--")
    run_args = args.rest or DEFAULT_RUN
    common.recipe_config(run_args)  # train/run.py's flags, checked by its own parser before the first run
    results = common.Results(args.json, common.machine())
    runs = []
    with tempfile.TemporaryDirectory(prefix="wandb-overhead-") as tmp:
        for index in range(args.repeats):
            for mode in ("offline", "disabled") if index % 2 == 0 else ("disabled", "offline"):
                run = one_run(mode, run_args, Path(tmp), index)
                runs.append(run)
                print(f"  {mode:8s} run {index + 1}: wall {run['wall_seconds']:.2f}s, loop {run['loop_seconds']:.2f}s",
                      flush=True)
    median = {mode: {key: statistics.median(r[key] for r in runs if r["mode"] == mode)
                     for key in ("wall_seconds", "loop_seconds")} for mode in ("offline", "disabled")}
    overhead = {key: median["offline"][key] / median["disabled"][key] - 1 for key in ("wall_seconds", "loop_seconds")}
    result = {"run_args": run_args, "repeats": args.repeats, "runs": runs, "median": median,
              "overhead": overhead, **common.machine(), **common.stamp("bench/wandb_overhead.py", argv)}
    print(f"offline W&B vs disabled (medians of {args.repeats}): wall {median['offline']['wall_seconds']:.2f}s vs "
          f"{median['disabled']['wall_seconds']:.2f}s ({overhead['wall_seconds']:+.1%}), epochs "
          f"{median['offline']['loop_seconds']:.2f}s vs {median['disabled']['loop_seconds']:.2f}s "
          f"({overhead['loop_seconds']:+.1%})")
    return results.finish(result, measured=bool(runs))


if __name__ == "__main__":
    common.entry(main)
