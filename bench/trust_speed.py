"""Benchmark: the trust figures' time as a multiple of the explain step's CAM time, same images, same process.

    python bench/trust_speed.py                       # a trained-for-nothing model: the cost does not depend on it
    python bench/trust_speed.py --checkpoint runs/NAME/best.pt

What ``explain`` does at the end of a run, timed in parts on the same real CIFAR-10 test images
(``bench/cam_speed.py``'s images): the CAMs of the ``--samples`` most confident mistakes for the predicted and the
true class (:func:`explain.report.cams_for_pred_and_true`: the explain step's CAM time), then the trust figures of the
first ``--trust_images`` of them (:func:`explain.trust.deletion_insertion` with ``--steps`` steps and the randomization
test; the defaults are :func:`explain.report.measure_trust`'s). ``--repeats`` interleaved runs; the fastest of each part
counts. Writes ``bench/out/trust_speed.json``.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

if __package__ in (None, ""):  # `python bench/trust_speed.py`: import the repo's packages
    sys.path[0] = str(Path(__file__).resolve().parents[1])

import timm
import torch

import train  # noqa: F401  (registers resnet18_cifar)
from bench.cam_speed import test_images
from explain.report import TRUST_IMAGES, TRUST_STEPS, cams_for_pred_and_true, find_mistakes
from explain.trust import deletion_insertion, randomization_test
from train.checkpoint import load_checkpoint

REPO = Path(__file__).resolve().parents[1]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--checkpoint", help="a best.pt to explain (default: a randomly initialised resnet18_cifar)")
    parser.add_argument("--images", type=int, default=1000, help="test images predicted")
    parser.add_argument("--samples", type=int, default=64, help="mistakes explained (train/run.py's default)")
    parser.add_argument("--trust_images", type=int, default=TRUST_IMAGES, help="mistakes the trust figures use")
    parser.add_argument("--steps", type=int, default=TRUST_STEPS, help="deletion/insertion steps")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--json", default=str(REPO / "bench" / "out" / "trust_speed.json"))
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    model = timm.create_model("resnet18_cifar", num_classes=10)
    if args.checkpoint:
        model.load_state_dict(load_checkpoint(args.checkpoint)["model"])
    model.eval()
    images, labels, source = test_images(args.images)
    with torch.inference_mode():
        probs = torch.cat([model(chunk.float() / 255).softmax(1) for chunk in images.split(256)])
    chosen = find_mistakes(probs, labels, args.samples)
    preds = probs.argmax(1)[chosen]
    mistakes, k = images[chosen], min(args.trust_images, len(chosen))
    times: dict[str, list[float]] = {"cams": [], "deletion_insertion": [], "randomization": []}
    for _ in range(args.repeats):
        start = time.perf_counter()
        cams_pred, _ = cams_for_pred_and_true(model, mistakes, preds, labels[chosen])
        times["cams"].append(time.perf_counter() - start)
        start = time.perf_counter()
        deletion_insertion(model, mistakes[:k], preds[:k], cams_pred[:k], steps=args.steps)
        times["deletion_insertion"].append(time.perf_counter() - start)
        start = time.perf_counter()
        randomization_test(model, mistakes[:k], preds[:k], "gradcam", "layer4")
        times["randomization"].append(time.perf_counter() - start)
    best = {part: min(values) for part, values in times.items()}
    trust = best["deletion_insertion"] + best["randomization"]
    result = {
        "device": "cpu", "threads": torch.get_num_threads(), "torch": torch.__version__, "cpu": platform.processor(),
        "images": source, "mistakes_explained": len(chosen), "trust_images": k, "steps": args.steps,
        "seconds": best,
        "trust_over_cams": trust / best["cams"], "date": time.strftime("%Y-%m-%d"),
        "command": " ".join(["python", "bench/trust_speed.py", *(sys.argv[1:] if argv is None else argv)]),
    }
    print(f"explain step CAMs ({len(chosen)} mistakes x 2 classes): {best['cams']:.2f} s\n"
          f"trust figures on {k} of them: deletion/insertion {best['deletion_insertion']:.2f} s + randomization "
          f"{best['randomization']:.2f} s = {trust:.2f} s\n"
          f"trust / CAMs = {result['trust_over_cams']:.2f}x  (best of {args.repeats}, {source})")
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
