"""Benchmark: what finding label issues adds to the explain step, as a fraction of the step, side by side.

    python bench/label_issue_cost.py                        # 1,000 test images, 64 explained, flip TTA on
    python bench/label_issue_cost.py --test_subset 10000 --repeats 1 --checkpoint runs/NAME/best.pt

:func:`explain.report.explain_model` runs on the same images with ``label_issues`` off and on, alternately,
``--repeats`` pairs (after one warm-up), each tracked in an offline W&B run (the tables are part of the cost), trust
figures on as by default. Two figures per pair:

* **timed inside the step** (the verdict): the seconds spent in the label-issue code itself — cleanlab
  (:func:`explain.labels.find_label_issues`) and the outputs (:func:`explain.report_labels.report_label_issues`:
  JSON, ``label_issues.png``, the table's CAMs and images) — plus what the W&B ``log``/``summary`` calls took more
  than in the paired run without them (the table's images are written there), over the rest of the same step.
* **the whole steps' difference**, on − off, over off: the same thing measured from outside, but the step's 20 s of
  convolutions on a shared 2-core CPU vary by a second or more between runs, several times the feature's cost, so
  it is reported as a cross-check with its spread, not used for the verdict.

The verdict is ``within 5%`` only when every pair's inside-the-step fraction is below 5 %, ``over 5%`` when every
one is above, ``inconclusive`` otherwise. Also timed alone: the flip pass that TTA probabilities need (a second
forward of every image, part of the step either way) and cleanlab. Writes ``bench/out/label_issue_cost.json``.
"""

from __future__ import annotations

import functools
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # `python bench/label_issue_cost.py`: import the repo's packages
    sys.path[0] = str(Path(__file__).resolve().parents[1])

import timm
import torch

import explain.report
import train  # noqa: F401  (registers resnet18_cifar)
from bench import common
from explain.labels import find_label_issues, probabilities
from explain.report import ExplainSettings, explain_model
from train.checkpoint import CheckpointError, load_checkpoint, load_model_state
from train.data import DataError, balanced_subset, load_data
from train.engine import predict
from train.loader import DeviceLoader
from train.tracking import Tracker

REPO = Path(__file__).resolve().parents[1]
BOUND = 0.05  # the issue's bound: label issues cost at most 5 % of the explain step

# Seconds spent in the label-issue code and in W&B's log/summary calls during the current step.
SPENT = {"labels": 0.0, "wandb": 0.0}
TIMED = ((explain.report, "find_label_issues", "labels"), (explain.report, "report_label_issues", "labels"),
         (Tracker, "log", "wandb"), (Tracker, "summary", "wandb"))


@contextmanager
def timing() -> Iterator[None]:
    """Add the time spent in the :data:`TIMED` functions to :data:`SPENT` while inside: each is wrapped where
    explain_model looks it up at call time (it still does all it did), and restored on the way out."""
    def timed(fn: Callable[..., Any], part: str) -> Callable[..., Any]:
        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            start = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                SPENT[part] += time.perf_counter() - start

        return wrapper

    originals = [(owner, name, getattr(owner, name)) for owner, name, _ in TIMED]
    try:
        for (owner, name, part), (_, _, fn) in zip(TIMED, originals, strict=True):
            setattr(owner, name, timed(fn, part))
        yield
    finally:
        for owner, name, fn in originals:
            setattr(owner, name, fn)


def verdict(fractions: list[float], bound: float = BOUND) -> str:
    """``within 5%`` / ``over 5%`` only when every measured fraction agrees, else ``inconclusive``."""
    if all(f < bound for f in fractions):
        return f"within {100 * bound:.0f}%"
    if all(f > bound for f in fractions):
        return f"over {100 * bound:.0f}%"
    return "inconclusive"


def main(argv: list[str] | None = None) -> int:
    parser = common.Parser(__doc__)
    parser.add_argument("--data_dir", type=common.folder(), default=str(REPO / ".bench-data" / "cifar10-jpeg"),
                        help="CIFAR-10 class folders (test/<class>/*.jpg) or the torchvision batches")
    parser.add_argument("--checkpoint", type=common.file, help="a best.pt; default: a seeded untrained resnet18_cifar")
    parser.add_argument("--test_subset", type=common.count(0), default=1000,
                        help="test images, class-balanced (0: all)")
    parser.add_argument("--explain_samples", type=common.count(0), default=64)
    parser.add_argument("--trust_images", type=common.count(2), default=None,
                        help="the explain step's trust sample (default: sized to the device, as a run's)")
    parser.add_argument("--tta", type=common.boolean, default="True")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--repeats", type=common.count(1), default=3, help="pairs of steps (off, on) after the warm-up")
    parser.add_json(REPO / "bench" / "out" / "label_issue_cost.json")
    args = parser.parse(argv)
    tta, device = args.tta, common.device(args.device)
    results = common.Results(args.json, common.machine(device))
    try:
        _, test = load_data(args.data_dir, download=False)
        torch.manual_seed(0)
        model = timm.create_model("resnet18_cifar", num_classes=len(test.classes))
        if args.checkpoint:
            load_model_state(model, load_checkpoint(args.checkpoint), str(args.checkpoint))
    except (DataError, CheckpointError) as exc:
        common.fail(str(exc))
    indices = balanced_subset(test.labels, args.test_subset, 0) if args.test_subset else torch.arange(len(test))
    images = test.subset(indices)
    model.to(device).eval()
    os.environ.setdefault("WANDB_DIR", tempfile.mkdtemp(prefix="label-issue-cost-"))
    os.environ.setdefault("WANDB_SILENT", "true")

    def step(label_issues: bool) -> dict[str, float]:
        tracker = Tracker({}, mode="offline", project="bench", job_type="explain")
        SPENT.update(labels=0.0, wandb=0.0)
        with tempfile.TemporaryDirectory() as out_dir:
            start = time.perf_counter()
            settings = ExplainSettings(samples=args.explain_samples, trust_images=args.trust_images,
                                       label_issues=label_issues, tta=tta)
            result = explain_model(model, images, settings, out_dir=out_dir, tracker=tracker, device=device,
                                   indices=indices)
            seconds = time.perf_counter() - start
        tracker.finish()
        return {"seconds": seconds, **SPENT, "flagged": result.get("label_issues", 0)}

    pairs = []
    with timing():
        step(True)  # warm-up: first-call costs (fonts, kernels, W&B's service) belong to neither side
        for _ in range(args.repeats):
            off, on = step(False), step(True)
            inside = on["labels"] + (on["wandb"] - off["wandb"])  # the label code + the W&B calls' extra time
            pairs.append({"off": off, "on": on, "inside_seconds": inside,
                          "inside_fraction": inside / (on["seconds"] - inside),
                          "whole_fraction": (on["seconds"] - off["seconds"]) / off["seconds"]})
    loader = DeviceLoader(images, 1024, device, train=False)
    start = time.perf_counter()
    logits, _, labels = predict(model, loader)
    single = time.perf_counter() - start
    start = time.perf_counter()
    logits, flipped, labels = predict(model, loader, tta=True)
    both = time.perf_counter() - start
    start = time.perf_counter()
    issues = find_label_issues(probabilities(logits, flipped), labels)
    cleanlab_seconds = time.perf_counter() - start
    off_seconds = statistics.median(p["off"]["seconds"] for p in pairs)
    inside = [p["inside_fraction"] for p in pairs]
    spread = common.spread
    result = {
        **common.machine(device), "torch_threads": torch.get_num_threads(),
        "images": len(images), "explain_samples": args.explain_samples, "tta": tta,
        "checkpoint": str(args.checkpoint) if args.checkpoint else None, "label_issues_found": len(issues.ranked),
        "repeats": args.repeats,
        "bound": BOUND, "verdict": verdict(inside),
        "cost_fraction": spread(inside), "cost_seconds": spread([p["inside_seconds"] for p in pairs]),
        "whole_step_fraction": spread([p["whole_fraction"] for p in pairs]),
        "explain_seconds_off": spread([p["off"]["seconds"] for p in pairs]),
        "explain_seconds_on": spread([p["on"]["seconds"] for p in pairs]),
        "flip_pass_seconds": max(both - single, 0.0), "flip_pass_fraction": max(both - single, 0.0) / off_seconds,
        "cleanlab_seconds": cleanlab_seconds, "cleanlab_fraction": cleanlab_seconds / off_seconds,
        "pairs": pairs, **common.stamp("bench/label_issue_cost.py", argv),
    }
    status = results.finish(result, measured=bool(pairs))
    cost, whole = result["cost_fraction"], result["whole_step_fraction"]
    print(f"label issues cost {100 * cost['median']:.2f}% of the explain step (timed inside it; "
          f"{100 * cost['min']:.2f}-{100 * cost['max']:.2f}% over {len(pairs)} pairs): {result['verdict']}\n"
          f"whole steps on vs off: {100 * whole['median']:+.1f}% ({100 * whole['min']:+.1f} to "
          f"{100 * whole['max']:+.1f}%; off {off_seconds:.2f}s, the step's own noise)\n"
          f"flip pass {100 * result['flip_pass_fraction']:.1f}% of the step, cleanlab "
          f"{100 * result['cleanlab_fraction']:.2f}%; {len(issues.ranked):,} of {len(images):,} images flagged, "
          f"{device}")
    return status


if __name__ == "__main__":
    common.entry(main)
