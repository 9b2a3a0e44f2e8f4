"""Benchmark: what finding label issues adds to the explain step, as a fraction of the step, side by side.

    python bench/label_issue_cost.py                        # 1,000 test images, 64 explained, flip TTA on
    python bench/label_issue_cost.py --test_subset 2000 --tta False --checkpoint runs/NAME/best.pt

:func:`explain.report.explain_model` is run on the same images with ``label_issues`` off and on, alternately,
``--repeats`` times each, tracked in an offline W&B run (the tables are part of the cost), trust figures on as by
default; the fastest of each counts. Besides the whole step, the parts are timed alone: the flip pass that TTA
probabilities need (a second forward of every image), and cleanlab itself. Writes
``bench/out/label_issue_cost.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

if __package__ in (None, ""):  # `python bench/label_issue_cost.py`: import the repo's packages
    sys.path[0] = str(Path(__file__).resolve().parents[1])

import timm
import torch

import train  # noqa: F401  (registers resnet18_cifar)
from explain.labels import find_label_issues, probabilities
from explain.report import explain_model
from train.checkpoint import load_checkpoint, load_model_state
from train.config import coerce
from train.data import balanced_subset, load_data
from train.engine import predict, resolve_device
from train.loader import DeviceLoader
from train.tracking import Tracker

REPO = Path(__file__).resolve().parents[1]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data_dir", default=str(REPO / ".bench-data" / "cifar10-jpeg"))
    parser.add_argument("--checkpoint", default="", help="a best.pt; default: a seeded untrained resnet18_cifar")
    parser.add_argument("--test_subset", type=int, default=1000)
    parser.add_argument("--explain_samples", type=int, default=64)
    parser.add_argument("--tta", default="True")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--json", default=str(REPO / "bench" / "out" / "label_issue_cost.json"))
    args = parser.parse_args(argv)
    tta = coerce("tta", args.tta)
    device = resolve_device(args.device)
    _, test = load_data(args.data_dir, download=False)
    indices = balanced_subset(test.labels, args.test_subset, 0)
    images = test.subset(indices)
    torch.manual_seed(0)
    model = timm.create_model("resnet18_cifar", num_classes=len(test.classes))
    if args.checkpoint:
        load_model_state(model, load_checkpoint(args.checkpoint), args.checkpoint)
    model.to(device).eval()
    os.environ.setdefault("WANDB_DIR", tempfile.mkdtemp(prefix="label-issue-cost-"))
    os.environ.setdefault("WANDB_SILENT", "true")

    def step(label_issues: bool) -> float:
        tracker = Tracker({}, mode="offline", project="bench", job_type="explain")
        with tempfile.TemporaryDirectory() as out_dir:
            start = time.perf_counter()
            explain_model(model, images, out_dir=out_dir, tracker=tracker, samples=args.explain_samples,
                          device=device, indices=indices, label_issues=label_issues, tta=tta)
            seconds = time.perf_counter() - start
        tracker.finish()
        return seconds

    step(True)  # warm-up
    off, on = [], []
    for _ in range(args.repeats):
        off.append(step(False))
        on.append(step(True))
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
    result = {
        "device": str(device), "images": len(images), "explain_samples": args.explain_samples, "tta": tta,
        "checkpoint": args.checkpoint or None, "label_issues_found": len(issues.ranked),
        "explain_seconds_off": min(off), "explain_seconds_on": min(on),
        "cost_fraction": (min(on) - min(off)) / min(off),
        "flip_pass_seconds": max(both - single, 0.0), "flip_pass_fraction": max(both - single, 0.0) / min(off),
        "cleanlab_seconds": cleanlab_seconds, "cleanlab_fraction": cleanlab_seconds / min(off),
        "runs_off": off, "runs_on": on, "torch_threads": torch.get_num_threads(),
    }
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    print(f"explain step {result['explain_seconds_off']:.2f}s without label issues, "
          f"{result['explain_seconds_on']:.2f}s with ({100 * result['cost_fraction']:+.1f}%; "
          f"flip pass {100 * result['flip_pass_fraction']:.1f}%, "
          f"cleanlab {100 * result['cleanlab_fraction']:.2f}%) on {len(images):,} images, {device}; wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
