"""The headline figures in one command: default-recipe accuracy over seeds, throughput, CAM and W&B costs.

Made for a GPU lent for a few minutes: each step runs the benchmark that owns it (``time_to_acc.py``,
``speed.py``, ``cam_speed.py``, ``wandb_overhead.py``) in its own process, under what is left of ``--budget_s``,
and appends its results to ``--json`` (default ``bench/out/headline.json``) as soon as it ends, so a run cut short
still keeps every finished step. Steps, in order:

1. ``default`` — the default recipe (``train/run.py`` with no flags but ``--data_dir``; minus W&B, checkpoints and
   explain) trained to the end for each seed: final ``val/acc`` (flip TTA) and ``val/acc_no_tta``, the training
   seconds and epoch at which ``val/acc`` first reached ``--target`` (evaluation excluded), training images/s;
   mean ± spread over the seeds.
2. ``speed`` — training throughput side by side in one process: ours (eager and ``torch.compile``) vs a standard
   torchvision ``DataLoader`` + fp32 pipeline, with MFU against the chip's bf16 dense peak.
3. ``cam`` — Grad-CAM batched vs one image at a time (needs torchcam; skipped without it).
4. ``wandb`` — W&B offline vs disabled, wall and epoch time (needs wandb; skipped without it).

Prints one Markdown table at the end (for BENCHMARKS.md). Everything after ``--`` goes to every training step
(e.g. a small subset to try it on a CPU)::

    python bench/headline.py --data_dir .bench-data/cifar10-jpeg                         # a GPU, ~6 minutes
    python bench/headline.py --data_dir DIR --seeds 0 --speed_images 200 --budget_s 300 -- \\
        --train_subset 200 --test_subset 100 --epochs 1 --batch_size 50 --device cpu   # a smoke test
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if __package__ in (None, ""):  # `python bench/headline.py`: import the repo's packages
    sys.path[0] = str(REPO)

from train.config import ConfigError, parse_flags, train_parser  # noqa: E402  (after the path set-up)
from train.files import write_json  # noqa: E402

STEPS = ("default", "speed", "cam", "wandb")
MIN_STEP_SECONDS = 20  # a step is not started with less than this left of the budget


def spread(values: list[float]) -> dict | None:
    if not values:
        return None
    return {"mean": statistics.fmean(values), "std": statistics.stdev(values) if len(values) > 1 else 0.0,
            "min": min(values), "max": max(values), "n": len(values)}


class Headline:
    """The results file, rewritten (atomically) after every step, and the time budget the steps share."""

    def __init__(self, path: Path, budget_s: float, command: str):
        self.path, self.deadline = path, time.monotonic() + budget_s
        self.result: dict = {"command": command, "date": time.strftime("%Y-%m-%d"), "steps": {}, "skipped": {}}
        self.save()

    def left(self) -> float:
        return self.deadline - time.monotonic()

    def save(self) -> None:
        write_json(self.path, self.result)

    def run(self, name: str, argv: list[str], json_path: Path) -> dict | None:
        """Run one benchmark under the time left; its JSON, or None (and why, in ``skipped``) when it did not end."""
        if self.left() < MIN_STEP_SECONDS:
            return self.skip(name, f"out of time ({self.left():.0f}s of the budget left)")
        json_path.unlink(missing_ok=True)
        print(f"[headline] {name}: {' '.join(argv)}", flush=True)
        start = time.monotonic()
        try:
            done = subprocess.run([sys.executable, *argv], cwd=REPO, timeout=self.left(), stdout=sys.stdout,
                                  stderr=subprocess.PIPE, text=True)
        except subprocess.TimeoutExpired:
            return self.skip(name, f"stopped at the end of the budget after {time.monotonic() - start:.0f}s")
        sys.stderr.write(done.stderr[-4000:])
        if done.returncode != 0 or not json_path.is_file():
            last = (done.stderr.strip().splitlines() or ["no output"])[-1]
            return self.skip(name, f"exit {done.returncode}: {last}")
        return json.loads(json_path.read_text())

    def skip(self, name: str, why: str) -> None:
        print(f"[headline] {name} skipped: {why}", flush=True)
        self.result["skipped"][name] = why
        self.save()
        return None

    def record(self, name: str, value: dict) -> None:
        self.result["steps"][name] = value
        self.save()

    def measure(self, name: str, argv: list[str], json_path: Path, *, needs: str | None = None) -> None:
        """:meth:`run` one benchmark whose JSON is the step's result, and :meth:`record` it; skipped (saying why)
        when the module it ``needs`` does not import here."""
        if needs and not importable(needs):
            self.skip(name, f"{needs} is not installed")
        elif (data := self.run(name, argv, json_path)) is not None:
            self.record(name, data)


def importable(name: str) -> bool:
    """Whether ``import name`` works here (the GPU image lacks wandb and torchcam unless they are carried)."""
    try:
        importlib.import_module(name)
    except ImportError:
        return False
    return True


def step_default(head: Headline, args, recipe: list[str]) -> None:
    runs = []
    for seed in args.seeds:
        out = args.work / f"default-seed{seed}.json"
        data = head.run(f"default seed {seed}", ["bench/time_to_acc.py", "--data_dir", args.data_dir, "--full",
                                                 f"--target={args.target}", f"--seeds={seed}", f"--json={out}",
                                                 *recipe], out)
        if data is None:
            break
        runs.extend(data["runs"])
        hits = [run for run in runs if run["reached_epoch"]]
        head.result.update(device=data["device"], torch=data["torch"])
        head.record("default", {
            "device": data["device"], "torch": data["torch"], "config": data["config"], "target": args.target,
            "train_images": data["train_images"], "test_images": data["test_images"],
            "seeds": [run["seed"] for run in runs], "reached": f"{len(hits)}/{len(runs)}",
            "val_acc": spread([run["final_acc"] for run in runs]),
            "val_acc_no_tta": spread([run["final_acc_no_tta"] for run in runs]),
            "seconds_to_target": spread([run["seconds_to_target"] for run in hits]),
            "epoch_to_target": spread([run["reached_epoch"] for run in hits]),
            "train_seconds": spread([run["train_seconds"] for run in runs]),
            "images_per_second": spread([run["images_per_second"] for run in runs]),
            "runs": runs,
        })


def step_speed(head: Headline, args, recipe: list[str]) -> None:
    out = args.work / "speed.json"
    device = args.flags.get("device", "auto")
    head.measure("speed", ["bench/speed.py", "--data_dir", args.data_dir, f"--images={args.speed_images}",
                           f"--epochs={args.speed_epochs}", f"--workers={args.workers}", f"--device={device}",
                           f"--batch_size={args.flags.get('batch_size', 512)}",
                           *(["--compile"] if args.compile else []), f"--json={out}"], out)


def step_cam(head: Headline, args, recipe: list[str]) -> None:
    out = args.work / "cam_speed.json"
    head.measure("cam", ["bench/cam_speed.py", f"--device={args.flags.get('device', 'auto')}",
                         f"--images={args.cam_images}", f"--loop_images={min(100, args.cam_images)}", "--repeats=2",
                         f"--out={out}"], out, needs="torchcam")


def step_wandb(head: Headline, args, recipe: list[str]) -> None:
    out = args.work / "wandb_overhead.json"
    run = ["--data_dir", args.data_dir, "--train_subset=10000", "--test_subset=2000", "--epochs=2",
           "--explain_samples=0", *recipe]
    head.measure("wandb", ["bench/wandb_overhead.py", "--repeats=2", f"--json={out}", "--", *run], out,
                 needs="wandb")


def fmt(stat: dict | None, scale: float = 1.0, digits: int = 2, unit: str = "") -> str:
    if not stat:
        return "—"
    mean, std = stat["mean"] * scale, stat["std"] * scale
    return (f"{mean:.{digits}f}{unit} ± {std:.{digits}f} (min {stat['min'] * scale:.{digits}f}, "
            f"max {stat['max'] * scale:.{digits}f}; n={stat['n']})")


def markdown(result: dict) -> str:
    """The results as one Markdown table."""
    steps, rows = result["steps"], []
    if "default" in steps:
        d = steps["default"]
        seeds = ", ".join(map(str, d["seeds"]))
        rows += [
            (f"default recipe, final `val/acc` (flip TTA), seeds {seeds}", fmt(d["val_acc"], 100, 2, " %")),
            ("default recipe, final `val/acc_no_tta`", fmt(d["val_acc_no_tta"], 100, 2, " %")),
            (f"seeds reaching {d['target']:.0%}", d["reached"]),
            (f"training seconds to {d['target']:.0%} (evaluation excluded)", fmt(d["seconds_to_target"], 1, 1, " s")),
            (f"epoch reaching {d['target']:.0%}", fmt(d["epoch_to_target"], 1, 1)),
            (f"training seconds, all {d['config']['epochs']} epochs", fmt(d["train_seconds"], 1, 1, " s")),
            ("training images/s (default recipe)", fmt(d["images_per_second"], 1, 0)),
        ]
    if "speed" in steps:
        s = steps["speed"]
        mfu = f", MFU {s['mfu']:.1%}" if s.get("mfu") is not None else ""
        rows.append(("throughput, ours eager (bf16, channels-last, device-resident data)",
                     f"{s['ours']['images_per_second']:.0f} img/s{mfu}"))
        if s.get("ours_compiled"):
            mfu = f", MFU {s['mfu_compiled']:.1%}" if s.get("mfu_compiled") is not None else ""
            rows.append(("throughput, ours `--compile`", f"{s['ours_compiled']['images_per_second']:.0f} img/s{mfu}"))
        rows.append((f"throughput, torchvision DataLoader ×{s['baseline'].get('workers')} workers, fp32",
                     f"{s['baseline']['images_per_second']:.0f} img/s (ours {s['ratio']:.2f}× faster)"))
    if "cam" in steps:
        c = steps["cam"]
        best = max(c["batched"].values(), key=lambda b: b["images_per_second"])
        rows.append((f"Grad-CAM, pred + true class of {c['images']} images",
                     f"batched {best['seconds']:.2f} s vs per-image {c['loop_seconds_for_all']:.2f} s "
                     f"({best['speedup_vs_loop']:.1f}×)"))
    if "wandb" in steps:
        w = steps["wandb"]
        rows.append((f"W&B offline vs disabled (`train/run.py {' '.join(w['run_args'][2:])}`)",
                     f"wall {w['overhead']['wall_seconds']:+.1%}, epochs {w['overhead']['loop_seconds']:+.1%}"))
    for name, why in result["skipped"].items():
        rows.append((f"{name}", f"not measured: {why}"))
    lines = ["| measure | value |", "| --- | --- |", *(f"| {a} | {b} |" for a, b in rows)]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    own, recipe = (argv[:argv.index("--")], argv[argv.index("--") + 1:]) if "--" in argv else (argv, [])
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data_dir", required=True, help="the JPEG CIFAR-10 folder (train/ and test/)")
    parser.add_argument("--seeds", default="0,1,2", help="comma-separated seeds of the default recipe")
    parser.add_argument("--target", type=float, default=0.94, help="the val/acc whose time is measured")
    parser.add_argument("--steps", default=",".join(STEPS), help=f"which of {', '.join(STEPS)} to run, in order")
    parser.add_argument("--budget_s", type=float, default=420, help="seconds for all steps; later ones are skipped")
    parser.add_argument("--speed_images", type=int, default=50000, help="training images per epoch of `speed`")
    parser.add_argument("--speed_epochs", type=int, default=2, help="timed epochs of `speed` (after a warm-up)")
    parser.add_argument("--workers", type=int, default=min(16, os.cpu_count() or 1),
                        help="DataLoader workers of the baseline")
    parser.add_argument("--no_compile", dest="compile", action="store_false", help="skip the torch.compile timing")
    parser.add_argument("--cam_images", type=int, default=1000, help="images of the `cam` step")
    parser.add_argument("--json", default=str(REPO / "bench" / "out" / "headline.json"))
    parser.add_argument("--steps_dir", help="where each step writes its own JSON (default: beside --json)")
    args = parser.parse_args(own)
    try:
        args.seeds = [int(seed) for seed in args.seeds.split(",")]
    except ValueError:
        parser.exit(2, f"error: --seeds {args.seeds!r} is not a comma-separated list of integers\n")
    steps = [step for step in args.steps.split(",") if step]
    if unknown := [step for step in steps if step not in STEPS]:
        parser.exit(2, f"error: --steps: unknown step(s) {', '.join(unknown)} (choose from {', '.join(STEPS)})\n")
    if not (Path(args.data_dir) / "train").is_dir():
        parser.exit(2, f"error: --data_dir {args.data_dir!r} has no train/ folder\n")
    try:  # the training flags, read by train/run.py's own parser: the steps look up --device and --batch_size
        args.flags = parse_flags(train_parser(), recipe)
    except ConfigError as exc:
        parser.exit(2, f"error: {exc}\n")
    json_path = Path(args.json).resolve()
    args.work = Path(args.steps_dir).resolve() if args.steps_dir else json_path.with_name(f"{json_path.stem}-steps")
    args.work.mkdir(parents=True, exist_ok=True)  # each step's own JSON; all of it lands in --json too
    head = Headline(Path(args.json), args.budget_s, " ".join(["python", "bench/headline.py", *argv]))
    runners = {"default": step_default, "speed": step_speed, "cam": step_cam, "wandb": step_wandb}
    for step in steps:
        runners[step](head, args, recipe)
    table = markdown(head.result)
    head.result["markdown"] = table
    head.save()
    print(table)
    print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
